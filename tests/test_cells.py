"""The cell runner: one cell by name, in this process or its own, gives the notebook's record."""

from __future__ import annotations

import pytest

from semalign_core.experiments import cells
from semalign_core.paths import REPO_ROOT
from semalign_core.records import without_volatile
from semalign_core.transfer.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

CELL = "sft__mmlu__seed0"


def _compared(record: dict) -> dict:
    """What two runs of one config must share; the code's diff hash is left out because other
    work may edit the tree between the two runs."""
    record = without_volatile(record)
    record["provenance"].pop("code")
    return record


@pytest.mark.e2e
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
    rows = ("source", "target", *METHODS)
    tasks = ("gsm", "mmlu", "humaneval", "mbpp")
    expected = {f"{row}__{task}__seed0" for row in rows for task in tasks}
    assert set(cells.cell_names("semalign_transfer", "smoke")) == expected
    assert cells.cell_names("semalign_transfer", "smoke", seeds=[3])[0] == "source__gsm__seed3"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["nope", CELL], "unknown experiment 'nope'"),
        (["semalign_transfer", "sft__nope__seed0"], "unknown cell 'sft__nope__seed0'"),
        (["salf_main"], "name a cell, or pass --list"),
    ],
)
def test_unknown_names_fail_with_one_line(argv, says, capsys):
    assert cells.main([*argv, "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1
