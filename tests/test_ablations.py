"""SemAlign ablations at smoke scale: every variant is a different config (hash) of a valid
SemAlignConfig, pairing variants really change the layer plan, variants with the default's plan
reuse its result, records are reused on rerun, the table and the figure are deterministic, and bad
parameters (an unknown or uninformative task included) are one-line errors.

The report's statistics are checked on synthetic records written into a temp results folder
(shaped like the real ones: ``metrics.items`` holds one ``{doc_id, gold, prediction, acc}`` per
item, the prediction one ``[loglikelihood, is_greedy]`` per label): one section per task, a
planted paired difference marked, identical predictions not, a constant predictor flagged, and the
majority-label rate of the items in place of a chance level."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from semalign_core.data.classification import CLASSIFICATION_TASKS
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments import ablations, budgets
from semalign_core.experiments import transfer_tables as transfer_table
from semalign_core.models import teachers as teacher_store
from semalign_core.profiles import get_profile
from semalign_core.records import config_hash
from semalign_core.report import ablations as ablation_report

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """Results and made teachers in temporary folders."""
    results, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("teachers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMALIGN_RESULTS_DIR", str(results))
        mp.setattr(teacher_store, "teacher_dir", lambda recipe: cache / recipe.cache_name())
        yield results


def test_variants_are_distinct_valid_configs():
    from semalign_core.transfer.registry import CONFIGS, make_config

    base = ablations.default_config(SMOKE)
    budget = budgets.transfer_budget(SMOKE, "sst2")
    overrides = budget.method_overrides("semalign", 0, CONFIGS["semalign"])
    assert base == make_config("semalign", None, **overrides)  # what Table 2's semalign cell trains
    variants = ablations.variants(SMOKE)
    assert variants[0].is_default and {v.axis for v in variants[1:]} == set(ablations.AXES)
    hashes = set()
    for v in variants:
        cfg = make_config("semalign", base, **v.overrides)  # a valid SemAlignConfig
        for name, value in v.overrides.items():
            assert getattr(cfg, name) == value != getattr(base, name)
        cell = transfer_table.make_cell(
            SMOKE, "semalign", "sst2", 0, setting="finetuned", method_config=v.overrides
        )
        hashes.add(config_hash(transfer_table.cell_config(cell)))
    assert len(hashes) == len(variants)
    assert [v.value for v in ablations.variants(SMOKE, ["frontier"])[1:]] == [
        str(2 * base.steps_per_stage)
    ]
    assert len({v.run(0, "sst2") for v in variants}) == len(variants)


def test_decomposition_variants_are_declared_and_labelled():
    found = ablations.variants(SMOKE, ["decomposition"])
    assert ablations.default_config(SMOKE).decomposition == "cosine"
    assert [(v.value, v.overrides) for v in found[1:]] == [
        ("dual", {"decomposition": "dual"}),
        ("gain_folded", {"decomposition": "gain_folded"}),
    ]
    assert ablations.check_parameters(SMOKE, axes=["decomposition"])[0] == ("decomposition",)
    labels = [ablation_report.variant_label(v.axis, v.value) for v in found[1:]]
    assert labels[0].startswith("dual: ") and labels[1].startswith("gain_folded: ")
    assert ablation_report.variant_label("pairing", "floor") == "floor"  # others: their value


@pytest.mark.slow  # four SemAlign runs: make test-scale (25 s)
def test_pairing_variants_change_the_layer_plan(isolated):
    plans = {
        s: ablations.preview_plan(SMOKE, {"pairing": s}, 0, "sst2")
        for s in ("floor", "uniform", "interpolate")
    }
    assert plans["floor"] == {
        "1": [[1, 1.0]],
        "2": [[3, 1.0]],
        "3": [[4, 1.0]],
        "4": [[6, 1.0]],
    }  # 6 -> 4 layers
    assert plans["uniform"] == {"1": [[2, 1.0]], "2": [[3, 1.0]], "3": [[5, 1.0]], "4": [[6, 1.0]]}
    assert plans["interpolate"]["1"] == [[1, 0.5], [2, 0.5]]
    attributed = ablations.preview_plan(SMOKE, {}, 0, "sst2")
    # one source layer per target layer, inside the floor windows (0,1], (1,3], (3,4], (4,6]
    assert attributed["1"] == [[1, 1.0]] and attributed["3"] == [[4, 1.0]]
    assert attributed["2"][0][0] in (2, 3) and attributed["4"][0][0] in (5, 6)


@pytest.fixture(scope="module")
def smoke_run(isolated):
    return ablations.run_ablations(SMOKE, ["pairing", "granularity", "strength"], verbose=False)


def test_records_and_plan_reuse(smoke_run, isolated):
    folder = isolated / ablations.EXPERIMENT / "smoke"
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names == sorted(
        f"{v.axis}-{v.value}__sst2__seed0.json"
        for v in ablations.variants(SMOKE, ["pairing", "granularity", "strength"])[1:]
    )
    by_value = {(r.get("ablation") or {}).get("value", r["method"]): r for r in smoke_run}
    default = by_value["semalign"]
    assert (
        default["experiment"] == "semalign_finetuned_teacher"
    )  # the default is Table 2's own cell
    assert by_value["teacher"]["method"] == "teacher" and by_value["target"]["method"] == "target"
    for value in ("floor", "uniform", "interpolate", "token", "example"):
        rec = by_value[value]
        same = rec["metrics"].get("same_plan", False)
        if same:  # not retrained: the default's numbers, and the default's plan
            assert (
                rec["metrics"]["value"] == default["metrics"]["value"]
                and rec["cost"]["transfer"] is None
            )
        else:
            assert rec["metrics"]["transfer"]["plan"] != default["metrics"]["transfer"]["plan"]
    assert not by_value["uniform"]["metrics"].get("same_plan")
    assert any(
        by_value[v]["metrics"].get("same_plan") for v in ("token", "example")
    )  # seeded smoke models
    assert by_value["0"]["config"]["transfer"]["method_config"]["layer_weight"] == 0.0


def test_rerun_reuses_records(smoke_run, isolated):
    folder = isolated / ablations.EXPERIMENT / "smoke"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    ablations.run_ablations(SMOKE, ["pairing", "granularity", "strength"], verbose=False)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == before


def test_table_and_figure_are_deterministic(smoke_run, tmp_path):
    assert ablation_report.tasks("smoke") == ["sst2"]  # smoke's one informative task
    frame = ablation_report.table("smoke", "sst2")
    assert frame.index[0] == ("default", "default") and ("pairing", "uniform") in frame.index
    assert "training seeds [0]" in frame.attrs["caption"]
    assert ", SST-2: fine-tuned teacher" in frame.attrs["caption"]
    first = [p.read_bytes() for p in ablation_report.ablation_figures(tmp_path / "a")]
    second = [p.read_bytes() for p in ablation_report.ablation_figures(tmp_path / "b")]
    assert first == second and first[1][:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in first[1] and b"| pairing | uniform |" in first[0]


@pytest.mark.parametrize(
    "axes, seeds, tasks, match",
    [
        (["pairing", "depth"], None, None, r"parameter axes has unknown value\(s\) \['depth'\]"),
        ("pairing", None, None, "non-empty list"),
        (None, [0, -1], None, "seeds"),
        (
            None,
            None,
            ["trec"],
            r"\['trec'\] not informative at profile 'smoke'.*choose from: sst2$",
        ),
        (None, None, ["sst2", "mmlu"], r"\['mmlu'\] not informative at profile 'smoke'"),
        (None, None, "sst2", "non-empty list"),
    ],
)
def test_invalid_parameters_are_one_line_errors(axes, seeds, tasks, match):
    with pytest.raises(ArtifactError, match=match) as info:
        ablations.check_parameters(SMOKE, 0, seeds, axes=axes, tasks=tasks)
    assert "\n" not in str(info.value)


def test_unknown_task_stops_before_any_work(monkeypatch):
    monkeypatch.setattr(transfer_table, "run_cell", pytest.fail)  # nothing may run
    with pytest.raises(InvalidParameterError, match="choose from: sst2, trec") as info:
        ablations.run_ablations(get_profile("cpu"), tasks=["mmlu"], verbose=False)
    assert "\n" not in str(info.value)
    # paper's ablations run on the informative tasks with a teacher made from its 13B source
    assert ablations.check_parameters(get_profile("paper"))[1] == ("sst2", "trec")
    monkeypatch.setitem(budgets.INFORMATIVE_TASKS, "paper", ())
    with pytest.raises(InvalidParameterError, match="no informative classification task") as info:
        ablations.check_parameters(get_profile("paper"))
    assert "\n" not in str(info.value)


def test_every_informative_task_is_run_and_names_its_records():
    cpu = get_profile("cpu")
    axes, tasks, seeds = ablations.check_parameters(cpu)
    assert tasks == budgets.informative_tasks(cpu) == ("sst2", "trec") and axes == tuple(
        ablations.AXES
    )
    assert ablations.check_parameters(cpu, tasks=["trec"])[1] == ("trec",)
    assert ablations.check_parameters(SMOKE)[1] == ("sst2",)
    variant = ablations.variants(cpu, ["strength"], "trec")[1]
    assert variant.run(3, "trec") == "strength-0__trec__seed3"
    assert variant.run(0, "sst2") == "strength-0__sst2__seed0"  # sst2 records keep their names
    assert ablations.default_config(cpu, task="trec") == ablations.default_config(cpu)


def test_notebook_at_smoke(smoke_reproduction):
    """notebooks/05 in the session's smoke run (every axis): a record per variant, the figure shown;
    bad axes: test_invalid_parameters_are_one_line_errors."""
    names = smoke_reproduction.records(ablations.EXPERIMENT)
    assert {"strength-0__sst2__seed0.json", "strength-2__sst2__seed0.json"} <= set(names)
    assert names == sorted(
        f"{v.axis}-{v.value}__sst2__seed0.json" for v in ablations.variants(SMOKE)[1:]
    )
    outputs = smoke_reproduction.outputs("05_semalign_ablations")
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_force_recomputes_the_default_once(smoke_run, monkeypatch):
    calls = []
    real = transfer_table.compute_cell

    def counting(cell):
        calls.append((cell.method, cell.method_config))
        return real(cell)

    monkeypatch.setattr(transfer_table, "compute_cell", counting)
    ablations.run_ablations(SMOKE, ["strength"], force=True, verbose=False)
    assert calls.count(("semalign", {})) == 1  # Table 2's semalign cell, once for all variants
    assert [c for c in calls if c[1]] == [
        ("semalign", {"layer_weight": 0.0}),
        ("semalign", {"layer_weight": 2.0}),
    ]  # retrained
    assert calls.count(("teacher", {})) == calls.count(("target", {})) == 1


# --------------------------------------------------------------------------- the report, synthetic

PROFILE = "cpu"  # both informative tasks
N = 80  # items per task
SST2_GOLD = [1] * 48 + [0] * 32  # 60% positive
TREC_GOLD = [i % 6 if i % 3 else 2 for i in range(N)]  # class 2 over-represented
DEFAULT_CONFIG = dataclasses.asdict(ablations.default_config(get_profile(PROFILE)))


@pytest.fixture
def results(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(folder))
    return folder


def _mc_items(task: str, gold: list[int], predicted: list[int]) -> list[dict]:
    """Items as the evaluation writes them: per-label log-likelihoods whose highest is the
    predicted label; acc 1 where it is the gold one."""
    n_labels = len(CLASSIFICATION_TASKS[task].label_words)
    return [
        {
            "doc_id": f"{task}/{i}",
            "gold": g,
            "prediction": [[-1.0 if c == p else -5.0 - c, c == p] for c in range(n_labels)],
            "acc": float(g == p),
        }
        for i, (g, p) in enumerate(zip(gold, predicted, strict=True))
    ]


def _write(folder, task, seed, gold, predicted=None, *, method="semalign", ablation=None):
    """One Table 2 record (``ablation`` None) or one ablation record ``(axis, value)``;
    ``predicted`` None: an old record without items (scored as the gold)."""
    items = _mc_items(task, gold, gold if predicted is None else predicted)
    value = sum(i["acc"] for i in items) / len(items)
    method_config = dict(DEFAULT_CONFIG, seed=seed)
    metrics = {
        "decoding": {"method": "loglikelihood"},
        "metric": "acc",
        "n": len(items),
        "value": value,
        **({} if predicted is None else {"items": items}),
    }
    record = {
        "config": {
            "eval": {"decoding": "loglikelihood", "limit": N, "split": "dev_subsample"},
            "source": "tiny-source",
            "target": "tiny-target",
            "task": task,
            "transfer": {"method_config": method_config, "n_train": 16},
        },
        "method": method,
        "metrics": metrics,
        "profile": PROFILE,
        "seed": seed,
        "setting": "finetuned",
        "task": task,
        "teacher": "ft-source",
    }
    if ablation is None:
        record["experiment"] = "semalign_finetuned_teacher"
        record["run"] = f"ft-source__{method}__{task}" + ("" if seed is None else f"__seed{seed}")
    else:
        axis, value = ablation
        record["ablation"] = {"axis": axis, "value": value}
        record["experiment"] = ablations.EXPERIMENT
        record["run"] = f"{axis}-{value}__{task}__seed{seed}"
    path = folder / record["experiment"] / PROFILE / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True))


def _half_right(gold: list[int], n_labels: int) -> list[int]:
    """Right on every other item, a wrong label on the others."""
    return [g if i % 2 == 0 else (g + 1) % n_labels for i, g in enumerate(gold)]


def _synthetic(folder, seeds=(0, 1)) -> None:
    """SST-2: the default right on half the items; objective v2 right on all (planted); pairing
    floor the default's predictions item for item; strength 0 always `positive`. TREC: the
    default and objective v1 (same predictions)."""
    for task, gold in (("sst2", SST2_GOLD), ("trec", TREC_GOLD)):
        n_labels = len(CLASSIFICATION_TASKS[task].label_words)
        default = _half_right(gold, n_labels)
        _write(folder, task, None, gold, gold, method="teacher")
        _write(folder, task, None, gold, [(g + 1) % n_labels for g in gold], method="target")
        for seed in seeds:
            _write(folder, task, seed, gold, default)
            if task == "sst2":
                _write(folder, task, seed, gold, gold, ablation=("objective", "v2"))
                _write(folder, task, seed, gold, default, ablation=("pairing", "floor"))
                _write(folder, task, seed, gold, [1] * N, ablation=("strength", "0"))
            else:
                _write(folder, task, seed, gold, default, ablation=("objective", "v1"))


def test_two_tasks_render_two_sections_and_panels(results):
    _synthetic(results)
    assert ablation_report.tasks(PROFILE) == ["sst2", "trec"]
    text = ablation_report.ablation_markdown()
    assert text.index("### SST-2") < text.index("### TREC")
    assert text.count("| axis | variant |") == 2
    sst2, trec = ablation_report.tables(PROFILE)
    assert list(sst2.columns)[0] == "SST-2 acc" and list(trec.columns)[0] == "TREC acc"
    assert list(trec.index) == [("default", "default"), ("objective", "v1")]
    fig = ablation_report.figure(PROFILE)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["SST-2", "TREC"]
    # the caption says what was run, from the records
    caption = sst2.attrs["caption"]
    for said in (
        "profile `cpu`, SST-2",
        "ft-source (base tiny-source) → target tiny-target",
        f"n={N} items per seed",
        "training seeds [0, 1]",
        "16 training examples",
        "objective acl, pairing attributed",
        "split dev_subsample",
    ):
        assert said in caption, said
    assert "*" not in caption.split("Table 2's SemAlign run: ")[1].split(")")[0]


def test_planted_difference_is_marked_with_an_interval_excluding_zero(results):
    _synthetic(results)
    frame = ablation_report.table(PROFILE, "sst2")
    delta = frame.loc[("objective", "v2"), "Δ vs default"]
    assert delta.startswith("+50.0 [") and delta.endswith(ablation_report.ABOVE)
    low, high = (float(x) for x in delta.split("[")[1].split("]")[0].split(", "))
    assert 0 < low < 50 < high
    cell = frame.loc[("objective", "v2"), "SST-2 acc"]
    assert cell.startswith("100.0 [") and cell.endswith(f"(n={N}, 2 seeds)")
    assert frame.loc[("objective", "v2"), "seeds"] == "0, 1"
    assert frame.loc[("default", "default"), "Δ vs default"] == ""
    assert "at its own 95% level" in frame.attrs["legend"]
    assert "without a correction for multiple comparisons" in frame.attrs["legend"]


def test_identical_predictions_are_not_marked(results):
    _synthetic(results)
    for task, row in (("sst2", ("pairing", "floor")), ("trec", ("objective", "v1"))):
        frame = ablation_report.table(PROFILE, task)
        assert frame.loc[row, "Δ vs default"] == "+0.0 [+0.0, +0.0]"


def test_constant_predictor_is_flagged(results):
    _synthetic(results)
    frame = ablation_report.table(PROFILE, "sst2")
    assert frame.loc[("strength", "0"), "flag"] == "⚠ one label"
    others = frame.drop(index=("strength", "0"))
    assert set(others["flag"]) == {""}
    assert "`⚠ one label`" in frame.attrs["legend"]


def test_majority_rate_is_the_gold_share_of_the_items(results):
    _synthetic(results)
    for task, gold in (("sst2", SST2_GOLD), ("trec", TREC_GOLD)):
        label, count = Counter(gold).most_common(1)[0]
        share = 100 * count / len(gold)  # by hand
        word = CLASSIFICATION_TASKS[task].label_words[label]
        frame = ablation_report.table(PROFILE, task)
        assert f"majority-label rate {share:.1f}% (gold `{word}`, n={N})" in frame.attrs["majority"]
        assert f"majority-label rate {share:.1f} (`{word}`" in frame.attrs["caption"]
        assert "chance" not in frame.attrs["caption"]
        assert ablation_report.majority(PROFILE, task).rate == pytest.approx(share)
    assert "majority-label rate 60.0" in ablation_report.table(PROFILE, "sst2").attrs["caption"]


def test_records_without_items_fall_back_to_mean_and_std(results):
    _write(results, "sst2", 0, SST2_GOLD, _half_right(SST2_GOLD, 2))
    _write(results, "sst2", 0, SST2_GOLD, None, ablation=("objective", "v2"))  # no items
    frame = ablation_report.table(PROFILE, "sst2")
    assert frame.loc[("objective", "v2"), "SST-2 acc"] == f"100.0 (n={N})"
    assert frame.loc[("objective", "v2"), "Δ vs default"] == "+50.0"  # no interval, no mark
    assert "no paired comparison" in frame.attrs["legend"]
