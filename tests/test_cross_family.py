"""The cross-family setting (issue 19, ``notebooks/05b``): which rows it trains and how, which it
copies from Table 2, where it exists, and that adding it left every committed transfer record's
config as it was."""

from __future__ import annotations

import glob
import json

import pytest

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import transfer_tables as tt
from semalign_core.experiments.budgets import CLS_BUDGETS
from semalign_core.experiments.catalog import CROSS_FAMILY_ROWS
from semalign_core.experiments.teachers import cross_family_recipe
from semalign_core.lm import surgery
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import get_profile
from semalign_core.records import config_hash

CPU, SMOKE = get_profile("cpu"), get_profile("smoke")
CROSS = "cross_family"


def test_cross_family_exists_where_both_families_run_offline():
    rows = tuple(r for r in CROSS_FAMILY_ROWS if r not in ("teacher", "target"))
    assert tt.check_parameters(CPU, setting=CROSS)[:2] == (rows, ("trec",))
    assert tt.check_parameters(SMOKE, setting=CROSS)[1] == ("sst2",)
    for name in ("gpu-small", "paper"):
        assert tt.check_parameters(get_profile(name), setting=CROSS)[1] == ()
        with pytest.raises(InvalidParameterError, match="no cross-family teacher"):
            cross_family_recipe(name, "trec")
    with pytest.raises(InvalidParameterError, match="unknown value"):
        tt.check_parameters(CPU, methods=["semalign"], setting=CROSS)
    with pytest.raises(InvalidParameterError, match="no cross-family teacher"):
        cross_family_recipe("cpu", "sst2")  # tried, not informative (budgets.CROSS_FAMILY_TASKS)


def test_the_teacher_is_gemma_fine_tuned_with_table2s_recipe():
    recipe = cross_family_recipe("cpu", "trec")
    same = tt.resolve_teacher("cpu", "trec")
    assert recipe.base == "gemma3-270m" and same.base == "smollm2-135m-instruct"
    assert {**vars(recipe), "base": None} == {**vars(same), "base": None}


@pytest.mark.parametrize(
    ("row", "method", "counterpart", "bridge"),
    [
        ("uld", "uld", "output_kl", None),
        ("bridged_kl", "bridged_kl", "output_kl", "projection"),
        ("semalign_cross_exact", "semalign_cross", "semalign", "exact"),
        ("semalign_cross_projection", "semalign_cross", "semalign", "projection"),
    ],
)
def test_cross_rows_train_with_their_same_family_counterparts_budget(
    row, method, counterpart, bridge
):
    cell = tt.make_cell(CPU, row, "trec", 1, setting=CROSS)
    same = tt.make_cell(CPU, counterpart, "trec", 1, setting="finetuned")
    kwargs, theirs = cell.method_kwargs(), same.method_kwargs()
    # the learning rate the budget gives the counterpart (3e-4 at cpu, not the method default)
    assert kwargs["lr"] == CLS_BUDGETS["cpu"].method_config[counterpart]["lr"] == 3e-4
    assert {k: kwargs[k] for k in theirs} == theirs  # every budget setting equal
    assert cell.across_vocabularies and cell.row.method == method
    assert kwargs.get("bridge") == bridge
    config = tt.cell_config(cell)
    assert config["transfer"].get("trained_by", row) == method  # named only where it differs
    assert config["teacher"]["base"] == "gemma3-270m"
    assert config["transfer"]["method_config"]["lr"] == 3e-4
    if bridge is not None:
        assert config["transfer"]["method_config"]["bridge"] == bridge


@pytest.mark.parametrize(
    ("row", "copied"), [("target", "target"), ("sft", "sft"), ("semalign_same_family", "semalign")]
)
def test_copied_rows_are_table2s_cells(row, copied):
    cell = tt.make_cell(CPU, row, "trec", 2, setting=CROSS)
    donor = tt.target_donor(cell)
    assert donor.setting.name == "finetuned" and donor.method == copied
    assert donor.teacher == "ft-source" and donor.seed == 2 and donor.budget == cell.budget
    assert donor.run == tt.run_name(copied, "trec", None if row == "target" else 2, "ft-source")


@pytest.mark.parametrize("row", ["target", "semalign_same_family"])  # untrained and trained
def test_a_copy_follows_its_donor(folders, monkeypatch, row):
    """A copied row holds its donor's metrics and config, names the donor's record, and is copied
    again once the donor holds other numbers (not before: a reused copy is the same record)."""
    cell = tt.make_cell(SMOKE, row, "sst2", 0, setting=CROSS)
    donor = tt.target_donor(cell)
    copy = tt.cell_record(cell)
    original = json.loads((folders[0] / f"{donor.setting.experiment}/smoke/{donor.run}.json")
                          .read_text())  # fmt: skip
    assert copy["metrics"] == original["metrics"] and copy["reused_from"].endswith(".json")
    assert copy["config"]["copy_of"] == f"semalign_finetuned_teacher/smoke/{donor.run}"
    assert copy["config"]["eval"] == original["config"]["eval"]
    assert tt.cell_record(cell)["provenance"] == copy["provenance"]  # reused as it is
    # the donor recomputed with other numbers (as a changed evaluation would give): copied again
    path = folders[0] / f"{donor.setting.experiment}/smoke/{donor.run}.json"
    changed = {**original, "metrics": {**original["metrics"], "value": 0.123}}
    path.write_text(json.dumps(changed))
    monkeypatch.setattr(tt, "cell_record", _trusting(tt.cell_record, donor, changed))
    again = tt.cell_record(cell)
    assert again["metrics"]["value"] == 0.123
    assert again["config"]["copy_of_metrics"] != copy["config"]["copy_of_metrics"]


def _trusting(real, donor, record):
    """``cell_record`` that returns ``record`` for ``donor`` (a stand-in for a donor recomputed
    with other numbers, whose stored hash the real reader would reject as edited)."""

    def cell_record(cell, force=False, measure=None):
        return record if cell == donor else real(cell, force, measure)

    return cell_record


def test_cross_family_refuses_another_teacher_and_a_custom_budget_for_its_copies():
    with pytest.raises(InvalidParameterError, match="its own teacher"):
        tt.make_cell(CPU, "uld", "trec", 0, setting=CROSS, teacher="ft-source")
    small = tt.transfer_budget(CPU, "trec", n_train=8)
    with pytest.raises(InvalidParameterError, match="custom budget applies to the trained rows"):
        tt.target_donor(tt.make_cell(CPU, "sft", "trec", 0, small, setting=CROSS))
    with pytest.raises(InvalidParameterError, match="no cross-family teacher for \\['sst2'\\]"):
        tt.check_parameters(CPU, tasks=["sst2"], setting=CROSS)
    with pytest.raises(InvalidParameterError, match="tasks with teachers: none"):
        tt.check_parameters(get_profile("paper"), tasks=["trec"], setting=CROSS)


def test_table2_rows_still_copy_nothing_but_a_second_teachers_target():
    assert tt.target_donor(tt.make_cell(CPU, "sft", "trec", 0, setting="finetuned")) is None
    assert tt.target_donor(tt.make_cell(CPU, "uld", "trec", 0, setting=CROSS)) is None


def test_every_committed_transfer_records_config_is_unchanged():
    """The committed Table 1 and Table 2 records stay valid: what the code computes for each of
    their cells hashes to the hash stored in the record."""
    checked = 0
    for setting in ("table1", "finetuned"):
        experiment = tt.get_setting(setting).experiment
        for profile in ("smoke", "cpu"):
            prof = get_profile(profile)
            for path in glob.glob(str(REPO_ROOT / "results" / experiment / profile / "*.json")):
                record = json.loads(open(path).read())
                seed = 0 if record["seed"] is None else record["seed"]
                cell = tt.make_cell(
                    prof, record["method"], record["task"], seed, setting=setting,
                    teacher=record.get("teacher"),
                )  # fmt: skip
                assert config_hash(tt.cell_config(cell)) == record["config_hash"], path
                checked += 1
    assert checked > 100


def test_a_cross_row_loads_the_teacher_with_its_own_vocabulary():
    """A same-family teacher is cut to the target's vocabulary; another family's is not (its
    rows are other tokens): the tiny Gemma-vocabulary teacher keeps all 262,144."""
    cell = tt.make_cell(SMOKE, "uld", "sst2", 0, setting=CROSS)
    source, target, _ = tt._load_models(cell)
    assert surgery.vocab_size(source.model) == 262144 == len(source.tokenizer)
    assert surgery.vocab_size(target.model) == 49152


def test_cross_family_notebook_at_smoke(smoke_reproduction):
    """Every row has a record; the copied rows carry Table 2's numbers on the same items; the
    table shows every row, compares the trained rows with ULD, and reports bridges and costs."""
    folder = smoke_reproduction.results / "semalign_cross_family" / "smoke"
    records = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert {r["method"] for r in records.values()} == set(CROSS_FAMILY_ROWS)
    for name, record in records.items():
        copy_of = record["config"].get("copy_of")
        if record["method"] in ("target", "sft", "semalign_same_family"):
            donor = json.loads((smoke_reproduction.results / f"{copy_of}.json").read_text())
            assert record["metrics"] == donor["metrics"], name
            assert record["reused_from"] == f"{copy_of}.json"
            assert record["config"]["copy_of_metrics"] == config_hash(donor["metrics"])
        else:
            assert copy_of is None and "reused_from" not in record
    bridge = records["ft-cross__semalign_cross_projection__sst2__seed0"]["cost"]["transfer"]
    assert bridge["bridge_mode"] == "projection" and 0.9 < bridge["aligned_share"] <= 1.0
    page = (smoke_reproduction.figures / "semalign_cross_family.md").read_text()
    for row in CROSS_FAMILY_ROWS:
        assert f"| {row} |" in page
    assert "| semalign_cross_exact | SST-2 | uld |" in page
    assert "| bridged_kl | sst2 | 1 |" in page  # the cost and bridge table


def test_cost_table_marks_flops_counted_over_every_training_batch(monkeypatch):
    """Records made before the source pass was counted over the batches it reads carry no
    ``source_pass_batches``: their SemAlign rows' FLOPs are marked and the mark explained;
    rows without a source pass (SFT, ULD, bridged KL) never are."""
    from semalign_core.report import cross_family_table as cft

    costs = {
        "sft": {"flops": 1e9},
        "semalign_cross_exact": {"flops": 9e9, "flops_source_pass": 6e9},
        "semalign_same_family": {"flops": 5e9, "flops_source_pass": 2e9, "source_pass_batches": 4},
    }
    marked = {row: cft._flops(c["flops"], cft._overcounted(c)) for row, c in costs.items()}
    assert marked == {
        "sft": "1e+09",
        "semalign_cross_exact": "9e+09 ◊",
        "semalign_same_family": "5e+09",
    }
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(REPO_ROOT / "results"))  # read only
    rows = cft.cost_rows("cpu")  # the committed records: made before the change
    semalign = [r for r in rows if r[0].startswith("semalign")]
    assert semalign and all(r[4].endswith(cft.OVERCOUNT_MARK) for r in semalign)
    assert all(not r[4].endswith(cft.OVERCOUNT_MARK) for r in rows if r not in semalign)
