"""The reproduction check (`semalign_core.report.reproduction`): a fresh run's numbers against
the committed ones. Tolerances are checked against the normal approximation of a proportion's
interval, computed here, not with the module's helpers."""

from __future__ import annotations

import json
import math

import pytest

from semalign_core import runs
from semalign_core.experiments.catalog import SALF_MAIN, SALF_TIMING
from semalign_core.records import RecordParts, get_or_compute
from semalign_core.report import reproduction

N = 200


def _record(run: str, correct: list[int], config_hash="h", created="t0", secondary=None) -> dict:
    items = [
        {"doc_id": i, "gold": i % 2, "prediction": 0, "accuracy": c} for i, c in enumerate(correct)
    ]
    metrics = {"metric": "accuracy", "items": items, "accuracy": sum(correct) / len(correct)}
    if secondary is not None:
        metrics["secondary"] = {
            "gsm_nll": {
                "all": {"bits_per_byte": sum(secondary) / len(secondary)},
                "items": [{"doc_id": i, "bits_per_byte": b} for i, b in enumerate(secondary)],
            }
        }
    return {
        "run": run,
        "config_hash": config_hash,
        "metrics": metrics,
        "provenance": {"created": created},
        "cost": {"wall_s": 1.0},
    }


def _half(n_correct: int) -> list[int]:
    return [1] * n_correct + [0] * (N - n_correct)


def _verdict(committed, reproduced) -> reproduction.CheckRow:
    (row,) = reproduction.compare_records(SALF_MAIN, committed, reproduced)
    return row


def test_the_tolerance_is_the_committed_numbers_interval_half_width():
    row = _verdict(_record("a", _half(100)), _record("a", _half(100), created="t1"))
    normal = 1.96 * math.sqrt(0.5 * 0.5 / N)  # 0.0693: the interval of a 50 % score on 200 items
    assert row.verdict == "identical" and row.difference == 0.0
    assert row.tolerance == pytest.approx(normal, abs=0.006)
    assert row.committed_low < 0.5 < row.committed_high


def test_a_number_within_the_tolerance_is_reproduced_and_one_beyond_it_is_not():
    committed = _record("a", _half(100))
    within = _verdict(committed, _record("a", _half(110), created="t1"))  # +5 points
    beyond = _verdict(committed, _record("a", _half(130), created="t1"))  # +15 points
    assert within.verdict == "reproduced" and within.difference == pytest.approx(0.05)
    assert beyond.verdict == "outside tolerance" and beyond.difference == pytest.approx(0.15)
    # the same mean on other per-item scores is reproduced, not identical
    shuffled = _verdict(committed, _record("a", _half(100)[::-1], created="t1"))
    assert shuffled.verdict == "reproduced" and shuffled.difference == 0.0


def test_other_items_differ_and_another_config_is_said():
    committed = _record("a", _half(100))
    other = _record("a", _half(100), created="t1")
    other["metrics"]["items"][0]["gold"] = "changed"  # position 0 is another question now
    assert _verdict(committed, other).verdict == "differs"
    changed = _verdict(committed, _record("a", _half(100), config_hash="h2", created="t1"))
    assert changed.verdict == "identical" and changed.same_config is False
    text = reproduction.check_markdown({"profile": "cpu", "rows": [changed.__dict__]})
    assert "identical; config differs" in text and "1 made with another config" in text


def test_a_committed_record_copied_into_the_run_is_reused_not_evidence():
    committed = _record("a", _half(100))
    assert _verdict(committed, json.loads(json.dumps(committed))).verdict == "reused"


def test_secondary_numbers_are_checked_and_shown_as_they_are():
    committed = _record("a", _half(100), secondary=[2.0] * N)
    reproduced = _record("a", _half(100), created="t1", secondary=[2.5] * N)
    rows = {r.metric: r for r in reproduction.compare_records(SALF_MAIN, committed, reproduced)}
    assert set(rows) == {"accuracy", "gsm_nll.bits_per_byte"}
    nll = rows["gsm_nll.bits_per_byte"]
    assert nll.verdict == "outside tolerance" and nll.difference == pytest.approx(0.5)
    assert nll.tolerance == 0.0  # every item the same: no spread to tolerate
    text = reproduction.check_markdown({"profile": "cpu", "rows": [nll.__dict__]})
    assert "| 2.000 [2.000, 2.000] | 2.500 | +0.500 |" in text  # bits per byte, not x100


def test_records_without_items_are_compared_as_a_whole():
    a = {
        "run": "x",
        "config_hash": "h",
        "metrics": {"eof": 11, "gains": [0.1, 0.2]},
        "provenance": {},
    }
    b = json.loads(json.dumps(a)) | {"provenance": {"created": "t1"}}
    (row,) = reproduction.compare_records("salf_analysis", a, b)
    assert row.verdict == "identical"
    b["metrics"]["gains"][1] = 0.21
    (row,) = reproduction.compare_records("salf_analysis", a, b)
    assert row.verdict == "differs" and row.max_relative_difference == pytest.approx(0.01 / 0.21)
    # another thread count moves the last digits only: close, not differs
    b["metrics"]["gains"][1] = 0.20002
    (row,) = reproduction.compare_records("salf_analysis", a, b)
    assert row.verdict == "close" and row.max_relative_difference == pytest.approx(1e-4, rel=1e-3)
    # a wall time kept among an analysis's metrics is a cost: never compared
    b["metrics"]["gains"][1] = 0.2
    a["metrics"]["alignment"], b["metrics"]["alignment"] = {"wall_s": 2.1}, {"wall_s": 10.0}
    (row,) = reproduction.compare_records("semalign_analyses", a, b)
    assert row.verdict == "identical"


def _write(folder, experiment, record):
    path = folder / experiment / "cpu" / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_runs_only_one_side_has_are_listed_and_timing_records_skipped(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    _write(ref, SALF_MAIN, _record("only_committed", _half(100)))
    _write(run, SALF_MAIN, _record("only_run", _half(100)))
    _write(run, SALF_MAIN, _record("both", _half(100), created="t1"))
    _write(ref, SALF_MAIN, _record("both", _half(100)))
    _write(ref, SALF_TIMING, _record("timed", _half(100)))
    rows = reproduction.compare_results(run, ref, "cpu", [SALF_MAIN, SALF_TIMING])
    assert [(r.run, r.verdict) for r in rows] == [
        ("both", "identical"),
        ("only_committed", "not in this run"),
        ("only_run", "new"),
    ]


def test_the_check_is_stored_per_experiment_and_rendered(tmp_path, monkeypatch):
    rows = reproduction.compare_records(
        SALF_MAIN, _record("a", _half(100)), _record("a", _half(130), created="t1")
    )
    reproduction.merge_check(tmp_path, "cpu", rows, {"run": "tier x", "reference": "results/"})
    other = reproduction.compare_records(
        "other", _record("b", _half(100)), _record("b", _half(100), created="t1")
    )
    path = reproduction.merge_check(
        tmp_path, "cpu", other, {"run": "tier x", "reference": "results/"}
    )
    again = reproduction.merge_check(
        tmp_path, "cpu", rows, {"run": "tier x", "reference": "results/"}
    )
    assert again == path and len(json.loads(path.read_text())["rows"]) == 2  # replaced, not added
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    (written,) = reproduction.reproduction_check(tmp_path / "figures_out")
    text = written.read_text()
    assert "Of 2 numbers: 1 identical, 1 outside tolerance" in text
    assert "| salf_main | a | accuracy | 50.0 [" in text and "| 65.0 | +15.0 |" in text
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "none"))
    assert reproduction.reproduction_check(tmp_path / "figures_out") == []


def test_a_committed_record_is_not_reused_unless_asked(folders, monkeypatch):
    run_results, reference = folders
    _write(reference, SALF_MAIN, {"run": "cell", "config_hash": "x"})
    computed = []

    def compute():
        computed.append(1)
        return RecordParts({"value": len(computed)}, {}, {"seed": 0})

    committed = get_or_compute(SALF_MAIN, "cpu", "cell", {"a": 1}, compute)
    (reference / SALF_MAIN / "cpu" / "cell.json").write_text(json.dumps(committed))
    (run_results / SALF_MAIN / "cpu" / "cell.json").unlink()
    get_or_compute(SALF_MAIN, "cpu", "cell", {"a": 1}, compute)
    assert computed == [1, 1]  # recomputed: the committed record is the reference, not a cache
    (run_results / SALF_MAIN / "cpu" / "cell.json").unlink()
    monkeypatch.setenv("SEMALIGN_REUSE_REFERENCE", "true")
    get_or_compute(SALF_MAIN, "cpu", "cell", {"a": 1}, compute)
    assert computed == [1, 1]  # REUSE=true: the committed record stands in


def test_the_check_goes_with_the_notebook_when_promoted(folders, monkeypatch):
    run_results, reference = folders
    _write(reference, SALF_MAIN, _record("a", _half(100)))
    _write(run_results, SALF_MAIN, _record("a", _half(110), created="t1"))
    summary = runs.check_reproduction("06_salf_main_table", "cpu", "reproduce")
    assert summary == "reproduction check of 06_salf_main_table: 1 reproduced"
    check = reproduction.check_path(run_results, "cpu")
    executed = run_results / "notebooks" / "cpu" / "06_salf_main_table.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")
    executed.with_suffix(".run.json").write_text(json.dumps({"records": {}}))
    runs.promote("06_salf_main_table", "cpu")
    assert reproduction.check_path(reference, "cpu").read_bytes() == check.read_bytes()
