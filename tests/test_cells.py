"""The cell runner: one cell by name, in this process or its own, gives the notebook's record."""

from __future__ import annotations

import json

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import ablations, cells, salf_cost_benefit, salf_main
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import get_profile
from semalign_core.records import without_volatile
from semalign_core.transfer.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

CELL = "sft__mmlu__seed0"
# experiment: (its notebook's grid function, run at the notebook's defaults; a cheap cell of it)
GRIDS = {
    "semalign_ablations": (ablations.run_ablations, "objective-v2__sst2__seed0"),
    "salf_cost_benefit": (salf_cost_benefit.run_cost_benefit, "tiny-source__sst2__eof_5__seed0"),
}


def _compared(record: dict) -> dict:
    """What two runs of one config must share; the code's diff hash is left out because other
    work may edit the tree between the two runs."""
    record = without_volatile(record)
    record["provenance"].pop("code")
    return record


@pytest.mark.e2e
@pytest.mark.slow  # notebook grids and fresh processes: make test-scale
def test_own_process_gives_the_in_process_record_and_its_peak_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "in_process"))
    shared = cells.run_cell("semalign_transfer", CELL, "smoke")
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "own_process"))
    own = cells.run_cell("semalign_transfer", CELL, "smoke", own_process=True)

    assert (tmp_path / "own_process" / "semalign_transfer" / "smoke" / f"{CELL}.json").is_file()
    assert _compared(own) == _compared(shared)
    assert not any(key.startswith("process_") for key in shared["cost"])
    assert own["cost"]["process_peak_scope"] == "own process"
    # the whole process's peak holds the training block's peak measured inside it
    assert own["cost"]["process_peak_rss_mb"] >= own["cost"]["transfer"]["peak_rss_mb"] > 0


def test_list_names_the_runs_the_notebooks_write():
    committed = REPO_ROOT / "results" / "salf_main" / "smoke"  # written by notebook 06 at smoke
    assert set(cells.cell_names("salf_main", "smoke")) == {p.stem for p in committed.glob("*.json")}
    tasks = ("gsm", "mmlu", "humaneval", "mbpp")
    # one fixed evaluation subset: the untrained rows are evaluated once, without a seed
    expected = {f"{row}__{task}" for row in ("source", "target") for task in tasks}
    expected |= {f"{method}__{task}__seed0" for method in METHODS for task in tasks}
    assert set(cells.cell_names("semalign_transfer", "smoke")) == expected
    assert cells.cell_names("semalign_transfer", "smoke", seeds=[3])[0] == "source__gsm"
    assert "sft__gsm__seed3" in cells.cell_names("semalign_transfer", "smoke", seeds=[3])


def test_list_names_the_ablations_of_every_informative_task(capsys):
    names = cells.cell_names("semalign_ablations", "cpu")
    for task in ("sst2", "trec"):  # budgets.INFORMATIVE_TASKS["cpu"], in run order
        assert f"objective-v2__{task}__seed0" in names
        assert f"decomposition-gain_folded__{task}__seed0" in names
    assert len(names) == 2 * len(set(n.split("__")[0] for n in names))
    assert names.index("decomposition-gain_folded__sst2__seed0") < names.index(
        "objective-v2__trec__seed0"
    )
    assert all("__sst2__" in n for n in cells.cell_names("semalign_ablations", "smoke"))
    runner = cells.find_cell("semalign_ablations", "strength-0__trec__seed1", get_profile("cpu"))
    assert runner.func is ablations.run_variant and runner.args[2:] == (1, "trec")
    assert cells.main(["semalign_ablations", "--list", "--profile", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == names


@pytest.mark.parametrize(
    "argv, says",
    [
        (["nope", CELL], "unknown experiment 'nope'"),
        (["semalign_transfer", "sft__nope__seed0"], "unknown cell 'sft__nope__seed0'"),
        (["semalign_ablations", "default-default__sst2__seed0"], "unknown cell 'default-"),
        (["salf_main"], "name a cell, or pass --list"),
    ],
)
def test_unknown_names_fail_with_one_line(argv, says, capsys):
    assert cells.main([*argv, "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1


def _isolate(monkeypatch, folder) -> None:
    """Records and figures in ``folder``, no reference records."""
    (folder / "reference").mkdir(parents=True, exist_ok=True)
    for name, sub in (("RUN", ""), ("RESULTS", "results"), ("FIGURES", "figures")):
        monkeypatch.setenv(f"SEMALIGN_{name}_DIR", str(folder / sub))
    monkeypatch.setenv("SEMALIGN_REFERENCE_DIR", str(folder / "reference"))


@pytest.fixture(scope="module", params=sorted(GRIDS))
def notebook_grid(request, tmp_path_factory, one_thread):
    """(experiment, the folder its notebook function wrote at smoke, {run: record} in its order)."""
    experiment = request.param
    folder = tmp_path_factory.mktemp(experiment)
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, folder)
        records = GRIDS[experiment][0](get_profile("smoke"), verbose=False)
    return experiment, folder, {r["run"]: r for r in records if r["experiment"] == experiment}


@pytest.mark.e2e
@pytest.mark.slow  # notebook grids and fresh processes: make test-scale
def test_list_names_the_records_the_notebook_grid_writes(notebook_grid, monkeypatch):
    experiment, folder, records = notebook_grid
    _isolate(monkeypatch, folder)
    written = {p.stem for p in (folder / "results" / experiment / "smoke").glob("*.json")}
    assert cells.cell_names(experiment, "smoke") == list(records)
    assert set(records) == written


@pytest.mark.e2e
@pytest.mark.slow  # notebook grids and fresh processes: make test-scale
def test_a_grid_cell_is_the_notebook_record_in_process_and_in_its_own(
    notebook_grid, monkeypatch, tmp_path
):
    experiment, folder, records = notebook_grid
    cell = GRIDS[experiment][1]
    _isolate(monkeypatch, folder)
    reused = cells.run_cell(experiment, cell, "smoke")  # the notebook's record: same config
    assert reused["config_hash"] == records[cell]["config_hash"]
    assert reused["provenance"]["created"] == records[cell]["provenance"]["created"]
    in_process = cells.run_cell(experiment, cell, "smoke", force=True)
    _isolate(monkeypatch, tmp_path)
    own = cells.run_cell(experiment, cell, "smoke", own_process=True)

    assert _compared(own) == _compared(in_process) == _compared(records[cell])
    assert not any(key.startswith("process_") for key in in_process["cost"])
    assert own["cost"]["process_peak_scope"] == "own process"
    assert own["cost"]["process_peak_rss_mb"] > 0


@pytest.mark.slow  # two fresh processes per run: make test-scale
def test_cells_in_two_one_thread_processes_match_one_thread_in_process(tmp_path, monkeypatch):
    names = [CELL, "target__gsm"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "in_process"))
        shared = [cells.run_cell("semalign_transfer", name, "smoke") for name in names]
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "jobs"))
    own = cells.run_cells_in_processes("semalign_transfer", names, "smoke", jobs=2)
    assert [_compared(r) for r in own] == [_compared(r) for r in shared]
    assert [r["provenance"]["threads"] for r in own] == [1, 1]
    assert all(r["cost"]["process_peak_scope"] == "own process" for r in own)
    with pytest.raises(InvalidParameterError, match="unknown cell"):
        cells.run_cells_in_processes("semalign_transfer", [CELL, "nope"], "smoke")


@pytest.mark.slow  # two fresh processes: make test-scale
def test_salf_main_in_two_processes_is_what_the_notebook_reads(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    prof = get_profile("smoke")
    models, tasks, policies, seeds = salf_main.check_parameters(
        prof, policies=["full", "salf", "random_matched"]
    )
    cells.compute_salf_main_in_processes(prof, models, tasks, policies, seeds, jobs=2)
    folder = tmp_path / "results" / "salf_main" / "smoke"
    written = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    records = salf_main.run_main_table(prof, models, tasks, policies, seeds, verbose=False)
    assert {r["run"] for r in records} == set(written)  # zero-shot and every policy × seed
    for r in records:  # read, not recomputed: the notebook finds the processes' records valid
        assert r["provenance"]["created"] == written[r["run"]]["provenance"]["created"]
        assert r["provenance"]["threads"] == 1
    for seed in seeds:  # random_matched started after SALF's run: it trains SALF's depth
        by = {r["config"]["policy"]: r for r in records if r["config"]["seed"] == seed}
        depth = by["salf"]["model_info"]["layers"] - by["salf"]["policy"]["eof"]
        assert by["random_matched"]["config"]["spec"]["depth"] == depth
