"""Run folders and the committed reference: runs write their own folder, reuse valid reference
records, and only ``promote`` copies a finished notebook's output into the reference."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from semalign_core import runs
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments.budgets import DEFAULT_SEEDS, FULL_SEEDS
from semalign_core.experiments.catalog import SALF_MAIN, SEMALIGN_TRANSFER
from semalign_core.records import RecordParts, get_or_compute, record_path
from semalign_core.run_notebook import NotebookFailed, run


def _record(config: dict, counter: list) -> dict:
    def compute() -> RecordParts:
        counter.append(1)
        return RecordParts({"value": len(counter)}, {}, {"seed": 0})

    return get_or_compute(SALF_MAIN, "smoke", "cell", config, compute)


def test_records_go_to_the_run_folder_and_reuse_a_valid_reference_record(folders, monkeypatch):
    run_results, reference = folders
    monkeypatch.setenv("SEMALIGN_REUSE_REFERENCE", "true")  # REUSE=true (off by default)
    computed: list = []
    first = _record({"a": 1}, computed)
    assert record_path(SALF_MAIN, "smoke", "cell") == run_results / SALF_MAIN / "smoke/cell.json"
    assert computed == [1] and not reference.exists()  # written to the run folder only
    # promoted (as promote copies it), then a fresh run folder: reused, not recomputed
    (reference / SALF_MAIN / "smoke").mkdir(parents=True)
    shutil.copy(run_results / SALF_MAIN / "smoke/cell.json", reference / SALF_MAIN / "smoke")
    shutil.rmtree(run_results)
    again = _record({"a": 1}, computed)
    assert computed == [1] and again == first
    assert (run_results / SALF_MAIN / "smoke/cell.json").is_file()  # the run's report sees it
    # another config: the reference record is not valid for it; computed, reference untouched
    before = (reference / SALF_MAIN / "smoke/cell.json").read_bytes()
    assert _record({"a": 2}, computed)["metrics"]["value"] == 2
    assert (reference / SALF_MAIN / "smoke/cell.json").read_bytes() == before


def _finished_run(run_results, records=("a", "b"), log=True, extra=()) -> dict:
    """What notebook 06 leaves at smoke: records, the executed copy and (finished) its run log,
    whose manifest lists the records (and ``extra``: results-relative paths of other records)."""
    folder = run_results / SALF_MAIN / "smoke"
    folder.mkdir(parents=True)
    for name in records:
        (folder / f"{name}.json").write_text(json.dumps({"run": name, "config_hash": "h"}))
    for name in extra:
        (run_results / name).parent.mkdir(parents=True, exist_ok=True)
        (run_results / name).write_text(json.dumps({"run": name, "config_hash": "h"}))
    listed = [f"{SALF_MAIN}/smoke/{name}.json" for name in records] + list(extra)
    manifest = {n: hashlib.sha256((run_results / n).read_bytes()).hexdigest() for n in listed}
    executed = run_results / "notebooks" / "smoke" / "06_salf_main_table.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")
    if log:
        executed.with_suffix(".run.json").write_text(json.dumps({"records": manifest}))
    return manifest


def test_promote_copies_what_the_run_log_lists_and_reports_older_records(folders):
    run_results, reference = folders
    other = "semalign_finetuned_teacher/smoke/ft__semalign__sst2__seed0.json"
    _finished_run(run_results, extra=[other])
    (run_results / SALF_MAIN / "smoke" / "written_later_by_a_cell.json").write_text("{}")
    promoted = reference / SALF_MAIN / "smoke"
    promoted.mkdir(parents=True)
    (promoted / "old.json").write_text('{"config_hash": "old"}')
    (promoted / "bench_output.json").write_text('{"wall_s": 1}')  # not a record: never pruned
    (promoted / "a.json").write_text('{"run": "stale a"}')
    assert runs.finished("smoke") == ["06_salf_main_table"]
    done = runs.promote("06_salf_main_table", "smoke")
    assert json.loads((promoted / "a.json").read_text())["run"] == "a"  # replaced
    assert (promoted / "b.json").is_file() and (promoted / "old.json").is_file()
    assert not (promoted / "written_later_by_a_cell.json").exists()  # not in the manifest
    assert (reference / other).is_file()  # a record of another experiment the notebook made
    assert [p.name for p in done.stale] == ["old.json"] and "1 older record" in done.summary()
    assert (reference / "notebooks/smoke/06_salf_main_table.run.json").is_file()
    runs.promote("06_salf_main_table", "smoke", prune=True)
    assert sorted(p.name for p in promoted.iterdir()) == ["a.json", "b.json", "bench_output.json"]


def test_a_record_changed_after_the_notebook_finished_is_not_promoted(folders):
    run_results, reference = folders
    _finished_run(run_results)
    (run_results / SALF_MAIN / "smoke" / "b.json").write_text('{"run": "rewritten"}')
    with pytest.raises(ArtifactError, match="changed after 06_salf_main_table finished"):
        runs.promote("06_salf_main_table", "smoke")
    assert not reference.exists()


def test_an_unfinished_notebook_is_not_promoted(folders):
    run_results, reference = folders
    _finished_run(run_results, log=False)
    with pytest.raises(ArtifactError, match="has not finished"):
        runs.promote("06_salf_main_table", "smoke")
    assert not reference.exists()
    with pytest.raises(InvalidParameterError, match="unknown notebook"):
        runs.promote("06_salf", "smoke")
    assert runs.main(["promote", "--profile", "smoke"]) == 2  # nothing finished


def test_tiers_pass_their_seeds_to_the_notebooks():
    full = runs.tier_parameters("reproduce-full", "cpu", "03_semalign_transfer")
    assert full["seeds"] == list(FULL_SEEDS[SEMALIGN_TRANSFER]["cpu"]) == [0, 1, 2]
    headline = runs.tier_parameters("reproduce", "cpu", "03_semalign_transfer")
    assert headline == {"seeds": list(DEFAULT_SEEDS[SEMALIGN_TRANSFER]["cpu"]), "jobs": 2}
    assert "jobs" not in runs.tier_parameters("test", "smoke", "03_semalign_transfer")
    assert "jobs" not in runs.tier_parameters("reproduce", "smoke", "03_semalign_transfer")
    # make reproduce runs Table 2 with one training seed; make reproduce-full with the default 3
    table2 = "04_semalign_finetuned_teacher"
    assert runs.tier_parameters("reproduce", "cpu", table2) == {"seeds": [0]}
    assert runs.tier_parameters("reproduce-full", "cpu", table2) == {"seeds": [0, 1, 2]}
    assert runs.tier_parameters("reproduce-full", "cpu", "00_models_and_data") == {}
    # make reproduce runs SALF's main table on SmolLM2 x TREC, one seed; reproduce-full all
    salf = runs.tier_parameters("reproduce", "cpu", "06_salf_main_table")
    assert salf == {
        "seeds": [0],
        "models": ["smollm2-135m-instruct"],
        "tasks": ["trec"],
        "jobs": 2,  # its runs dealt to two one-thread processes
    }
    assert runs.tier_parameters("reproduce-full", "cpu", "06_salf_main_table") == {
        "seeds": [0, 1, 2],
        "jobs": 2,
    }
    assert runs.tier_parameters("reproduce", "smoke", "06_salf_main_table") == {"seeds": [0, 1]}
    with pytest.raises(InvalidParameterError, match="unknown tier"):
        runs.tier_parameters("everything", "cpu", "00_models_and_data")
    assert runs.ORDER[0] == "00_models_and_data" and runs.ORDER[-1] == "08_report"


def _notebook(path, source: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nseed = 0\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.mark.e2e
def test_run_log_is_written_only_when_the_notebook_finishes(folders, tmp_path):
    run_results, _ = folders
    _notebook(tmp_path / "ok.ipynb", "print(value * 2)")
    executed = run(tmp_path / "ok.ipynb", "smoke", 0, 120, {"value": 21})
    log = json.loads(executed.with_suffix(".run.json").read_text())
    assert executed == run_results / "notebooks/smoke/ok.ipynb"
    assert log["parameters"] == {"profile": "smoke", "seed": 0, "value": 21}
    assert log["wall_s"] > 0 and "git_commit" in log["code"] and log["records"] == {}
    _notebook(tmp_path / "ok.ipynb", "raise ValueError('broken')")  # the same name fails now
    with pytest.raises(NotebookFailed, match="ValueError: broken"):
        run(tmp_path / "ok.ipynb", "smoke", 0, 120)
    assert not executed.with_suffix(".run.json").exists()  # no stale "finished" mark


@pytest.mark.e2e
def test_promoting_the_smoke_reproduction_rebuilds_its_figures(smoke_reproduction, tmp_path):
    """Every notebook of the session's smoke run finished (a run log each); promoted into an
    empty reference, the figures built from the reference alone equal the run's own."""
    reference = tmp_path / "reference" / "results"
    done = [runs.promote(nb, "smoke", smoke_reproduction.results, reference) for nb in runs.ORDER]
    assert [d.notebook for d in done] == list(runs.ORDER)
    command = [sys.executable, "-m", "semalign_core.report", "--results", str(reference)]
    subprocess.run(command, check=True, capture_output=True)
    built = {p.name: p.read_bytes() for p in (tmp_path / "reference" / "figures").iterdir()}
    own = {p.name: p.read_bytes() for p in smoke_reproduction.figures.iterdir()}
    assert built == own


@pytest.mark.e2e
@pytest.mark.slow  # a tier of notebooks: make test-scale (11 s)
def test_a_tier_promotes_each_notebook_as_it_finishes(folders):
    """`make reproduce-full` in small: the notebook runs into the run folder, is promoted into the
    reference, and the reference figures are rebuilt from the reference alone."""
    run_results, reference = folders
    runs.reproduce("reproduce-full", "smoke", ["00_models_and_data"], promote_each=True)
    assert (reference / "notebooks/smoke/00_models_and_data.run.json").is_file()
    for experiment in runs.experiments_of("00_models_and_data"):
        promoted = sorted(p.name for p in (reference / experiment / "smoke").iterdir())
        assert promoted == sorted(p.name for p in (run_results / experiment / "smoke").iterdir())
    assert (reference.parent / "figures" / "table3_model_statistics.md").is_file()
