"""SALF's report (``semalign_core.report.salf``) on synthetic records built here: paired marks only
for real differences, the items' majority-label rate, the one-label flag, one training reported
as one run, timing savings paired by repeat, the measured/analytic flag, the eof table, and a
byte-identical page. Expected values are computed by hand, not with the module's helpers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from semalign_core.report import salf as salf_report

LAYERS = 4
# 40 items: 30 with gold 0, then 10 with gold 1 (majority-label rate 75 %)
GOLD = [0] * 30 + [1] * 10
FINETUNE = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "loss": "label_words", "max_length": 32}
FINETUNE |= {"cache_prefix": True, "seed": 0}


def _items(predictions):
    return [
        {"doc_id": i, "gold": g, "prediction": p, "accuracy": float(p == g)}
        for i, (g, p) in enumerate(zip(GOLD, predictions))
    ]


def _correct_first(k):
    """Right on the first k items, wrong on the rest (binary labels)."""
    return [g if i < k else 1 - g for i, g in enumerate(GOLD)]


def _record(policy, predictions, seed=0, blocks=(2, 3), spec=None, info=None, cost=None):
    """A main-table record as notebook 06 writes it (the fields the report reads)."""
    accuracy = sum(p == g for p, g in zip(predictions, GOLD)) / len(GOLD)
    trained = 10 * len(blocks)
    record = {
        "config": {
            "model": "m",
            "task": "t",
            "policy": policy,
            "seed": seed,
            "spec": spec or {"kind": "fixed"},
            "data": {"n_train": 8, "n_eval": len(GOLD)},
            "finetune": {**FINETUNE, "seed": seed},
            "dtype": "float32",
            "device": "cpu",
            "threads": 1,
        },
        "seed": seed,
        "metrics": {
            "accuracy": accuracy,
            "macro_f1": accuracy,
            "n": len(GOLD),
            "metric": "accuracy",
            "items": _items(predictions),
        },
        "model_info": {"layers": LAYERS},
        "policy": info if info is not None else {"eof": LAYERS - len(blocks)},
        "history": [{"step": 0, "blocks": list(blocks), "embeddings": False, "head": False}],
        "cost": {
            "wall_s": 10.0,
            "setup_s": 0.0,
            "flops_analytic": 1.0,
            "saving_analytic": 0.0,
            "peak_rss_mb": 100.0,
            "trainable_params": trained,
            "total_params": 100,
            **(cost or {}),
        },
    }
    record["history"][0]["trainable_params"] = trained
    return record


def _zero_shot(predictions):
    record = _record("zero_shot", predictions)
    record["seed"] = None
    record["config"] = {"model": "m", "task": "t", "policy": "zero_shot", "seed": None}
    record["cost"], record["history"], record["policy"] = {"eval_s": 1.0}, [], {}
    return record


SALF_INFO = {
    "eof": 3,
    "gain": "scaling_kaplan",
    "eof_by_gain": {"drop": 1, "scaling_kaplan": 3, "zhang_finetune": 2},
    "eof_stability": {
        "eof": 3,
        "share": 0.795,
        "resamples": 200,
        "counts": {"1": 10, "3": 159, "2": 31},
    },
}


def _main_records():
    every = (0, 1, 2, 3)
    classic = _record("full_embeddings", _correct_first(20), blocks=every, spec={"kind": "full"})
    classic["history"][0] |= {"embeddings": True, "head": True, "trainable_params": 100}
    return [
        _zero_shot([0] * len(GOLD)),  # always label 0: a constant predictor
        _record("full", _correct_first(20), blocks=every, spec={"kind": "full"}),
        _record("salf", GOLD, blocks=(3,), spec={"kind": "salf"}, info=SALF_INFO),
        _record("freeze_1_2", _correct_first(20), blocks=(2, 3), spec={"kind": "fixed"}),
        _record("freeze_3_4", GOLD, blocks=(3,), spec={"kind": "fixed", "fraction": 0.75}),
        _record("random_matched", _correct_first(30), blocks=(1,), spec={"kind": "random"}),
        _record("lisa", [0] * len(GOLD), blocks=(0, 2), spec={"kind": "lisa"}),
        # LoRA on every block: the same blocks as full but adapters, so not full's run
        _record("lora_all", _correct_first(25), blocks=every, spec={"kind": "lora", "r": 8}),
        classic,
    ]


@pytest.fixture(scope="module")
def rows():
    return {r["policy"]: r for r in salf_report.main_table_rows("smoke", _main_records())}


def test_planted_difference_is_marked_identical_predictions_are_not(rows):
    # salf right on all 40 items, full on the first 20: +50 points on the same items
    salf = rows["salf"]
    assert salf["paired_full"].difference == pytest.approx(0.5)
    assert salf["paired_full"].significant
    assert salf["cells"]["Δ vs full"].startswith("+50.0 [") and salf["cells"]["Δ vs full"].endswith(
        "▲"
    )
    # freeze_1_2 predicts exactly as full: difference 0, interval [0, 0], no mark
    same = rows["freeze_1_2"]
    assert same["paired_full"].difference == 0.0 and not same["paired_full"].significant
    assert same["cells"]["Δ vs full"] == "+0.0 [+0.0, +0.0]"
    # the reference itself has no Δ against itself
    assert rows["full"]["cells"]["Δ vs full"] == ""


def test_majority_rate_is_the_share_of_the_most_common_gold_label():
    label, rate, n = salf_report.majority(_main_records(), "t")
    assert (label, n) == (0, 40) and rate == pytest.approx(30 / 40)


def test_constant_predictor_is_flagged_one_label(rows):
    assert rows["lisa"]["cells"]["flag"] == "⚠ one label"  # 40 of 40 predictions are label 0
    assert rows["salf"]["cells"]["flag"] == ""  # 30 of 40: below the 90 % share
    assert rows["full"]["cells"]["flag"] == ""


def test_same_blocks_seed_and_config_are_one_run(rows):
    assert rows["salf"]["cells"]["same run as"] == "freeze_3_4"
    assert rows["freeze_3_4"]["cells"]["same run as"] == "salf"
    assert rows["random_matched"]["cells"]["same run as"] == ""
    # LoRA on the blocks full trains is another training
    assert "lora_all" not in rows["full"]["cells"]["same run as"]
    assert rows["lora_all"]["cells"]["same run as"] == ""
    # salf's eof equals freeze_3_4's: the matched-depth comparison says so
    matched = salf_report.matched_depth_rows(
        {p: [r for r in _main_records() if r["config"]["policy"] == p] for p in rows}
    )
    assert matched[0]["comparison"] == "salf − freeze_3_4" and matched[0]["identical"]
    assert "identical run" in matched[0]["what"]


def test_reference_rows_come_after_the_like_for_like_rows(rows):
    policies = list(rows)
    assert policies[-1] == "full_embeddings" and rows["full_embeddings"]["reference"]
    assert not any(rows[p]["reference"] for p in policies[:-1])


def _timing(policy, repeat, wall, analytic, process_peak, train_mb=5.0):
    return {
        "config": {"model": "m", "task": "t", "policy": policy, "seed": 0, "repeat": repeat},
        "seed": 0,
        "metrics": {},
        "model_info": {"layers": LAYERS},
        "policy": {},
        "history": [{"step": 0, "blocks": [3]}],
        "cost": {
            "wall_s": wall,
            "setup_s": 0.0,
            "flops_analytic": 1.0 - analytic,
            "saving_analytic": analytic,
            "peak_rss_mb": 100.0,
            "trainable_params": 1,
            "total_params": 4,
            "train_memory_mb": train_mb,
            "memory_analytic_mb": {"weights": 20.0, "total": 26.0},
            "process_peak_rss_mb": process_peak,
            "loadavg_1m": [0.1 + repeat / 10, 0.2],
        },
    }


def _timing_records():
    full_walls, salf_walls = [10.0, 20.0, 40.0], [6.0, 8.0, 36.0]
    records = [_timing("full", i, w, 0.0, 1000.0) for i, w in enumerate(full_walls)]
    records += [
        _timing("salf", i, w, 0.5, peak)
        for i, (w, peak) in enumerate(zip(salf_walls, [800.0, 900.0, 700.0]))
    ]
    records += [_timing("freeze_1_2", i, 0.7 * w, 0.32, 1000.0) for i, w in enumerate(full_walls)]
    return records[::-1]  # the report must pair by repeat index, not by order


def test_timing_saving_is_the_median_of_per_repeat_savings():
    rows = {r["policy"]: r for r in salf_report.timing_rows(_timing_records())}
    # per repeat: 1 − 6/10 = 0.4, 1 − 8/20 = 0.6, 1 − 36/40 = 0.1 → median 0.4, range 0.1…0.6
    # (pooled medians would give 1 − 8/20 = 0.6)
    med, low, high = rows["salf"]["saving_wall"]
    assert (med, low, high) == (pytest.approx(0.4), pytest.approx(0.1), pytest.approx(0.6))
    assert rows["salf"]["repeats"] == 3 and rows["salf"]["wall_s"] == (8.0, 6.0, 36.0)
    # process peak: 1 − 800/1000, 1 − 900/1000, 1 − 700/1000 → median 0.2
    assert rows["salf"]["saving_process_peak"][0] == pytest.approx(0.2)
    assert rows["salf"]["train_memory_analytic_mb"] == pytest.approx(6.0)
    assert rows["salf"]["loadavg"] == (pytest.approx(0.1), pytest.approx(0.3))
    frame = salf_report.timing_frame(_timing_records())
    assert frame.loc[("m", "t", "salf"), "wall saving %"] == "40.0 (10.0…60.0)"
    assert list(frame.index.get_level_values("policy")) == ["full", "salf", "freeze_1_2"]


def test_measured_over_analytic_off_by_more_than_15_percent_is_flagged():
    rows = {r["policy"]: r for r in salf_report.timing_rows(_timing_records())}
    # salf: 0.4 / 0.5 = 0.80 (20 % off); freeze_1_2: 0.3 / 0.32 = 0.9375 (6 % off)
    assert rows["salf"]["ratio"] == pytest.approx(0.8) and rows["salf"]["ratio_flagged"]
    assert rows["freeze_1_2"]["ratio"] == pytest.approx(0.9375)
    assert not rows["freeze_1_2"]["ratio_flagged"]
    assert rows["full"]["ratio"] is None  # no analytic saving to compare with
    frame = salf_report.timing_frame(_timing_records())
    assert frame.loc[("m", "t", "salf"), "measured / analytic"] == "0.80 ⚠"
    assert frame.loc[("m", "t", "freeze_1_2"), "measured / analytic"] == "0.94"


def test_timing_frame_is_empty_without_records():
    assert isinstance(salf_report.timing_frame([]), pd.DataFrame)
    assert salf_report.timing_frame([]).empty


def test_eof_table_shows_each_formula_and_the_stability_share():
    records = _main_records()
    autofreeze = _record("autofreeze", GOLD, blocks=(0, 1, 2, 3), spec={"kind": "autofreeze"})
    autofreeze["policy"] = {"history": [[0, 0], [5, 1], [9, 2]]}
    by_policy = {}
    for r in [*records, autofreeze]:
        by_policy.setdefault(r["config"]["policy"], []).append(r)
    frame = salf_report.eof_frame(by_policy)
    row = frame.loc[0]
    assert row["SALF eof (scaling_kaplan)"] == "3"
    assert row["eof by `drop`"] == "1" and row["eof by `zhang_finetune`"] == "2"
    assert row["eof by `scaling_kaplan` (SALF's)"] == "3"
    assert row["SALF eof bootstrap stability"].startswith("79.5% of 200")
    assert "3: 159" in row["SALF eof bootstrap stability"]
    assert row["AutoFreeze"] == "2 decisions, final frozen depth 2"
    assert row["SALF eof a fixed fraction?"] == "yes: ¾L"  # round(0.75 · 4) = 3


def test_page_is_deterministic_and_complete(tmp_path, monkeypatch):
    root = tmp_path / "results"
    for experiment, records in (
        ("salf_main", _main_records()),
        ("salf_timing", _timing_records()),
    ):
        folder = root / experiment / "smoke"
        folder.mkdir(parents=True)
        for i, r in enumerate(records):
            (folder / f"m__t__{r['config']['policy']}__{i}.json").write_text(json.dumps(r))
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(root))
    first = salf_report.salf_main_table(tmp_path / "a")
    second = salf_report.salf_main_table(tmp_path / "b")
    text = first[0].read_text()
    assert text == second[0].read_text()
    assert "majority-label rate of these items 75.0%" in text
    assert "zero-shot 75.0 [" in text and "⚠ one label" in text
    assert "### SALF against matched depth" in text and "### eof decisions" in text
    assert "## Timing repeats (reproduced, ours): profile `smoke`" in text
    assert "16 FLOPs per trained parameter" in text


def test_time_model_scales_fulls_measured_split_by_flops_and_updated_parameters():
    """`full` spent 8 s computing and 2 s updating; a run with 40 % of its FLOPs and a quarter of
    its updated parameters is predicted at 8·0.4 + 2·0.25 = 3.7 s: a 63 % saving, where FLOPs
    alone say 60 %."""
    full = {"wall_s": 10.0, "update_s": 2.0, "flops_analytic": 100.0, "updated_params_steps": 400}
    run = {"wall_s": 4.0, "update_s": 0.4, "flops_analytic": 40.0, "updated_params_steps": 100}
    assert salf_report.predicted_time_saving(run, full) == pytest.approx(1 - 3.7 / 10)
    assert salf_report.predicted_time_saving(full, full) == pytest.approx(0.0)
    older = {k: v for k, v in full.items() if k != "update_s"}  # made before the split was kept
    assert salf_report.predicted_time_saving(run, older) is None
    assert salf_report.predicted_time_saving(run, None) is None
    records = _timing_records()
    for r in records:
        r["cost"].update(update_s=0.2 * r["cost"]["wall_s"], updated_params_steps=1000)
        if r["config"]["policy"] == "salf":
            r["cost"]["updated_params_steps"] = 250
    rows = {r["policy"]: r for r in salf_report.timing_rows(records)}
    # salf: flops 0.5 of full's, updates 0.25 → 0.8·0.5 + 0.2·0.25 = 0.45 → saving 0.55
    assert rows["salf"]["saving_predicted"] == pytest.approx(0.55)
    assert rows["salf"]["ratio_predicted"] == pytest.approx(0.4 / 0.55)
    frame = salf_report.timing_frame(records)
    assert frame.loc[("m", "t", "salf"), "time-model saving %"] == "55.0"
