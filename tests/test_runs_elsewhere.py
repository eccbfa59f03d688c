"""Runs made elsewhere: the check at the hub profiles (no committed run) sets reproduced numbers
beside the published ones; a run folder from another machine is imported with its provenance
(stand-in numbers refused); the jobs of a job array over cells merge into one run folder."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from semalign_core import runs
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments import cells
from semalign_core.experiments.catalog import FINETUNED_TEACHER, SEMALIGN_TRANSFER
from semalign_core.report import published_check, reproduction


def _record(method, task, correct, n=1000, seed=0, source="llama2-13b-chat", **config):
    """A Table 1/2 record whose first ``correct`` of ``n`` items score 1."""
    items = [{"doc_id": i, "gold": "A", "acc": float(i < correct)} for i in range(n)]
    config = {"task": task, "source": source, "target": "llama2-7b-chat", **config}
    return {
        "run": f"{method}__{task}__seed{seed}",
        "method": method,
        "seed": seed,
        "config": config,
        "config_hash": "h",
        "metrics": {"metric": "acc", "items": items},
        "provenance": {"machine": "Linux x86_64, 64 cpus", "device": "cuda:0 (H100)"},
    }


def _write(folder, experiment, profile, record):
    path = folder / experiment / profile / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_half_a_unit_of_the_last_printed_digit():
    assert published_check.half_unit(44.2) == pytest.approx(0.05)
    assert published_check.half_unit(16.07) == pytest.approx(0.005)
    assert published_check.half_unit(52.0) == pytest.approx(0.5)


def test_paper_cells_agree_or_differ_and_other_models_are_never_judged(tmp_path):
    # published Table 1: Llama2-7B-Chat MMLU 44.2, Seeking MMLU 49.6 (results/paper)
    _write(tmp_path, SEMALIGN_TRANSFER, "paper", _record("target", "mmlu", 442))
    for seed in (0, 1):  # Seeking far below its published 49.6 on both seeds
        _write(tmp_path, SEMALIGN_TRANSFER, "paper", _record("seeking", "mmlu", 300, seed=seed))
    other = _record("semalign", "mmlu", 496, source="qwen2.5-1.5b-instruct")
    _write(tmp_path, SEMALIGN_TRANSFER, "paper", other)
    rows = {
        r.run: r for r in published_check.compare_published(tmp_path, "paper", [SEMALIGN_TRANSFER])
    }
    target, seeking, semalign = (
        rows["Llama2-7B-Chat / MMLU"],
        rows["Seeking / MMLU"],
        rows["SemAlign / MMLU"],
    )
    assert target.experiment == "paper: semalign_transfer"
    assert target.committed == pytest.approx(0.442) and target.reproduced == pytest.approx(0.442)
    assert target.verdict == "agrees with paper"
    # tolerance: at least the binomial 95 % half-width of 1000 items plus the paper's rounding
    assert target.tolerance >= 0.9 * 1.96 * math.sqrt(0.442 * 0.558 / 1000) + 0.0005
    assert seeking.reproduced == pytest.approx(0.300) and seeking.verdict == "differs from paper"
    assert semalign.verdict == "other models"  # not the paper's source: shown for scale only


def test_table2_cells_are_named_by_teacher(tmp_path):
    teacher = {"teacher": "codellama-13b-python"}
    record = _record("teacher", "humaneval", 476, teacher=teacher, source=None)
    record["run"] = "codellama-13b-python__teacher__humaneval"
    _write(tmp_path, FINETUNED_TEACHER, "paper", record)
    rows = published_check.compare_published(tmp_path, "paper", [FINETUNED_TEACHER])
    assert [(r.run, r.verdict) for r in rows] == [
        ("CodeLlama-13B-Python (teacher) / HumanEval", "agrees with paper")  # published 47.56
    ]


def test_published_rows_render_in_their_own_table(tmp_path):
    _write(tmp_path, SEMALIGN_TRANSFER, "paper", _record("target", "mmlu", 442))
    rows = published_check.compare_published(tmp_path, "paper", [SEMALIGN_TRANSFER])
    reproduction.merge_check(tmp_path, "paper", rows, {"run": "a cluster run"})
    text = reproduction.check_markdown(
        json.loads(reproduction.check_path(tmp_path, "paper").read_text())
    )
    assert "### Against the published numbers" in text and "1 agrees with paper" in text
    assert "| semalign_transfer | Llama2-7B-Chat / MMLU | acc | 44.2 | 44.2 |" in text


def _finished_elsewhere(folder, records):
    """A run folder as another machine leaves it after notebook 03 finished at paper."""
    results = folder / "results"
    listed = [
        str(_write(results, SEMALIGN_TRANSFER, "paper", r).relative_to(results)) for r in records
    ]
    executed = results / "notebooks" / "paper" / "03_semalign_transfer.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")
    digests = {n: hashlib.sha256((results / n).read_bytes()).hexdigest() for n in listed}
    executed.with_suffix(".run.json").write_text(json.dumps({"records": digests}))
    rows = published_check.compare_published(results, "paper", [SEMALIGN_TRANSFER])
    reproduction.merge_check(results, "paper", rows, {"run": "tier `reproduce` on a cluster"})
    return results


def test_a_run_folder_from_elsewhere_is_imported_with_its_provenance(folders, tmp_path):
    _, reference = folders
    _finished_elsewhere(tmp_path / "cluster", [_record("target", "mmlu", 442)])
    assert (
        runs.main(
            ["promote", "--profile", "paper", "--from", str(tmp_path / "cluster"), "--no-figures"]
        )
        == 0
    )
    imported = json.loads(
        (reference / SEMALIGN_TRANSFER / "paper/target__mmlu__seed0.json").read_text()
    )
    assert imported["provenance"]["device"] == "cuda:0 (H100)"  # the record's own provenance
    check = json.loads(reproduction.check_path(reference, "paper").read_text())
    assert check["about"]["imported_from"] == str(tmp_path / "cluster")
    assert check["about"]["computed_on"] == ["Linux x86_64, 64 cpus, cuda:0 (H100)"]
    assert "Imported from" in reproduction.check_markdown(check)


def test_stand_in_numbers_are_never_promoted(folders, tmp_path):
    _, reference = folders
    record = _record("target", "mmlu", 442)
    record["models"] = {"target": {"origin": "standin llama2-7b-chat", "weights_sha256": "x"}}
    _finished_elsewhere(tmp_path / "cluster", [record])
    with pytest.raises(ArtifactError, match="stand-in models"):
        runs.import_run(tmp_path / "cluster", "03_semalign_transfer", "paper")
    assert not (reference / SEMALIGN_TRANSFER).exists()


def _job(folder, record):
    """The run folder one job of a job array leaves: one cell's record, no notebook."""
    _write(folder / "results", SEMALIGN_TRANSFER, "paper", record)
    return folder


def test_job_folders_merge_into_one_run_folder_with_their_provenance(folders, tmp_path):
    run_results, _ = folders
    a = _job(tmp_path / "job0", _record("target", "mmlu", 442))
    b = _job(tmp_path / "job1", _record("seeking", "mmlu", 300))
    same = _job(tmp_path / "job2", _record("target", "mmlu", 442))  # a reference row again
    json_of = json.loads(
        (same / "results" / SEMALIGN_TRANSFER / "paper" / "target__mmlu__seed0.json").read_text()
    )
    json_of["provenance"]["created"] = "later"  # other bytes, the same numbers
    (same / "results" / SEMALIGN_TRANSFER / "paper" / "target__mmlu__seed0.json").write_text(
        json.dumps(json_of)
    )
    assert runs.main(["merge", str(a), str(b), str(same)]) == 0
    merged = sorted(p.name for p in (run_results / SEMALIGN_TRANSFER / "paper").iterdir())
    assert merged == ["seeking__mmlu__seed0.json", "target__mmlu__seed0.json"]
    kept = json.loads(
        (run_results / SEMALIGN_TRANSFER / "paper" / "target__mmlu__seed0.json").read_text()
    )
    assert "created" not in kept["provenance"]  # the first copy, byte for byte
    log = json.loads((run_results / runs.MERGE_LOG).read_text())["sources"]
    assert [len(s["records"]) for s in log] == [1, 1, 0]
    assert log[0]["computed_on"] == ["Linux x86_64, 64 cpus, cuda:0 (H100)"]
    clash = _job(tmp_path / "job3", _record("seeking", "mmlu", 310))  # other numbers, same cell
    with pytest.raises(ArtifactError, match="other numbers"):
        runs.merge([clash])


def test_a_job_array_index_names_one_cell_of_the_list():
    names = cells.cell_names(SEMALIGN_TRANSFER, "smoke")
    assert [cells.cell_at(SEMALIGN_TRANSFER, "smoke", i) for i in range(len(names))] == names
    with pytest.raises(InvalidParameterError, match="outside the"):
        cells.cell_at(SEMALIGN_TRANSFER, "smoke", len(names))
