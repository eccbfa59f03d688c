"""SemAlign Table 1 at the smoke profile, read from the session's smoke run of its notebook (every
method × task): records, reuse on rerun (no retraining), the table, the report, and parameter
errors (in-process)."""

from __future__ import annotations

import json
import shutil

import pytest

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import budgets
from semalign_core.experiments import transfer_tables as transfer_table
from semalign_core.models.teacher_recipe import FINETUNED
from semalign_core.profiles import get_profile
from semalign_core.report import semalign_tables
from semalign_core.transfer.registry import METHODS as ALL_METHODS

NB = "03_semalign_transfer"
METHODS = ("semalign", "sft")  # the rows the table checks look at
ROWS = ("source", "target", *METHODS)
SMOKE = get_profile("smoke")


def _folder(results):
    return results / "semalign_transfer" / "smoke"


@pytest.fixture(scope="module")
def smoke_results(smoke_reproduction):
    return smoke_reproduction.results


def _run(row: str, task: str = "gsm") -> str:
    """A record's run name: the untrained rows are evaluated once, without a seed."""
    return f"{row}__{task}" if row in ("source", "target") else f"{row}__{task}__seed0"


def test_records_written_per_method_task_seed(smoke_results):
    files = sorted(p.name for p in _folder(smoke_results).glob("*__gsm*.json"))
    assert files == sorted(_run(m) + ".json" for m in ("source", "target", *ALL_METHODS))
    for method in ("source", "target", *ALL_METHODS):
        rec = json.loads((_folder(smoke_results) / f"{_run(method)}.json").read_text())
        m = rec["metrics"]
        assert m["metric"] == "exact_match" and m["n"] == 4 and 0.0 <= m["value"] <= 1.0
        assert rec["config"]["eval_task"] == "semalign_gsm8k"
        assert rec["config"]["eval"]["decoding"] == "greedy"
        assert rec["cost"]["eval_wall_s"] >= 0 and rec["provenance"]["data_sha256"]
        trained = method in ALL_METHODS
        assert ("transfer" in rec["config"]) == trained
        assert (rec["cost"]["transfer"] is not None) == trained
        if trained:
            assert rec["config"]["transfer"]["train_split"] == "train"
            assert m["transfer"]["n_train"] == budgets.TRANSFER_BUDGETS["smoke"].n_train
            assert rec["cost"]["transfer"]["wall_s"] > 0


def test_notebook_shows_ours_and_published(smoke_reproduction):
    outputs = smoke_reproduction.outputs(NB)
    html = "".join("".join(o.get("data", {}).get("text/html", [])) for o in outputs)
    assert "Reproduced (ours, profile smoke)" in html
    assert "Published (SemAlign paper, Table 1)" in html


def _snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.glob("*.json"))}


def test_rerun_reuses_records_without_retraining(smoke_results, tmp_path, monkeypatch):
    """In-process on a copy of the records (the kernel-level rerun: test_resume)."""
    copy = tmp_path / "results"
    shutil.copytree(_folder(smoke_results), _folder(copy))
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(copy))
    monkeypatch.setattr(transfer_table, "compute_cell", lambda cell: pytest.fail(f"{cell.run} ran"))
    before = _snapshot(_folder(copy))
    records = transfer_table.run_table(SMOKE, METHODS, ["gsm"], [0], verbose=False)
    assert sorted(r["run"] for r in records) == sorted(_run(m) for m in ROWS)
    assert _snapshot(_folder(copy)) == before


def test_table_and_report(smoke_results, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(smoke_results))
    frame = semalign_tables.table("smoke", METHODS, ["gsm"])
    assert list(frame.index) == list(ROWS)
    # the four benchmarks always; the selected task's metric that moves, on the same items
    assert list(frame.columns) == ["MMLU", "GSM8K", "HumanEval", "MBPP", "GSM8K ref. bits/byte ↓"]
    assert all("(n=4)" in c for c in frame["GSM8K"]) and set(frame["MMLU"]) == {""}
    assert all("(n=4)" in c and "%" not in c for c in frame["GSM8K ref. bits/byte ↓"])
    assert "MMLU 25%" in frame.attrs["notes"][0]
    paths = semalign_tables.semalign_table1(tmp_path)
    text = paths[0].read_text()
    assert paths[0].name == "semalign_table1_transfer.md"
    assert "profile `smoke` (seeds [0])" in text and "## Published" in text
    assert "| SemAlign | 50.3 |" in text
    assert semalign_tables.semalign_table1(tmp_path)[0].read_text() == text  # deterministic


def test_parameter_checks():
    from semalign_core.transfer.registry import METHODS as ALL

    smoke, cpu = get_profile("smoke"), get_profile("cpu")
    check = transfer_table.check_parameters
    assert check(smoke) == (tuple(ALL), ("gsm", "mmlu", "humaneval", "mbpp"), (0,))
    assert check(smoke, 3, methods=["sft", "sft"], tasks=["mbpp"]) == (("sft",), ("mbpp",), (3,))
    assert check(smoke, 0, [2, 1, 2])[2] == (2, 1)
    # seeds None: the profile's default seeds of the table, counted from `seed`
    assert check(cpu, 0, setting="finetuned")[2] == (0, 1, 2) and check(cpu, 5)[2] == (5,)
    with pytest.raises(InvalidParameterError, match="non-empty list"):
        check(smoke, methods="sft")
    with pytest.raises(InvalidParameterError) as info:
        check(smoke, methods=["semalign", "bogus"])
    assert "parameter methods has unknown value(s) ['bogus']" in str(info.value)
    with pytest.raises(InvalidParameterError, match=r"unknown value\(s\) \['gsm8k'\]"):
        check(smoke, tasks=["gsm8k"])
    with pytest.raises(InvalidParameterError, match="seeds"):
        check(smoke, seeds=[-1])
    with pytest.raises(InvalidParameterError, match="no field"):
        budgets.transfer_budget(smoke, n_trian=3)


def test_informative_tasks_are_chosen_once_and_shared():
    cpu, paper = get_profile("cpu"), get_profile("paper")
    assert budgets.informative_tasks(cpu) == ("sst2", "trec")
    # Table 2 runs every informative task of the profile, each with a made teacher
    assert transfer_table.check_parameters(cpu, setting="finetuned")[1] == ("sst2", "trec")
    for profile, tasks in budgets.INFORMATIVE_TASKS.items():
        made = {t for t, names in budgets.TEACHERS[profile].items() if FINETUNED in names}
        assert made == set(tasks), profile
    # paper: the published code setting (hub teachers) beside the informative one
    assert set(budgets.TEACHERS["paper"]) == {"sst2", "trec", "humaneval", "mbpp"}
    assert budgets.informative_tasks(paper) == ("sst2", "trec")
    # the multi-class task is scored like the binary one: label words, fixed held-out items
    cell = transfer_table.make_cell(cpu, "sft", "trec", 1, setting="finetuned")
    config = transfer_table.cell_config(cell)
    assert config["eval_task"] == "semalign_cls_trec" and config["eval"]["seed"] == 0
    assert (
        config["eval"]["split"] == "test" and config["transfer"]["train_split"] == "trec-pool/train"
    )


def test_default_seeds_match_what_make_reproduce_ran():
    """`seeds=None` in every notebook: the cells `make reproduce` ran before the budgets table."""
    expected = {
        "semalign_transfer": {"smoke": (0,), "cpu": (0,)},
        "semalign_finetuned_teacher": {"smoke": (0,), "cpu": (0, 1, 2)},
        "semalign_ablations": {"smoke": (0,), "cpu": (0,)},
        "salf_main": {"smoke": (0, 1), "cpu": (0, 1, 2)},
        "salf_cost_benefit": {"smoke": (0,), "cpu": (0,)},
    }
    for experiment, by_profile in expected.items():
        for profile, seeds in by_profile.items():
            assert budgets.default_seeds(experiment, profile) == seeds, (experiment, profile)
    assert budgets.default_seeds("salf_main", "cpu", first=4) == (4, 5, 6)


def test_every_budget_table_covers_every_profile():
    from semalign_core.profiles import PROFILE_PREFERENCE, PROFILES

    assert sorted(PROFILE_PREFERENCE) == sorted(PROFILES)
    for table in (
        budgets.TRANSFER_BUDGETS,
        budgets.CLS_BUDGETS,
        budgets.SEMALIGN_ANALYSIS_BUDGETS,
        budgets.SALF_ANALYSIS_EXAMPLES,
        budgets.SALF_DEFAULTS,
        budgets.TEACHERS,
        *budgets.DEFAULT_SEEDS.values(),
    ):
        assert set(table) == set(PROFILES)


def test_paper_profile_uses_the_published_per_task_budgets_of_tables_4_and_5():
    from semalign_core.report.published import published_spec

    paper = get_profile("paper")
    t4, t5 = (
        published_spec("semalign")["table4_alignment"],
        published_spec("semalign")["table5_training"],
    )
    for col, task in zip(t4["columns"], ("mmlu", "gsm", "humaneval", "mbpp")):
        i = t4["columns"].index(col)
        budget = budgets.transfer_budget(paper, task)
        assert budget.steps_per_stage == t4["rows"]["steps"][i]
        assert budget.n_extract == t4["rows"]["align size"][i]
        assert (
            budget.epochs == t5["rows"]["epochs"][i]
            and budget.n_train == t5["rows"]["train size"][i]
        )
        assert budget.method_config["sft"]["lr"] == t5["rows"]["learning rate"][i]
    cpu = get_profile("cpu")
    assert budgets.transfer_budget(cpu, "mbpp") == budgets.transfer_budget(cpu)
    table = semalign_tables.hyperparameter_table(paper)
    assert list(table.loc["training: train examples (T5 train size)"]) == [
        "1000",
        "1000",
        "1000",
        "300",
    ]


def test_two_training_seeds_are_scored_on_the_same_fixed_items(tmp_path, monkeypatch):
    """Seeds vary the training only: both seeds' records hold the same item ids, which are the
    untrained target's too (the subset comes from the budget's eval_seed, not the cell's seed)."""
    from semalign_core.experiments import cells

    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    runs = ["sft__mmlu__seed0", "sft__mmlu__seed1", "target__mmlu"]
    records = [cells.run_cell("semalign_transfer", run, "smoke") for run in runs]
    ids = [[item["doc_id"] for item in r["metrics"]["items"]] for r in records]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == records[0]["metrics"]["n"] == 4
    assert records[0]["config"]["eval"]["seed"] == records[1]["config"]["eval"]["seed"] == 0
