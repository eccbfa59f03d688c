"""SALF experiments (main table, cost–benefit sweeps) and their report: records written, reused and
forced; SALF's depth handed to the random control; saving fields; one-line parameter errors;
aggregation over seeds; byte-identical rendering. Tiny models, smoke budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semalign_core import salf
from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import salf_cells as ex
from semalign_core.experiments.catalog import SALF_COST_BENEFIT, SALF_MAIN
from semalign_core.experiments.model_pool import ModelPool
from semalign_core.experiments.salf_cost_benefit import run_cost_benefit, sweep_labels
from semalign_core.experiments.salf_main import check_parameters, run_main_table
from semalign_core.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")

PROF = get_profile("smoke")
MODEL, TASK = "tiny-source", "mpqa"
POLICIES = ["full", "salf", "freeze_1_2", "random_matched", "lora_salf_suffix"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results dir holding a small main table (2 seeds) and the depth sweep of seed 0."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMALIGN_RESULTS_DIR", str(root))
        pool = ModelPool(PROF)
        main = ex.SalfGrid(PROF, pool=pool, verbose=False).run_all(
            lambda _: POLICIES, [MODEL], [TASK], [0, 1]
        )
        cost = ex.SalfGrid(
            PROF, experiment=SALF_COST_BENEFIT, reuse_from=(SALF_MAIN,), pool=pool, verbose=False
        ).run_all(lambda s: sweep_labels(s)["depth"], [MODEL], [TASK], [0])
        yield root, main, cost


@pytest.fixture
def in_results(results, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(results[0]))
    return results


def by_policy(records, seed=0):
    return {r["config"]["policy"]: r for r in records if r["config"]["seed"] in (seed, None)}


def test_records_written_one_per_run(in_results):
    root, main, _ = in_results
    files = sorted(p.name for p in (root / SALF_MAIN / "smoke").glob("*.json"))
    assert len(files) == 1 + 2 * len(POLICIES)  # zero-shot once, then every policy per seed
    assert f"{MODEL}__{TASK}__zero_shot.json" in files
    assert f"{MODEL}__{TASK}__random_matched__seed1.json" in files
    rec = by_policy(main)["salf"]
    assert (
        rec["metrics"]["n"] == ex.run_budget(PROF).n_eval and 0 <= rec["metrics"]["accuracy"] <= 1
    )
    assert {"wall_s", "setup_s", "flops_analytic", "saving_analytic", "peak_rss_mb"} <= set(
        rec["cost"]
    )
    assert rec["config"]["spec"] == {
        "kind": "salf",
        "deviation": "cos_normed",
        "gain": "scaling_kaplan",
        "first_block": 2,
    }


def test_second_call_reuses_without_training(in_results, monkeypatch):
    _, main, _ = in_results

    def boom(*a, **k):
        raise AssertionError("reused records must not train or load a model")

    monkeypatch.setattr(salf, "run_finetune", boom)
    monkeypatch.setattr(ModelPool, "get", boom)
    again = run_main_table(PROF, [MODEL], [TASK], POLICIES, [0, 1], verbose=False)
    assert [r["config_hash"] for r in again] == [r["config_hash"] for r in main]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in main]


def test_cost_benefit_copies_identical_main_runs(in_results):
    _, main, cost = in_results
    got = by_policy(cost)
    for label in ("full", "salf", "freeze_1_2"):
        assert (
            got[label]["reused_from"] == f"{SALF_MAIN}/smoke/{MODEL}__{TASK}__{label}__seed0.json"
        )
        assert got[label]["metrics"] == by_policy(main)[label]["metrics"]
    fixed = [r for label, r in got.items() if label.startswith("eof_")]  # not in the main table
    assert fixed and all("reused_from" not in r for r in fixed)


def test_force_recomputes_each_run_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    calls = []
    real = salf.run_finetune

    def counting(model, tok, train, evaluation, policy, *a, **k):
        calls.append(policy.name)
        return real(model, tok, train, evaluation, policy, *a, **k)

    monkeypatch.setattr(salf, "run_finetune", counting)
    labels = ["full", "salf", "random_matched"]
    pool = ModelPool(PROF)
    grid = ex.SalfGrid(PROF, pool=pool, verbose=False)
    first = grid.run_all(lambda _: labels, [MODEL], [TASK], [0])
    grid.run_all(lambda _: labels, [MODEL], [TASK], [0])
    assert calls == labels  # the second grid reused all
    forced = ex.SalfGrid(PROF, force=True, pool=pool, verbose=False).run_all(
        lambda _: labels, [MODEL], [TASK], [0]
    )
    assert calls == labels * 2  # forced: each once (random_matched does not recompute SALF again)
    assert [r["config_hash"] for r in forced] == [r["config_hash"] for r in first]


def test_random_matched_gets_salf_depth(in_results):
    _, main, _ = in_results
    for seed in (0, 1):
        got = by_policy(main, seed)
        L, eof = got["salf"]["model_info"]["layers"], got["salf"]["policy"]["eof"]
        spec = got["random_matched"]["config"]["spec"]
        assert spec == {"kind": "random", "depth": L - eof, "seed": seed}
        assert len(got["random_matched"]["policy"]["blocks"]) == L - eof
        assert got["lora_salf_suffix"]["config"]["spec"]["eof"] == eof


def test_saving_fields_consistent(in_results):
    from semalign_core.report.salf import with_savings

    _, main, _ = in_results
    rows = {(r["policy"], r["seed"]): r for r in with_savings(main)}
    for seed in (0, 1):
        full = rows[("full", seed)]
        assert (
            full["saving_analytic"] == 0.0
            and full["saving_wall"] == 0.0
            and full["saving_memory"] == 0.0
        )
        half = by_policy(main, seed)["freeze_1_2"]["cost"]
        assert half["saving_analytic"] == pytest.approx(
            1 - half["flops_analytic"] / half["flops_full_analytic"]
        )
        assert 0 < half["saving_analytic"] < 2 / 3


def test_freeze_half_saves_a_third_with_equal_blocks(tmp_path, monkeypatch):
    """Blocks that dominate the cost (wide MLP, head negligible), one epoch (no cache reuse):
    freezing ½ of L equal blocks saves (2/3)·(1/2) of the analytic training FLOPs."""
    from semalign_core.models.registry import LoadedModel, load_tokenizer
    from semalign_core.models.tiny import tiny_model

    class WideBlocks(ModelPool):
        def get(self, name):
            if name not in self.loaded:
                model = tiny_model(
                    "llama",
                    seed=0,
                    num_layers=4,
                    hidden_size=64,
                    intermediate_size=4096,
                    vocab_size=49152,
                    num_heads=4,
                    num_kv_heads=2,
                )
                self.loaded[name] = LoadedModel(
                    model, load_tokenizer(MODEL), name, "tiny", {"layers": 4}
                )
            return self.loaded[name]

    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    grid = ex.SalfGrid(PROF, pool=WideBlocks(PROF), verbose=False)
    full = grid.run(MODEL, TASK, "full", 0)
    half = grid.run(MODEL, TASK, "freeze_1_2", 0)
    assert full["cost"]["saving_analytic"] == 0.0
    assert half["cost"]["saving_analytic"] == pytest.approx((2 / 3) * (1 / 2), abs=0.02)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_parameters(PROF, policies=["freeze_half"]), "unknown policy 'freeze_half'"),
        (lambda: check_parameters(PROF, policies="salf"), "must be None or a non-empty list"),
        (lambda: check_parameters(PROF, models=["gpt5"]), "unknown model(s) ['gpt5']"),
        (lambda: check_parameters(PROF, tasks=["imdb"]), "unknown task(s) ['imdb']"),
        (lambda: check_parameters(PROF, seeds=[-1]), "seeds=[-1]"),
        (lambda: check_parameters(PROF, salf_kw={"gain": "magic"}), "gain must be one of"),
        (lambda: check_parameters(PROF, salf_kw={"first_block": 0}), "first_block must be"),
        (lambda: ex.run_budget(PROF, n_train=0), "n_train=0 must be an integer >= 1"),
        (lambda: ex.run_budget(PROF, lr=-1.0), "lr=-1.0 must be a number > 0"),
        (lambda: ex.run_budget(PROF, steps=3), "SalfRunBudget has no field(s) steps"),
        (lambda: ex.task_data(TASK, 10**6, 8, 0), "n_train=1000000 exceeds"),
        (lambda: run_cost_benefit(PROF, groups=["speed"]), "unknown group(s) ['speed']"),
    ],
)
def test_invalid_parameters_one_line(call, message):
    with pytest.raises(InvalidParameterError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_learning_rate_per_model_and_an_explicit_lr_for_every_model():
    cpu = get_profile("cpu")
    budget = ex.run_budget(cpu)
    assert budget.lr_for("smollm2-135m-instruct") == 1e-4 and budget.lr_for("gemma3-270m") == 3e-5
    spec = ex.policy_spec("lora_all")  # LoRA's lr is 5x the model's
    assert ex.finetune_config(budget, "gemma3-270m", 0, spec).lr == pytest.approx(1.5e-4)
    explicit = ex.run_budget(cpu, lr=2e-4)
    assert {explicit.lr_for(m) for m in ("smollm2-135m-instruct", "gemma3-270m")} == {2e-4}
    gemma = ex.run_config(cpu, "gemma3-270m", "sst2", "full", 0, ex.policy_spec("full"), budget)
    assert gemma["finetune"]["lr"] == 3e-5  # the rate is in the config: its hash covers it


def test_sst2_train_carved_disjoint_from_eval():
    train, evaluation, _, info = ex.task_data("sst2", 16, 32, 3)
    assert not {r["text"] for r in train} & {r["text"] for r in evaluation}
    assert info["eval_split"] == "dev" and "carved" in info["train_split"]
    again = ex.task_data("sst2", 16, 32, 4)[1]
    assert [r["text"] for r in again] == [
        r["text"] for r in evaluation
    ]  # eval subset is seed-independent


def _record(policy, seed, acc, wall, flops=1.0, rss=100.0):
    return {
        "config": {"model": "m", "task": "t", "policy": policy, "seed": seed},
        "metrics": {"accuracy": acc, "macro_f1": acc / 2, "n": 50},
        "model_info": {"layers": 4},
        "policy": {"eof": 2},
        "history": [{"blocks": [2, 3]}],
        "cost": {
            "wall_s": wall,
            "setup_s": 0.0,
            "flops_analytic": flops,
            "saving_analytic": 1 - flops,
            "peak_rss_mb": rss,
            "trainable_params": 1,
            "total_params": 4,
        },
    }


def test_aggregate_over_seeds():
    from semalign_core.report.salf import aggregate, cell, with_savings

    accs, walls = [0.6, 0.7, 0.8], [5.0, 4.0, 6.0]
    records = [_record("full", s, 0.5, 10.0) for s in range(3)]
    records += [_record("salf", s, a, w, flops=0.4) for s, a, w in zip(range(3), accs, walls)]
    rows = {r["policy"]: r for r in aggregate(with_savings(records))}
    mean, std, count = rows["salf"]["accuracy"]
    assert (mean, count) == (pytest.approx(np.mean(accs)), 3) and std == pytest.approx(
        np.std(accs, ddof=1)
    )
    assert rows["salf"]["saving_wall"][0] == pytest.approx(np.mean([1 - w / 10 for w in walls]))
    assert (
        rows["salf"]["seeds"] == [0, 1, 2]
        and rows["salf"]["n"] == [50]
        and rows["salf"]["runs"] == 3
    )
    assert cell(rows["salf"]["accuracy"], 100, 1) == "70.0 ± 10.0"
    assert cell(rows["full"]["saving_wall"], 100, 1) == "0.0 ± 0.0"
    assert (
        cell((0.5, float("nan"), 1), 100, 1) == "50.0"
        and cell((float("nan"), float("nan"), 0)) == "–"
    )
    assert list(rows) == ["full", "salf"]  # table order: MAIN_POLICIES


def test_render_functions_identical_bytes(in_results, tmp_path):
    from semalign_core.report import salf as salf_report

    text = salf_report.salf_main_table_markdown()
    assert text == salf_report.salf_main_table_markdown()
    assert "profile `smoke`" in text and "ours" in text and "n = 8" in text
    assert "cost savings of up to 62%" in text  # the stored published claim, labelled as such
    first = salf_report.salf_cost_benefit_figures(tmp_path / "a")
    second = salf_report.salf_cost_benefit_figures(tmp_path / "b")
    assert [p.name for p in first] == [
        "salf_cost_benefit_depth.png",
        "salf_cost_benefit_costs.png",
        "salf_cost_benefit_ablations.png",
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert salf_report.salf_main_table(tmp_path / "a")[0].read_text() == text


def test_nothing_to_render_without_records(tmp_path, monkeypatch):
    from semalign_core.report import salf as salf_report

    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    assert salf_report.salf_main_table_markdown() is None
    assert (
        salf_report.salf_main_table(tmp_path) == []
        and salf_report.salf_cost_benefit_figures(tmp_path) == []
    )


def test_sweep_labels_follow_salf():
    rec = {
        "model_info": {"layers": 30, "flops_fraction_of_eof": list(np.linspace(0.9, 0.34, 31))},
        "policy": {"eof": 22},
    }
    labels = sweep_labels(rec)
    assert labels["depth"] == [
        "full_embeddings",
        "full",
        "freeze_1_4",
        "freeze_1_2",
        "freeze_3_4",
        "eof_26",
        "eof_29",
        "salf",
    ]
    assert labels["budget"][:2] == ["salf_max1", "salf_max4"] and labels["budget"][2].startswith(
        "salf_flops"
    )
    assert json.dumps(ex.policy_spec("salf_flops45")) == json.dumps(
        {
            "kind": "salf",
            "deviation": "cos_normed",
            "gain": "scaling_kaplan",
            "first_block": 2,
            "budget": {"flops_fraction": 0.45},
        }
    )


def test_timing_plan_interleaves_every_policy_and_repeat_in_a_seeded_order():
    from semalign_core.experiments import budgets, salf_cost_benefit

    cpu = get_profile("cpu")
    plan = salf_cost_benefit.timing_plan(cpu, ["m"], ["t"], seed=0)
    timing = budgets.TIMING["cpu"]
    expected = {("m", "t", p, 0, r) for p in timing["policies"] for r in range(timing["repeats"])}
    assert timing["repeats"] >= 3 and len(plan) == len(expected) and set(plan) == expected
    assert plan == salf_cost_benefit.timing_plan(cpu, ["m"], ["t"], seed=0)  # seeded
    first = [label for _, _, label, _, _ in plan[: len(timing["policies"])]]
    assert first != list(timing["policies"])  # not in table order
    names = [ex.run_name(*run) for run in plan]
    assert len(set(names)) == len(names) and all(
        n.endswith(("rep0", "rep1", "rep2")) for n in names
    )


def test_timing_plan_runs_salf_before_the_policies_that_read_its_eof():
    from semalign_core.experiments import salf_cost_benefit
    from semalign_core.experiments.salf_cells import NEEDS_SALF

    plan = salf_cost_benefit.timing_plan(get_profile("cpu"), ["m"], ["t"], seed=0)
    position = {run: i for i, run in enumerate(plan)}
    dependent = [run for run in plan if run[2] in NEEDS_SALF]
    assert dependent  # every main-table policy is timed, these two included
    for m, t, _, s, r in dependent:
        assert position[(m, t, "salf", s, r)] < position[(m, t, _, s, r)]
    # a hand-made order: the dependent run moves to just after its own SALF run, nothing else moves
    order = [
        ("m", "t", "lisa", 0, 0),
        ("m", "t", "random_matched", 0, 1),
        ("m", "t", "salf", 0, 0),
        ("m", "t", "salf", 0, 1),
        ("m", "t", "full", 0, 1),
    ]
    assert salf_cost_benefit._after_salf(order) == [
        order[0],
        order[2],
        order[3],
        order[1],
        order[4],
    ]


def test_timing_repeats_refuse_a_policy_outside_the_timing_set():
    from semalign_core.experiments import cells

    with pytest.raises(InvalidParameterError, match="timing policies"):
        cells.run_timing_repeats("smoke", policies=["lisa"])


def test_overridden_settings_name_what_differs_from_the_defaults():

    assert ex.overridden_settings(None, models=None, lr=None) == []
    assert ex.overridden_settings(dict(ex.SALF_OPTIONS), epochs=None) == []
    assert ex.overridden_settings({"gain": "drop"}, lr=1e-3, tasks=None) == [
        "lr",
        "salf_kw",
    ]


def test_a_timing_repeat_runs_the_warm_up_before_its_policy_and_off_its_clocks(monkeypatch):
    """A timing repeat first runs block influence's analysis pass (its decision discarded),
    then the policy's own set-up; the warm-up's seconds are neither set-up nor training time,
    and it changes nothing the training computes. A scored run has no warm-up. The update is
    timed apart and counts the parameters it touched: every trainable one at every step."""
    order = []
    real = ex.build_policy

    def traced(label, spec, model, max_length):
        policy = real(label, spec, model, max_length)
        setup = policy.setup

        def record(ctx):
            order.append((label, spec["kind"]))
            return setup(ctx)

        policy.setup = record
        return policy

    monkeypatch.setattr(ex, "build_policy", traced)
    budget = ex.run_budget(PROF)
    train, _, _, _ = ex.task_data(TASK, budget.n_train, budget.n_eval, 0)
    spec = ex.policy_spec("full")
    config = ex.finetune_config(budget, MODEL, 0, spec)
    pool = ModelPool(PROF)
    runs = {}
    for warm_up in (False, True):
        order.clear()
        net, tokenizer = pool.fresh(MODEL)
        runs[warm_up] = ex._finetuned(
            "full", spec, net, tokenizer, train, None, TASK, config, warm_up
        )
        assert order == ([("warm_up", "block_influence")] if warm_up else []) + [("full", "full")]
    (_, cold, cold_extra), (_, warm, warm_extra) = runs[False], runs[True]
    assert cold["warm_up_s"] == 0.0 and warm["warm_up_s"] > 0
    assert warm["setup_s"] < warm["warm_up_s"]
    assert warm["call_s"] >= warm["warm_up_s"] + warm["setup_s"] + warm["wall_s"]
    assert warm_extra["losses"] == cold_extra["losses"]  # same training, bit for bit
    for cost in (cold, warm):
        assert 0 < cost["update_s"] < cost["wall_s"]
        assert cost["updated_params_steps"] == cost["steps"] * cost["trainable_params"]
    config_of = ex.run_config(PROF, MODEL, TASK, "full", 0, spec, budget, repeat=0)
    assert config_of["warm_up"] == ex.TIMING_WARM_UP
    assert "warm_up" not in ex.run_config(PROF, MODEL, TASK, "full", 0, spec, budget)
