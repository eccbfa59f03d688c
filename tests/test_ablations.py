"""SemAlign ablations at smoke scale: every variant is a different config (hash) of a valid
SemAlignConfig, pairing variants really change the layer plan, variants with the default's plan
reuse its result, records are reused on rerun, the table and the figure are deterministic, and bad
parameters are one-line errors."""

from __future__ import annotations

import pytest

from semalign_core.errors import ArtifactError
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
    assert len({v.run(0) for v in variants}) == len(variants)


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


def test_pairing_variants_change_the_layer_plan(isolated):
    plans = {
        s: ablations.preview_plan(SMOKE, {"pairing": s}, 0)
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
    attributed = ablations.preview_plan(SMOKE, {}, 0)
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
    frame = ablation_report.table("smoke")
    assert frame.index[0] == ("default", "default") and ("pairing", "uniform") in frame.index
    assert "seeds [0] (fewer seeds than Table 2" in frame.attrs["caption"]
    first = [p.read_bytes() for p in ablation_report.ablation_figures(tmp_path / "a")]
    second = [p.read_bytes() for p in ablation_report.ablation_figures(tmp_path / "b")]
    assert first == second and first[1][:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in first[1] and b"| pairing | uniform |" in first[0]


@pytest.mark.parametrize(
    "axes, seeds, match",
    [
        (["pairing", "depth"], None, r"parameter axes has unknown value\(s\) \['depth'\]"),
        ("pairing", None, "non-empty list"),
        (None, [0, -1], "seeds"),
    ],
)
def test_invalid_parameters_are_one_line_errors(axes, seeds, match):
    with pytest.raises(ArtifactError, match=match) as info:
        ablations.check_parameters(SMOKE, 0, seeds, axes=axes)
    assert "\n" not in str(info.value)


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
