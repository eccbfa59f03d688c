"""Table 2's target row with two teachers of a task (``paper``: HumanEval and MBPP each have two
code teachers): the untrained target is evaluated once, the second teacher's target record is a
marked copy of the first's, and the report shows the row once per task, never as seeds. No model
is loaded: the evaluation is replaced by a stand-in that counts its calls."""

from __future__ import annotations

import pytest

from semalign_core.experiments import transfer_tables as tt
from semalign_core.experiments.budgets import TEACHERS
from semalign_core.profiles import get_profile
from semalign_core.records import RecordParts, config_hash
from semalign_core.report import semalign_tables

PAPER = get_profile("paper")
TASK = "humaneval"
FIRST, SECOND = TEACHERS["paper"][TASK]
SCORES = [1.0, 0.0, 1.0, 1.0]  # the stand-in's per-item pass@1: mean 75 %


def fake_parts(cell: tt.Cell) -> RecordParts:
    """A record's parts as compute_cell makes them, with fixed per-item scores."""
    items = [
        {"doc_id": i, "gold": f"g{i}", "prediction": "", "pass@1": s} for i, s in enumerate(SCORES)
    ]
    metrics = {
        "metric": "pass@1",
        "value": sum(SCORES) / len(SCORES),
        "percent": 100 * sum(SCORES) / len(SCORES),
        "stderr": None,
        "n": len(SCORES),
        "all": {},
        "prompt_style": "transfer",
        "decoding": "greedy",
        "items": items,
        "transfer": None,
    }
    prov = {"created": "2026-01-01T00:00:00+00:00", "seed": cell.record_seed, "code": {"c": 1}}
    extra = {
        "method": cell.method,
        "task": cell.task,
        "seed": cell.record_seed,
        "setting": "finetuned",
        "teacher": cell.teacher,
    }
    return RecordParts(metrics, {"eval_wall_s": 1.0}, prov, extra)


@pytest.fixture
def computed(tmp_path, monkeypatch):
    """(cell, teacher) pairs the stand-in evaluation was called for; records in ``tmp_path``."""
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    calls: list[tuple[str, str]] = []

    def compute(cell):
        calls.append((cell.method, cell.teacher))
        return fake_parts(cell)

    def identities(**roles):
        return lambda: {
            role: {"weights_sha256": f"w-{ref}", "tokenizer_sha256": "t", "origin": "fake"}
            for role, ref in sorted(roles.items())
        }

    monkeypatch.setattr(tt, "compute_cell", compute)
    monkeypatch.setattr(tt, "record_models", identities)
    return calls


def table_cells(methods=("sft",), seeds=(0, 1)):
    return tt.table_cells(PAPER, methods, [TASK], seeds, None, "finetuned", None)


def test_the_target_is_evaluated_once_for_both_teachers(computed, tmp_path):
    cells = table_cells()
    targets = [c for c in cells if c.method == "target"]
    assert [c.teacher for c in targets] == [FIRST, SECOND]
    # the second teacher's target first: it computes the first's record, which is then reused
    records = {c.run: tt.cell_record(c) for c in reversed(cells)}
    assert computed.count(("target", FIRST)) == 1 and ("target", SECOND) not in computed
    assert computed.count(("teacher", FIRST)) == computed.count(("teacher", SECOND)) == 1
    original = records[f"{FIRST}__target__{TASK}"]
    copy = records[f"{SECOND}__target__{TASK}"]
    assert "reused_from" not in original
    assert copy["reused_from"] == f"semalign_finetuned_teacher/paper/{FIRST}__target__{TASK}.json"
    assert copy["metrics"] == original["metrics"]
    assert copy["provenance"]["created"] == original["provenance"]["created"]
    assert copy["teacher"] == SECOND and copy["config"]["teacher"]["model"] == SECOND
    assert copy["config_hash"] == config_hash(tt.cell_config(targets[1]))
    # a rerun reuses both records: nothing is evaluated again
    before = len(computed)
    for cell in cells:
        tt.cell_record(cell)
    assert len(computed) == before


def test_only_a_second_teachers_target_has_a_donor():
    first, second = (
        tt.make_cell(PAPER, "target", TASK, 0, setting="finetuned", teacher=t)
        for t in (FIRST, SECOND)
    )
    assert tt.target_donor(first) is None
    assert tt.target_donor(second).teacher == FIRST
    teacher_row = tt.make_cell(PAPER, "teacher", TASK, 0, setting="finetuned", teacher=SECOND)
    assert tt.target_donor(teacher_row) is None
    one_teacher = tt.make_cell(get_profile("cpu"), "target", "sst2", 0, setting="finetuned")
    assert tt.target_donor(one_teacher) is None


def test_the_report_shows_the_target_once_without_seeds(computed):
    for cell in table_cells():
        tt.cell_record(cell)
    frame = semalign_tables.table("paper", setting="finetuned")
    rows = list(frame.index)
    assert rows.count("target") == 1 and not any("target" in r for r in rows if r != "target")
    target = frame.loc["target", "HumanEval"]
    assert target.startswith("75.0 [") and "(n=4)" in target and "seeds" not in target
    assert "2 seeds" in frame.loc[f"{FIRST} → sft", "HumanEval"]  # trained rows keep their seeds
