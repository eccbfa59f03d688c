"""SALF's main table, timing repeats and cost–benefit figures, rebuilt from result records alone.

Records come from ``notebooks/06_salf_main_table`` (``results/salf_main/<profile>/``: one per
model × task × policy × seed, ``zero_shot`` once per model × task) and
``notebooks/07_salf_cost_benefit`` (``results/salf_cost_benefit/<profile>/`` sweeps, and
``results/salf_timing/<profile>/`` timing repeats: each run in its own process, not scored).

The main table (``salf_table_main.md``), per profile and model × task:

- a header with the setting, the evaluated items, the seeds, the majority-label rate of those
  items and the zero-shot score;
- one row per policy: accuracy with its 95 % interval over items × seeds
  (:func:`semalign_core.report.comparisons.score_interval`), the paired difference from ``full``
  and from ``zero_shot`` on the same items (:func:`~semalign_core.report.comparisons.compare`,
  marked only when its interval excludes 0), macro-F1, the one-label flag, the analytic saving
  (with SALF's analysis pass where a policy has one), the measured wall-time saving against
  ``full`` of the same seed, their ratio, training memory measured against analytic, and which
  other policy trained exactly the same run. ``full_embeddings`` (classic full fine-tuning) sits
  in a reference block below the like-for-like rows, whose reference is ``full`` (every block
  trained, embeddings and LM head frozen);
- SALF against matched depth (the nearest fixed fraction, ``random_matched``) and the eof
  decisions of every seed (SALF, each gain formula, bootstrap stability, the other signals,
  AutoFreeze);
- then, per profile, the timing repeats (:func:`timing_rows`).

Output is deterministic: fixed formats and orders, bootstrap seeds from
:data:`~semalign_core.report.comparisons.BOOTSTRAP_SEED`, PNGs through
:func:`semalign_core.report.plots.save_png` (no timestamps).

For ``make figures`` (``report.build_all``): :func:`salf_main_table` writes
``salf_table_main.md``; :func:`salf_cost_benefit_figures` writes
``salf_cost_benefit_{depth,costs,ablations}.png``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd

from semalign_core.data.classification import CLASSIFICATION_TASKS
from semalign_core.experiments.catalog import MAIN_POLICIES, ZERO_SHOT
from semalign_core.experiments.catalog import SALF_COST_BENEFIT as COST_EXPERIMENT
from semalign_core.experiments.catalog import SALF_MAIN as MAIN_EXPERIMENT
from semalign_core.experiments.catalog import SALF_TIMING as TIMING_EXPERIMENT
from semalign_core.report import comparisons, plots
from semalign_core.report.markdown import frame_markdown, markdown_table, save_markdown
from semalign_core.report.published import published_path, published_spec
from semalign_core.report.results import PROFILE_PREFERENCE, largest_profile, read_records
from semalign_core.report.semalign_tables import (
    ABOVE_TARGET,
    BELOW_TARGET,
    clip,
    interval_cell,
    points,
    seeds_cell,
)
from semalign_core.statistics import label_distribution, majority_rate, one_label_flag

ABLATION_ORDER = (
    "full",
    "salf",
    "salf_nocache",
    "salf_per_example_min",
    "salf_per_example_bucket",
    "lora_all",
    "lora_salf_suffix",
)
REFERENCE = "full"  # every saving and Δ is against this like-for-like run
SEPARATE_REFERENCES = ("full_embeddings",)  # shown below the like-for-like rows, not among them
FRACTIONS = {"freeze_1_4": 0.25, "freeze_1_2": 0.5, "freeze_3_4": 0.75}
FRACTION_NAMES = {"freeze_1_4": "¼L", "freeze_1_2": "½L", "freeze_3_4": "¾L"}
ABOVE, BELOW = ABOVE_TARGET, BELOW_TARGET  # the marks of the SemAlign tables and ablations
RATIO_TOLERANCE = 0.15  # measured/analytic saving ratios further than this from 1 are flagged
MIN_RATIO_SAVING = 0.01  # below 1 % analytic saving a ratio of savings means nothing
# Spec fields that only say how a policy *chooses* its blocks; the chosen blocks are in the
# record's history, so two runs that differ only in these trained the same thing. Fields not
# listed (LoRA's r and alpha, per-example eof, padding) change the training itself.
SELECTION_FIELDS = frozenset(
    {
        "kind",
        "gain",
        "deviation",
        "depth",
        "seed",
        "fraction",
        "eof",
        "eof_from",
        "decisions",
        "percentile",
        "budget",
        "embeddings",
        "interval",
        "n_active",
        "lr_scale",  # already in the finetune config's lr
        "cache_prefix",  # already in the finetune config
    }
)


# --------------------------------------------------------------------------- records → rows


def _saving(cost, reference) -> float:
    return float("nan") if not reference or cost is None else 1.0 - cost / reference


def predicted_time_saving(cost: dict, full: dict | None) -> float | None:
    """The saving of a run against ``full`` that a two-term time model predicts: training time =
    time of the counted FLOPs + time of the parameter updates, each term calibrated on ``full``'s
    own measured split (``wall_s`` − ``update_s``, and ``update_s``) and scaled by the run's share
    of ``full``'s analytic FLOPs and of the parameters its updates touched
    (``updated_params_steps``). The update (clipping, AdamW, zeroing gradients) is memory-bound:
    about 1 % of the FLOPs and 13–15 % of `full`'s time at `cpu`, so FLOPs alone under-predict
    the time saved by training fewer parameters. Approximations: the FLOP term also scales the
    loop's other overhead (batching, the prefix cache's reads), and the analytic FLOPs include
    the optimizer's own (about 1 %). None without the split (records made before it was kept)."""
    keys = ("wall_s", "update_s", "flops_analytic", "updated_params_steps")
    if full is None or any(cost.get(k) is None or full.get(k) is None for k in keys):
        return None
    if not full["flops_analytic"] or not full["updated_params_steps"] or not full["wall_s"]:
        return None
    compute = (full["wall_s"] - full["update_s"]) * cost["flops_analytic"] / full["flops_analytic"]
    update = full["update_s"] * cost["updated_params_steps"] / full["updated_params_steps"]
    return 1.0 - (compute + update) / full["wall_s"]


def _run_key(record: dict) -> tuple:
    """Model, task, seed and timing repeat: a run and the ``full`` run it is measured against."""
    cfg = record["config"]
    return cfg["model"], cfg["task"], cfg.get("seed"), cfg.get("repeat")


def _analytic_train_memory(cost: dict) -> float | None:
    """What the training loop adds on top of the weights (gradients, optimizer state,
    activations, prefix cache): the analytic counterpart of ``train_memory_mb``."""
    memory = cost.get("memory_analytic_mb")
    return None if not memory else memory["total"] - memory["weights"]


def with_savings(records: Sequence[dict]) -> list[dict]:
    """One row per record, with the measured savings against ``full`` of the same model, task,
    seed (and timing repeat): training-loop wall time, that plus the policy's set-up (SALF's
    analysis pass), peak memory, and the process peak of a timing repeat (NaN without a
    reference)."""
    full = {_run_key(r): r["cost"] for r in records if r["config"]["policy"] == REFERENCE}
    rows = []
    for r in records:
        c, ref = r.get("cost") or {}, full.get(_run_key(r))
        metrics = r.get("metrics") or {}
        row = {
            "model": r["config"]["model"],
            "task": r["config"]["task"],
            "policy": r["config"]["policy"],
            "seed": r["config"].get("seed"),
            "repeat": r["config"].get("repeat"),
            "accuracy": metrics.get("accuracy"),
            "macro_f1": metrics.get("macro_f1"),
            "n": metrics.get("n"),
            "layers": r.get("model_info", {}).get("layers"),
        }
        if "wall_s" in c:
            setup, ref_setup = c.get("setup_s", 0.0), (ref or {}).get("setup_s", 0.0)
            history = r.get("history") or [{}]
            components = c.get("flops_components") or {}
            analysis, bases = components.get("analysis", 0.0), components.get("bases_once", 0.0)
            # against the real `full` run (none: NaN): a per-example `bucket` run forms other
            # batches, so its own all-blocks count would be another reference
            full_flops = (ref or {}).get("flops_analytic")
            row.update(
                flops=c["flops_analytic"],
                saving_analytic=_saving(c["flops_analytic"], full_flops),
                saving_analytic_with_analysis=_saving(c["flops_analytic"] + analysis, full_flops),
                saving_analytic_with_bases=_saving(
                    c["flops_analytic"] + analysis + bases, full_flops
                ),
                analysis_flops=analysis,
                bases_flops=bases,
                wall_s=c["wall_s"],
                setup_s=setup,
                peak_rss_mb=c["peak_rss_mb"],
                train_memory_mb=c.get("train_memory_mb"),
                train_memory_analytic_mb=_analytic_train_memory(c),
                process_peak_rss_mb=c.get("process_peak_rss_mb"),
                loadavg=list(c.get("loadavg_1m") or []),
                trainable_fraction=c["trainable_params"] / c["total_params"],
                eof=r.get("policy", {}).get("eof"),
                trained_blocks=len(history[0].get("blocks", [])),
                saving_wall=_saving(c["wall_s"], ref and ref["wall_s"]),
                saving_predicted=predicted_time_saving(c, ref),
                saving_wall_setup=_saving(c["wall_s"] + setup, ref and ref["wall_s"] + ref_setup),
                saving_memory=_saving(c["peak_rss_mb"], ref and ref["peak_rss_mb"]),
                saving_process_peak=_saving(
                    c.get("process_peak_rss_mb"), ref and ref.get("process_peak_rss_mb")
                ),
            )
        rows.append(row)
    return rows


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std (ddof 1; NaN for a single value), count) of the finite values."""
    v = _finite(values)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan")), len(v)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)


FIELDS = (
    "accuracy",
    "macro_f1",
    "saving_analytic",
    "saving_wall",
    "saving_wall_setup",
    "saving_memory",
    "peak_rss_mb",
    "train_memory_mb",
    "train_memory_analytic_mb",
    "trainable_fraction",
    "eof",
    "trained_blocks",
    "flops",
    "wall_s",
)


def main_order(policy: str) -> tuple:
    """Table order: zero-shot, the main policies as listed, then the others by name."""
    order = (ZERO_SHOT, *MAIN_POLICIES)
    return (order.index(policy), "") if policy in order else (len(order), policy)


def row_order(policy: str) -> tuple:
    """The main and timing tables' order: like-for-like rows in :func:`main_order`, then the
    separate references (classic full fine-tuning)."""
    return (policy in SEPARATE_REFERENCES, main_order(policy))


def sweep_order(policy: str) -> tuple:
    """Cost–benefit order: zero-shot, full, full + embeddings, fixed eof (eof_<k> by k, then the
    fractions), SALF, SALF under budgets, then the ablations (cache, padding, LoRA)."""
    references = (ZERO_SHOT, REFERENCE, *SEPARATE_REFERENCES)
    if policy in references:
        return (0, references.index(policy), "")
    if policy.startswith("eof_") and policy[4:].isdigit():
        return (1, int(policy[4:]), "")
    if policy in FRACTIONS:
        return (2, FRACTIONS[policy], "")
    if policy == "salf":
        return (3, 0, "")
    if policy.startswith(("salf_max", "salf_frac", "salf_flops")):
        return (4, 0, policy)
    if policy in ABLATION_ORDER:
        return (5, ABLATION_ORDER.index(policy), "")
    return (6, 0, policy)


def aggregate(rows: Sequence[dict], order=main_order) -> list[dict]:
    """Rows grouped by (model, task, policy): per field (mean, std, count) over seeds, with
    ``runs``, ``seeds`` and ``n`` (held-out examples per run); sorted by model, task and
    ``order(policy)``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["task"], row["policy"]), []).append(row)
    out = []
    for model, task, policy in sorted(groups, key=lambda k: (k[0], k[1], order(k[2]))):
        members = groups[(model, task, policy)]
        agg = {
            "model": model,
            "task": task,
            "policy": policy,
            "runs": len(members),
            "seeds": sorted(m["seed"] for m in members if m["seed"] is not None),
            "n": sorted({m["n"] for m in members if m["n"] is not None}),
            "layers": members[0].get("layers"),
        }
        for field in FIELDS:
            agg[field] = mean_std([m.get(field) for m in members])
        out.append(agg)
    return out


COLUMNS = (  # (header, field, scale, decimals): the cost–benefit frame
    ("accuracy %", "accuracy", 100, 1),
    ("macro-F1 %", "macro_f1", 100, 1),
    ("analytic FLOPs saving %", "saving_analytic", 100, 1),
    ("wall saving %", "saving_wall", 100, 1),
    ("wall saving incl. set-up %", "saving_wall_setup", 100, 1),
    ("peak RSS MB", "peak_rss_mb", 1, 0),
    ("training memory MB", "train_memory_mb", 1, 1),
    ("analytic training memory MB", "train_memory_analytic_mb", 1, 1),
    ("trainable params %", "trainable_fraction", 100, 2),
    ("eof", "eof", 1, 1),
)


def cell(stat: tuple[float, float, int], scale: float = 1.0, decimals: int = 1) -> str:
    """ "mean ± std" (std over seeds), "mean" for one run, "–" for none."""
    mean, std, count = stat
    if not count:
        return "–"
    if count == 1 or not np.isfinite(std):
        return f"{scale * mean:.{decimals}f}"
    return f"{scale * mean:.{decimals}f} ± {scale * std:.{decimals}f}"


# --------------------------------------------------------------------------- cell helpers


def median_range(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the finite values; None when there are none."""
    v = _finite(values)
    if not len(v):
        return None
    return float(np.median(v)), float(v.min()), float(v.max())


def range_cell(values: Sequence[float | None], scale: float = 100.0, decimals: int = 1) -> str:
    """ "median (min…max)" of the finite values ("median" alone when they agree to the shown
    precision; "–" for none)."""
    found = median_range(values)
    if found is None:
        return "–"
    med, low, high = (f"{scale * x:.{decimals}f}" for x in found)
    return med if low == high else f"{med} ({low}…{high})"


def ratio(measured: float | None, analytic: float | None) -> float | None:
    """Measured over analytic saving; None when either is missing or the analytic saving is too
    small (|saving| < :data:`MIN_RATIO_SAVING`) for a ratio to mean anything."""
    if measured is None or analytic is None or not np.isfinite(measured):
        return None
    if not np.isfinite(analytic) or abs(analytic) < MIN_RATIO_SAVING:
        return None
    return measured / analytic


def ratio_flagged(value: float | None) -> bool:
    """Measured and analytic saving disagree by more than :data:`RATIO_TOLERANCE`."""
    return value is not None and abs(value - 1.0) > RATIO_TOLERANCE


def ratio_cell(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} ⚠" if ratio_flagged(value) else f"{value:.2f}"


def _mb(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _seeds_text(seeds: Sequence) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _by_seed(records: Sequence[dict]) -> list[dict]:
    """Records in seed order (a seedless record first)."""
    return sorted(records, key=lambda r: (r.get("seed") is not None, r.get("seed") or 0))


def _per_seed(values: Sequence) -> str:
    """One value when every seed agrees, else the values in seed order, comma separated."""
    texts = ["–" if v is None else str(v) for v in values]
    if len(set(texts)) <= 1:
        return texts[0] if texts else "–"
    return ", ".join(texts)


# --------------------------------------------------------------------------- scores


def _accuracy_cell(records: Sequence[dict]) -> str:
    """Mean % with its 95 % interval; without per-item data, mean ± std over seeds."""
    interval = comparisons.score_interval(records)
    if interval is not None:
        return interval_cell(interval)
    return seeds_cell(
        [r["metrics"]["accuracy"] for r in records], [r["metrics"]["n"] for r in records]
    )


def paired_cell(paired, fallback: float | None = None) -> str:
    """ "Δ [low, high]" in points, marked ▲/▼ only when the interval excludes 0; without a
    paired comparison, the difference of means alone (``fallback``, unmarked) or ""."""
    if paired is None:
        return "" if fallback is None else f"{100 * fallback:+.1f}"
    low, high = (points(clip(b, -1.0, 1.0)) for b in (paired.low, paired.high))
    text = f"{points(paired.difference)} [{low}, {high}]"
    if not paired.significant:
        return text
    return f"{text} {ABOVE if paired.difference > 0 else BELOW}"


def _mean_accuracy(records: Sequence[dict]) -> float:
    return float(np.mean([r["metrics"]["accuracy"] for r in records]))


def _delta(records: Sequence[dict], reference: Sequence[dict] | None) -> tuple[str, object]:
    """(cell, paired comparison or None) of ``records`` minus ``reference`` on the same items."""
    if not reference:
        return "", None
    paired = comparisons.compare(records, reference)
    if paired is not None:
        return paired_cell(paired), paired
    return paired_cell(None, _mean_accuracy(records) - _mean_accuracy(reference)), None


def _predictions(record: dict) -> list | None:
    """The predicted label of each evaluated item (a choice index for log-likelihood items)."""
    found = comparisons.items(record)
    if found is None:
        return None
    choices = comparisons.predicted_labels(record)
    if choices is not None:
        return choices
    predictions = [item.get("prediction") for item in found]
    return predictions if all(isinstance(p, Hashable) for p in predictions) else None


def one_label(records: Sequence[dict]) -> str:
    """The one-label flag of a row: "⚠ one label" when every seed gives one label ≥ 90 % of its
    predictions, "⚠ one label (k/S seeds)" when some do, "" otherwise or without items."""
    per_seed = [_predictions(r) for r in _by_seed(records)]
    if not per_seed or any(p is None or not p for p in per_seed):
        return ""
    flagged = sum(one_label_flag(p, comparisons.ONE_LABEL_SHARE) for p in per_seed)
    pooled = [label for p in per_seed for label in p]
    return comparisons.LabelSummary(label_distribution(pooled), flagged, len(per_seed)).flag


def _label_names(task: str) -> tuple:
    """The label words of a classification task (gold index i is word i); () otherwise."""
    return tuple(CLASSIFICATION_TASKS[task].label_words) if task in CLASSIFICATION_TASKS else ()


def majority(records: Sequence[dict], task: str) -> tuple[Hashable, float, int] | None:
    """(majority label, its share of the evaluated items' gold labels, n items); None without
    per-item data. Every policy is scored on the same items, so any record's gold will do."""
    gold = comparisons.gold_labels([r for r in records if comparisons.items(r) is not None])
    if not gold:
        return None
    names = _label_names(task)
    named = [comparisons.name(names, g) for g in gold]
    return label_distribution(named).top_label, majority_rate(named), len(named)


# --------------------------------------------------------------------------- same training


def training_signature(record: dict) -> str | None:
    """What determines a run's training, as JSON text: model, task, seed, data and finetune
    config, the trained blocks (and embeddings, head, trainable parameters) at every step of its
    history, and the spec fields that change training beyond the block choice (LoRA's rank,
    per-example eof). Two records with the same signature are the same training, whichever
    policy chose the blocks; None for a record that did not train."""
    cfg = record.get("config") or {}
    history = record.get("history")
    if not history or "finetune" not in cfg:
        return None
    spec = cfg.get("spec") or {}
    steps = [
        [h.get("step"), sorted(h.get("blocks", [])), h.get("embeddings"), h.get("head")]
        + [h.get("trainable_params")]
        for h in history
    ]
    return json.dumps(
        {
            "model": cfg.get("model"),
            "task": cfg.get("task"),
            "seed": record.get("seed", cfg.get("seed")),
            "data": cfg.get("data"),
            "finetune": cfg["finetune"],
            "numerics": [cfg.get("dtype"), cfg.get("device")],
            "lora": spec.get("kind") == "lora",
            "spec": {k: v for k, v in spec.items() if k not in SELECTION_FIELDS},
            "history": steps,
        },
        sort_keys=True,
    )


def same_runs(by_policy: dict[str, list[dict]]) -> dict[str, str]:
    """Per policy, the other policies that trained exactly the same run at some seed:
    "freeze_3_4" (at every seed of the row) or "freeze_3_4 (seed 0)"; absent when none."""
    owners: dict[str, list[tuple[str, object]]] = {}
    for policy, records in by_policy.items():
        for r in records:
            signature = training_signature(r)
            if signature is not None:
                owners.setdefault(signature, []).append((policy, r.get("seed")))
    out = {}
    for policy, records in by_policy.items():
        seeds = sorted(r.get("seed") for r in records if training_signature(r) is not None)
        shared: dict[str, list] = {}
        for r in records:
            signature = training_signature(r)
            for other, seed in owners.get(signature, []) if signature is not None else []:
                if other != policy:
                    shared.setdefault(other, []).append(seed)
        parts = [
            other if sorted(found) == seeds else f"{other} ({_seeds_text(sorted(found))})"
            for other, found in sorted(shared.items(), key=lambda kv: row_order(kv[0]))
        ]
        if parts:
            out[policy] = "; ".join(parts)
    return out


# --------------------------------------------------------------------------- main table rows


def _cells(records: Sequence[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(model, task) → policy → its records in seed order; keys sorted, policies in
    :func:`row_order`."""
    found: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in records:
        cfg = r["config"]
        found.setdefault((cfg["model"], cfg["task"]), {}).setdefault(cfg["policy"], []).append(r)
    return {
        key: {p: _by_seed(found[key][p]) for p in sorted(found[key], key=row_order)}
        for key in sorted(found)
    }


def _blocks_text(record: dict) -> str:
    """Trained blocks at the first step, "6→5" when the count changes during training (AutoFreeze),
    "2 (3 switches)" when the set changes at the same count (LISA); "LoRA" for adapters."""
    history = record.get("history") or []
    if not history:
        return "–"
    counts = [len(h.get("blocks", [])) for h in history]
    text = str(counts[0])
    if counts[-1] != counts[0]:
        text = f"{counts[0]}→{counts[-1]}"
    elif len(history) > 1:
        text += f" ({len(history) - 1} switches)"
    kind = (record.get("config", {}).get("spec") or {}).get("kind")
    return text + " LoRA" if kind == "lora" else text


def depth_cell(records: Sequence[dict]) -> str:
    """ "2 of 6 (eof 4)"; values per seed when they differ ("2, 1 of 6 (eof 4, 5)")."""
    layers = {r.get("model_info", {}).get("layers") for r in records} - {None}
    blocks = _per_seed([_blocks_text(r) for r in records])
    eofs = [(r.get("policy") or {}).get("eof") for r in records]
    text = f"{blocks} of {min(layers)}" if len(layers) == 1 else blocks
    return text if all(e is None for e in eofs) else f"{text} (eof {_per_seed(eofs)})"


def _analytic_cell(runs: Sequence[dict]) -> str:
    """Analytic saving %; for a policy with an analysis pass also the saving with it added."""
    text = range_cell([r.get("saving_analytic") for r in runs])
    if any(r.get("analysis_flops") for r in runs):
        with_analysis = range_cell([r.get("saving_analytic_with_analysis") for r in runs])
        text += f"; incl. analysis {with_analysis}"
    if any(r.get("bases_flops") for r in runs):  # the pseudo-inverse: once per model, cached
        with_bases = range_cell([r.get("saving_analytic_with_bases") for r in runs])
        text += f" ({with_bases} with the bases, a model's first run)"
    return text


def _median(values: Sequence[float | None]) -> float | None:
    found = median_range(values)
    return None if found is None else found[0]


def _memory_cell(runs: Sequence[dict]) -> str:
    """Analytic training memory (median over runs), in MB. The measured counterpart is read from
    the timing repeats only: in one process that has trained before, the allocator reuses freed
    memory, so a later run's peak above its start says nothing."""
    return _mb(_median([r.get("train_memory_analytic_mb") for r in runs]))


def _policy_row(policy: str, records: list[dict], context: dict) -> dict:
    """One main-table row: formatted cells, with the comparisons behind them."""
    runs = [context["runs"][id(r)] for r in records]
    vs_full, paired_full = ("", None) if policy == REFERENCE else _delta(records, context["full"])
    vs_zero, paired_zero = _delta(records, context["zero_shot"])
    measured = _median([r.get("saving_wall") for r in runs])
    analytic = _median([r.get("saving_analytic") for r in runs])
    value = ratio(measured, analytic)
    return {
        "policy": policy,
        "reference": policy in SEPARATE_REFERENCES,
        "records": records,
        "seeds": [r.get("seed") for r in records],
        "paired_full": paired_full,
        "paired_zero_shot": paired_zero,
        "ratio": value,
        "cells": {
            "trained blocks": depth_cell(records),
            "accuracy % [95% CI]": _accuracy_cell(records),
            f"Δ vs {REFERENCE}": vs_full,
            "Δ vs zero-shot": vs_zero,
            "macro-F1 %": cell(mean_std([r["metrics"].get("macro_f1") for r in records]), 100),
            "flag": one_label(records),
            "analytic saving %": _analytic_cell(runs),
            "wall saving %": range_cell([r.get("saving_wall") for r in runs]),
            "measured / analytic": ratio_cell(value),
            "analytic training MB": _memory_cell(runs),
            "same run as": context["same"].get(policy, ""),
            "runs": str(len(records)),
        },
    }


MAIN_HEADER = (
    "trained blocks",
    "accuracy % [95% CI]",
    f"Δ vs {REFERENCE}",
    "Δ vs zero-shot",
    "macro-F1 %",
    "flag",
    "analytic saving %",
    "wall saving %",
    "measured / analytic",
    "analytic training MB",
    "same run as",
    "runs",
)


def cell_rows(by_policy: dict[str, list[dict]]) -> list[dict]:
    """The rows of one model × task (every trained policy; zero-shot is in the header)."""
    records = [r for recs in by_policy.values() for r in recs]
    runs = dict(zip(map(id, records), with_savings(records)))  # each record's savings
    context = {
        "runs": runs,
        "full": by_policy.get(REFERENCE),
        "zero_shot": by_policy.get(ZERO_SHOT),
        "same": same_runs(by_policy),
    }
    return [
        _policy_row(policy, recs, context)
        for policy, recs in by_policy.items()
        if policy != ZERO_SHOT
    ]


def main_table_rows(profile: str, records: Sequence[dict] | None = None) -> list[dict]:
    """Rows of the main table at ``profile`` (from its records unless given): one per model ×
    task × trained policy, like-for-like rows first, then the separate references."""
    records = read_records(MAIN_EXPERIMENT, profile) if records is None else records
    return [
        {"model": model, "task": task, **row}
        for (model, task), by_policy in _cells(records).items()
        for row in cell_rows(by_policy)
    ]


def main_table_frame(profile: str, records: Sequence[dict] | None = None) -> pd.DataFrame:
    """The main table as a pandas DataFrame of formatted cells (for notebooks), indexed by model,
    task and policy; ``row`` says whether a policy is like for like or a separate reference."""
    rows = main_table_rows(profile, records)
    if not rows:
        return pd.DataFrame()
    data = [
        {
            "model": r["model"],
            "task": r["task"],
            "policy": r["policy"],
            "row": "reference" if r["reference"] else "like for like",
            **r["cells"],
        }
        for r in rows
    ]
    return pd.DataFrame(data).set_index(["model", "task", "policy"])


# --------------------------------------------------------------------------- SALF vs matched depth


def _eof(record: dict | None) -> int | None:
    return None if record is None else (record.get("policy") or {}).get("eof")


def _layers(record: dict) -> int | None:
    return record.get("model_info", {}).get("layers")


def _nearest_fraction(eof: int, fixed: dict[str, dict]) -> str | None:
    """The fixed fraction whose recorded eof is nearest SALF's (ties: the smaller fraction)."""
    found = [(abs(_eof(r) - eof), FRACTIONS[p], p) for p, r in fixed.items() if _eof(r) is not None]
    return min(found)[2] if found else None


def _at_seed(records: Sequence[dict] | None, seed) -> dict | None:
    return next((r for r in records or () if r.get("seed") == seed), None)


def matched_depth_rows(by_policy: dict[str, list[dict]]) -> list[dict]:
    """SALF minus the nearest fixed fraction (by eof, seeds grouped by which fraction and whether
    the eof is equal: "identical run") and minus ``random_matched`` (as many trained blocks),
    paired on the same items and seeds."""
    salf, full = by_policy.get("salf") or [], by_policy.get(REFERENCE) or []
    groups: dict[tuple[str, bool], list[dict]] = {}
    for r in salf:
        fixed = {p: _at_seed(by_policy.get(p), r.get("seed")) for p in FRACTIONS}
        nearest = _nearest_fraction(_eof(r), {p: x for p, x in fixed.items() if x is not None})
        if nearest is not None:
            identical = _eof(fixed[nearest]) == _eof(r)
            groups.setdefault((nearest, identical), []).append(r)
    rows = []
    for (other, identical), recs in sorted(
        groups.items(), key=lambda kv: (FRACTIONS[kv[0][0]], not kv[0][1])
    ):
        rows.append(_matched_row(other, recs, by_policy[other], identical, full))
    if by_policy.get("random_matched") and salf:
        rows.append(_matched_row("random_matched", salf, by_policy["random_matched"], False, full))
    return rows


def _matched_row(
    other: str, salf: list[dict], others: list[dict], identical: bool, full: list[dict]
) -> dict:
    seeds = {r.get("seed") for r in salf} & {r.get("seed") for r in others}
    salf = [r for r in salf if r.get("seed") in seeds]
    others = [r for r in others if r.get("seed") in seeds]
    paired = comparisons.compare(salf, others)
    fallback = _mean_accuracy(salf) - _mean_accuracy(others) if salf and others else None
    what = "as many trained blocks, random"
    if other in FRACTIONS:
        what = f"nearest fixed fraction ({FRACTION_NAMES[other]})"
    return {
        "comparison": f"salf − {other}",
        "what": what + (": identical run" if identical else ""),
        "seeds": sorted(seeds),
        "paired": paired,
        "identical": identical,
        "cells": {
            "eof (salf vs other)": f"{_per_seed([_eof(r) for r in salf])} vs "
            + _per_seed([_eof(r) for r in others]),
            "trained blocks (salf vs other)": f"{_per_seed([_blocks_text(r) for r in salf])} vs "
            + _per_seed([_blocks_text(r) for r in others]),
            "Δ accuracy (points) [95% CI]": paired_cell(paired, fallback),
            "analytic saving % (salf vs other)": f"{range_cell(_savings(salf, full))} vs "
            + range_cell(_savings(others, full)),
        },
    }


def _savings(records: Sequence[dict], full: Sequence[dict]) -> list[float | None]:
    """Each record's analytic saving against the ``full`` run of its seed (as the table's)."""
    rows = with_savings([*records, *full])[: len(records)]
    return [row.get("saving_analytic") for row in rows]


MATCHED_TEXT = (
    "With bottom-up freezing (SALF, the fixed fractions) a step's cost depends only on how many "
    "blocks train: nothing runs backward below the lowest trained block and a cached frozen "
    "prefix's forward is paid once, so matched trainable depth is matched cost, and SALF "
    "against a fixed fraction of the same eof is one and the same run. `random_matched` trains "
    "as many blocks, chosen at random: gradients still flow through every frozen block above "
    "its lowest trained one, so at the same depth it costs more (its analytic saving is shown). "
    "Δ = SALF minus the other on the same items and seeds, in points, with its paired 95% "
    "interval; marked only when that interval excludes 0."
)


def _matched_section(by_policy: dict[str, list[dict]]) -> str:
    rows = matched_depth_rows(by_policy)
    if not rows:
        return ""
    header = ["comparison", "which", "seeds", *rows[0]["cells"]]
    table = markdown_table(
        header,
        [
            [r["comparison"], r["what"], ", ".join(map(str, r["seeds"])), *r["cells"].values()]
            for r in rows
        ],
    )
    return f"\n### SALF against matched depth\n\n{MATCHED_TEXT}\n\n{table}"


# --------------------------------------------------------------------------- eof decisions


def _fraction_eofs(layers: int) -> dict[str, int]:
    """round(¼L), round(½L), round(¾L) as the fixed policies compute them (Python's round)."""
    return {FRACTION_NAMES[p]: int(round(f * layers)) for p, f in FRACTIONS.items()}


def _stability_text(policy: dict) -> str:
    found = policy.get("eof_stability")
    if not found:
        return "–"
    counts = ", ".join(
        f"{k}: {v}" for k, v in sorted(found["counts"].items(), key=lambda kv: int(kv[0]))
    )
    return f"{100 * found['share']:.1f}% of {found['resamples']} (eof {counts})"


def _autofreeze_text(record: dict | None) -> str:
    """AutoFreeze's freezing decisions (history entries after the first) and final depth."""
    history = (record or {}).get("policy", {}).get("history")
    if not history:
        return "–"
    decisions = len(history) - 1
    return f"{decisions} decision{'s' * (decisions != 1)}, final frozen depth {history[-1][1]}"


def _fraction_match(eof: int | None, layers: int | None) -> str:
    if eof is None or layers is None:
        return "–"
    eofs = _fraction_eofs(layers)
    hits = [name for name, value in eofs.items() if value == eof]
    if hits:
        return f"yes: {' = '.join(hits)}"
    return "no (" + ", ".join(f"{name} = {value}" for name, value in eofs.items()) + ")"


def eof_rows(by_policy: dict[str, list[dict]]) -> list[dict]:
    """Per seed: the eof SALF chose, the eof of each gain formula on the same analysis, SALF's
    bootstrap stability, the eof of logit_lens_ce and block_influence, AutoFreeze's decisions,
    and whether SALF's eof is one of the fixed fractions'."""
    signals = ("salf", "logit_lens_ce", "block_influence", "autofreeze")
    seeds = sorted({r.get("seed") for p in signals for r in by_policy.get(p, [])} - {None})
    formulas = sorted(
        {
            g
            for r in by_policy.get("salf", [])
            for g in (r.get("policy") or {}).get("eof_by_gain", {})
        }
    )
    rows = []
    for seed in seeds:
        salf = _at_seed(by_policy.get("salf"), seed)
        found = (salf or {}).get("policy") or {}
        any_record = next(r for p in signals if (r := _at_seed(by_policy.get(p), seed)) is not None)
        layers = _layers(any_record)
        row = {"seed": seed, "L": layers, "salf": _eof(salf), "gain": found.get("gain")}
        row["by_gain"] = {g: found.get("eof_by_gain", {}).get(g) for g in formulas}
        row["stability"] = _stability_text(found)
        row["logit_lens_ce"] = _eof(_at_seed(by_policy.get("logit_lens_ce"), seed))
        row["block_influence"] = _eof(_at_seed(by_policy.get("block_influence"), seed))
        row["autofreeze"] = _autofreeze_text(_at_seed(by_policy.get("autofreeze"), seed))
        row["fraction"] = _fraction_match(row["salf"], layers)
        rows.append(row)
    return rows


def _dash(value) -> str:
    return "–" if value is None else str(value)


def eof_frame(by_policy: dict[str, list[dict]]) -> pd.DataFrame:
    """:func:`eof_rows` as a DataFrame of formatted cells, indexed by seed."""
    rows = eof_rows(by_policy)
    if not rows:
        return pd.DataFrame()
    data = []
    for r in rows:
        gain = f" ({r['gain']})" if r["gain"] else ""
        data.append(
            {
                "seed": r["seed"],
                "L": _dash(r["L"]),
                f"SALF eof{gain}": _dash(r["salf"]),
                **{
                    f"eof by `{g}`" + (" (SALF's)" if g == r["gain"] else ""): _dash(e)
                    for g, e in r["by_gain"].items()
                },
                "SALF eof bootstrap stability": r["stability"],
                "logit_lens_ce eof": _dash(r["logit_lens_ce"]),
                "block_influence eof": _dash(r["block_influence"]),
                "AutoFreeze": r["autofreeze"],
                "SALF eof a fixed fraction?": r["fraction"],
            }
        )
    return pd.DataFrame(data).set_index("seed")


EOF_TEXT = (
    "eof = blocks frozen below the trained suffix. Per gain formula: the eof that formula picks "
    "on the same analysis (argmax gain). Stability: the share of bootstrap resamples of the "
    "analysis examples whose argmax is SALF's eof, with the eof counts. AutoFreeze: how many "
    "times it froze more blocks, and the depth frozen at the end. Fixed fraction: whether SALF's "
    "eof equals round(¼L), round(½L) or round(¾L) (then SALF trained what that fixed policy "
    "trains)."
)


def _eof_section(by_policy: dict[str, list[dict]]) -> str:
    frame = eof_frame(by_policy)
    if frame.empty:
        return ""
    return f"\n### eof decisions\n\n{EOF_TEXT}\n\n{frame_markdown(frame, ['seed'])}"


# --------------------------------------------------------------------------- timing repeats


def timing_rows(records: Sequence[dict]) -> list[dict]:
    """Per model × task × policy of timing repeats: repeats, measured wall time, the measured
    saving against ``full`` (computed per repeat index against ``full`` of the same repeat and
    seed; median, min, max), the analytic saving, their ratio (flagged past
    :data:`RATIO_TOLERANCE`), training memory measured against analytic, the process peak RSS
    and its saving likewise, and the range of the machine's load average around the runs."""
    groups: dict[tuple, list[dict]] = {}
    for row in with_savings(records):
        groups.setdefault((row["model"], row["task"], row["policy"]), []).append(row)
    out = []
    for model, task, policy in sorted(groups, key=lambda k: (k[0], k[1], row_order(k[2]))):
        runs = sorted(groups[(model, task, policy)], key=lambda r: (r["seed"], r["repeat"]))
        saving = median_range([r.get("saving_wall") for r in runs])
        analytic = _median([r.get("saving_analytic") for r in runs])
        value = ratio(None if saving is None else saving[0], analytic)
        predicted = _median([r.get("saving_predicted") for r in runs])
        versus_model = ratio(None if saving is None else saving[0], predicted)
        loads = [x for r in runs for x in r.get("loadavg", [])]
        out.append(
            {
                "model": model,
                "task": task,
                "policy": policy,
                "repeats": len(runs),
                "seeds": sorted({r["seed"] for r in runs}),
                "wall_s": median_range([r.get("wall_s") for r in runs]),
                "saving_wall": saving,
                "saving_wall_values": [r.get("saving_wall") for r in runs],
                "saving_analytic": analytic,
                "ratio": value,
                "ratio_flagged": ratio_flagged(value),
                "saving_predicted": predicted,
                "ratio_predicted": versus_model,
                "train_memory_mb": median_range([r.get("train_memory_mb") for r in runs]),
                "train_memory_analytic_mb": _median(
                    [r.get("train_memory_analytic_mb") for r in runs]
                ),
                "process_peak_rss_mb": median_range([r.get("process_peak_rss_mb") for r in runs]),
                "saving_process_peak": median_range([r.get("saving_process_peak") for r in runs]),
                "loadavg": (min(loads), max(loads)) if loads else None,
            }
        )
    return out


def _stat_cell(found: tuple[float, float, float] | None, fmt) -> str:
    """ "median (min…max)" of a (median, min, max), each written by ``fmt``."""
    if found is None:
        return "–"
    med, low, high = (fmt(x) for x in found)
    return med if low == high else f"{med} ({low}…{high})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def timing_frame(records: Sequence[dict]) -> pd.DataFrame:
    """:func:`timing_rows` as a DataFrame of formatted cells indexed by model, task and policy
    (an empty DataFrame for no records)."""
    rows = timing_rows(records)
    if not rows:
        return pd.DataFrame()
    data = [
        {
            "model": r["model"],
            "task": r["task"],
            "policy": r["policy"],
            "repeats": r["repeats"],
            "wall s": _stat_cell(r["wall_s"], lambda x: f"{x:.3g}"),
            "wall saving %": _stat_cell(r["saving_wall"], _pct),
            "analytic saving %": "–"
            if r["saving_analytic"] is None
            else _pct(r["saving_analytic"]),
            "measured / analytic": ratio_cell(r["ratio"]),
            "time-model saving %": "–"
            if r["saving_predicted"] is None
            else _pct(r["saving_predicted"]),
            "measured / time model": ratio_cell(r["ratio_predicted"]),
            "training MB measured / analytic": _stat_cell(r["train_memory_mb"], _mb)
            + f" / {_mb(r['train_memory_analytic_mb'])}",
            "process peak RSS MB": _stat_cell(r["process_peak_rss_mb"], _mb),
            "process peak saving %": _stat_cell(r["saving_process_peak"], _pct),
            "load avg (1 min)": "–"
            if r["loadavg"] is None
            else f"{r['loadavg'][0]:.2f}…{r['loadavg'][1]:.2f}",
        }
        for r in rows
    ]
    return pd.DataFrame(data).set_index(["model", "task", "policy"])


TIMING_TEXT = (
    "Each repeat is one training run in a fresh Python process (no memory or caches carried "
    "over), the policies interleaved in a seeded random order; not scored "
    "(`notebooks/07_salf_cost_benefit.ipynb`, `results/salf_timing/`). Before its policy's "
    "set-up, every repeat runs block influence's analysis pass untimed (records' "
    "`warm_up`), so every policy's timed training starts in a process that has run the same "
    "forward pass: without it `full` (no analysis of its own) trained ~10 % slower than after "
    "it, and the policies with an analysis pass looked that much cheaper (docs/decisions.md, "
    "SALF costs). Cells: median (min…max) "
    "over the repeats. Wall saving: 1 − wall / wall of `full` at the same repeat index (and "
    "seed), then the median of those per-repeat savings. Measured / analytic: median measured "
    "wall saving over the analytic FLOPs saving; ⚠ when it is more than "
    f"{100 * RATIO_TOLERANCE:.0f}% from 1 (– where the analytic saving is below "
    f"{100 * MIN_RATIO_SAVING:.0f}%). Time model: the saving predicted by FLOP time plus "
    "parameter-update time (clipping, AdamW, zeroing gradients: memory-bound, ~1 % of the FLOPs "
    "and 13–15 % of `full`'s time at `cpu`), both calibrated on `full`'s own measured split at the "
    "same repeat and scaled by the run's FLOPs and updated parameters "
    "(`report.salf.predicted_time_saving`); measured / time model ⚠ likewise. Training "
    "memory: the peak resident memory during the "
    "training loop minus the memory at its start, against the analytic gradients + optimizer "
    "state + activations + prefix cache; process peak RSS: the whole process's peak (model "
    "load included), its saving against `full` of the same repeat. Load avg: the machine's "
    "1-minute load average before and after the runs (timings need an idle machine)."
)


def _timing_section(profile: str, records: Sequence[dict]) -> str:
    frame = timing_frame(records)
    if frame.empty:
        return ""
    return (
        f"\n## Timing repeats (reproduced, ours): profile `{profile}`\n\n{TIMING_TEXT}\n\n"
        + frame_markdown(frame, ["model", "task", "policy"])
    )


# --------------------------------------------------------------------------- the page


def _setting(records: Sequence[dict]) -> str:
    """The training setting shared by a group's records (from the first non-zero-shot config)."""
    cfg = next((r["config"] for r in records if "finetune" in r["config"]), None)
    if cfg is None:
        return ""
    ft, data = cfg["finetune"], cfg["data"]
    # a timing repeat's config holds its thread count; a scored run's provenance does
    threads = {
        r["config"].get("threads") or r.get("provenance", {}).get("threads") for r in records
    }
    threads_text = "/".join(str(t) for t in sorted(threads - {None})) or "?"
    return (
        f"train {data['n_train']} examples × {ft['epochs']} epochs, batch {ft['batch_size']}, "
        f"AdamW lr {ft['lr']:g} (LoRA: its own lr, see the config), loss `{ft['loss']}`, "
        f"max length {ft['max_length']}, prefix cache {'on' if ft['cache_prefix'] else 'off'}, "
        f"{cfg['dtype']} on {cfg['device']}, {threads_text} torch thread(s) per process"
    )


def _header(by_policy: dict[str, list[dict]], task: str) -> str:
    """Setting, items, seeds, the majority-label rate of the items and the zero-shot score."""
    records = [r for recs in by_policy.values() for r in recs]
    seeds = sorted({r.get("seed") for r in records} - {None})
    ns = "/".join(str(n) for n in sorted({r["metrics"].get("n") for r in records} - {None}))
    parts = [
        f"Seeds {seeds}; n = {ns} evaluated items per run (the same items for every policy "
        "and seed)"
    ]
    found = majority(records, task)
    if found is not None:
        label, rate, n = found
        parts.append(
            f"majority-label rate of these items {100 * rate:.1f}% (`{label}`, n={n}): always "
            "answering it scores that"
        )
    zero = by_policy.get(ZERO_SHOT)
    if zero:
        flag = one_label(zero)
        parts.append(f"zero-shot {_accuracy_cell(zero)}" + (f" {flag}" if flag else ""))
    setting = _setting(records)
    if setting:
        parts.append(setting)
    return "; ".join(parts) + "."


def _table(rows: list[dict]) -> str:
    return markdown_table(
        ["policy", *MAIN_HEADER], [[r["policy"], *r["cells"].values()] for r in rows]
    )


def _cell_section(profile: str, model: str, task: str, by_policy: dict[str, list[dict]]) -> str:
    """One model × task: header, like-for-like table, reference block, matched depth, eofs."""
    rows = cell_rows(by_policy)
    note = (
        " (seeded random tiny models: the numbers only show that the pipeline runs)"
        if profile == "smoke"
        else ""
    )
    out = [
        f"\n## Reproduced (ours): profile `{profile}`, {model} on {task}{note}\n\n",
        _header(by_policy, task) + "\n\n",
    ]
    like = [r for r in rows if not r["reference"]]
    references = [r for r in rows if r["reference"]]
    if like:
        out.append(_table(like))
    if references:
        out.append(
            "\nReference, not like for like: classic full fine-tuning (embeddings and LM head "
            f"trained too); its Δ and savings are still against `{REFERENCE}`.\n\n"
        )
        out.append(_table(references))
    out.append(_matched_section(by_policy))
    out.append(_eof_section(by_policy))
    return "".join(out)


INTRO = (
    "# SALF main table: every freezing policy against like-for-like full fine-tuning "
    "(reproduced, ours)\n\n"
    "One run = one model × task × policy × seed (`notebooks/06_salf_main_table.ipynb`); "
    "`zero_shot` scores the untrained model once per model × task.\n"
)


def legend() -> str:
    """What the columns mean: the cost model, the reference, intervals and marks."""
    return (
        '\nColumns. Trained blocks: at the first step, of L ("6→5": AutoFreeze froze more '
        'during training; "switches": LISA resampled its blocks; LoRA: adapters on those '
        "blocks), eof = blocks frozen below the trained suffix; values per seed, in seed order, "
        "where seeds differ. Accuracy: mean % with its 95% interval over items × seeds "
        "(`semalign_core.statistics.score_interval`; one seed: bootstrap over items; several: "
        "items resampled plus a t term on the seed means; bounds within [0, 100]; "
        f"{comparisons.N_BOOT:,} replicates, bootstrap seed {comparisons.BOOTSTRAP_SEED}). "
        f"Δ vs `{REFERENCE}` / vs zero-shot: the row minus that run on the same items (matched "
        "by id, on the seeds both have; zero-shot pairs with every seed), in points, with its "
        f"paired 95% interval; {ABOVE}/{BELOW}: the interval lies entirely above/below 0. Only "
        "marked differences are claimed: an unmarked row is not shown to differ. Each "
        "comparison is at its own 95% level, without a correction for multiple comparisons "
        "(about 1 in 20 comparisons with no real difference is marked by chance); with one "
        "training seed a mark says that this trained model differs, not that the policy would "
        "with another seed. Macro-F1: mean ± sample std over seeds. "
        f"`⚠ one label`: one label gets ≥ {100 * comparisons.ONE_LABEL_SHARE:.0f}% of a run's "
        "predictions (whatever its accuracy). Savings: 1 − cost / cost of the reference, as "
        "median (min…max) over seeds. Measured wall saving: the training loop's wall time "
        f"against `{REFERENCE}` of the same seed (one process for all runs: see the timing "
        "repeats for runs in their own processes). Measured / analytic: the median measured "
        f"saving over the analytic one, ⚠ when more than {100 * RATIO_TOLERANCE:.0f}% from 1. "
        "Analytic training memory: gradients + optimizer state + activations + prefix cache "
        "(the weights are resident before training), in MB; it is measured in the timing "
        "repeats (a fresh process per run), not here, where the process reuses memory freed by "
        "earlier runs. Same run as: "
        "another policy of this model × task trained exactly the same blocks with the same "
        "seed, data and fine-tuning config (e.g. SALF choosing eof = round(¾L) is "
        "`freeze_3_4`'s run): one result, not two.\n\n"
        "Cost model (analytic FLOPs, `semalign_core.costs`, per processed token): a trained "
        "block 2n forward + 4n backward (activation and weight gradients, plus the attention "
        "terms); a frozen block above a trained one 2n + 2n (activation gradients only); "
        "nothing backward below the lowest trained block, and a cached frozen prefix's forward "
        "paid once; the LM head 2dV forward per scored position plus 2dV for the input "
        "gradient (+ 2dV weight gradient when trained); the embedding lookup 0; the optimizer "
        "16 FLOPs per trained parameter per step (AdamW). `incl. analysis` adds the policy's "
        "analysis pass (SALF and the other signal-based eofs: a forward over the analysis "
        "batches, and the logit lens's read-outs); the LM head's pseudo-inverse that the "
        "cosine deviations need is computed once per model and cached, so it is shown apart "
        "(`with the bases`: a model's first run). Reference of every saving and Δ: "
        f"`{REFERENCE}` = every block and the final norm trained, embeddings and LM head "
        "frozen, the real run of the same seed (a per-example `bucket` run forms other "
        "batches, so its own all-blocks count would be another reference); classic full "
        "fine-tuning (`full_embeddings`, embeddings and head trained too) is a separate "
        "reference row, whose saving is negative. For "
        "scale: freezing e of L equal blocks bottom-up saves ≈ (2/3)(e/L) of the block FLOPs "
        "(a derivation, not a published number).\n"
    )


def published_claims() -> list[str]:
    """The SALF claims stored in results/paper/salf_published.json (none when it is absent)."""
    if not published_path("salf").is_file():
        return []
    spec = published_spec("salf")
    return [f"“{c['claim']}” ({c.get('status', 'published')})" for c in spec.get("claims", [])]


def salf_main_table_markdown() -> str | None:
    """The reproduced main table of every profile with records (largest first), the timing
    repeats of every profile with them, then the published claims. None when there are neither
    main-table nor timing records."""
    sections = []
    for profile in PROFILE_PREFERENCE:
        for (model, task), by_policy in _cells(read_records(MAIN_EXPERIMENT, profile)).items():
            sections.append(_cell_section(profile, model, task, by_policy))
    for profile in PROFILE_PREFERENCE:
        sections.append(_timing_section(profile, read_records(TIMING_EXPERIMENT, profile)))
    if not any(sections):
        return None
    out = [INTRO, legend(), *sections]
    claims = published_claims()
    if claims:
        out.append(
            "\n## Published claims (SALF paper; no published numbers to set beside ours)\n\n"
        )
        out += [f"- {c}\n" for c in claims]
    return "".join(out)


def salf_main_table(out_dir: Path) -> list[Path]:
    """``salf_table_main.md`` from results/salf_main/ and results/salf_timing/ (nothing when
    there are no records)."""
    return save_markdown(salf_main_table_markdown(), Path(out_dir) / "salf_table_main.md")


# --------------------------------------------------------------------------- cost-benefit figures


def cost_benefit_rows(profile: str, records: Sequence[dict] | None = None) -> list[dict]:
    """Aggregated rows of the cost–benefit runs at ``profile`` (from its records unless given)."""
    records = read_records(COST_EXPERIMENT, profile) if records is None else records
    return aggregate(with_savings(records), order=sweep_order)


def frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Aggregated rows as a pandas DataFrame of formatted cells (for notebooks)."""
    data = [
        {
            "model": r["model"],
            "task": r["task"],
            "policy": r["policy"],
            **{h: cell(r[f], s, d) for h, f, s, d in COLUMNS},
            "trained blocks": cell(r["trained_blocks"], 1, 1),
            "runs": r["runs"],
            "n": "/".join(map(str, r["n"])),
        }
        for r in rows
    ]
    return pd.DataFrame(data).set_index(["model", "task", "policy"]) if data else pd.DataFrame()


def _kind(policy: str) -> str:
    if policy in (REFERENCE, "full_embeddings", "salf"):
        return policy
    if policy.startswith("eof_") or policy.startswith("freeze_"):
        return "fixed"
    if policy.startswith(("salf_max", "salf_frac", "salf_flops")):
        return "budget"
    return "other"


MARKERS = {
    "fixed": ("o", "#1f77b4", "fixed eof"),
    "salf": ("*", "#2ca02c", "SALF"),
    "full": ("s", "#d62728", "full (every block; embeddings/head frozen)"),
    "full_embeddings": ("P", "#9467bd", "full + embeddings/head (classic FT)"),
    "budget": ("^", "#ff7f0e", "SALF + budget"),
    "other": ("D", "#7f7f7f", "other"),
}
# Classic full FT first: it shares full's x (every block), so full's smaller square stays visible.
DEPTH_KINDS = ("full_embeddings", "fixed", "budget", "salf", "full")


def _errorbar(ax, rows, x_field, y_field, kind, scale=100.0, label=True, **kw):
    pts = [r for r in rows if _kind(r["policy"]) == kind and r[x_field][2] and r[y_field][2]]
    if not pts:
        return
    pts.sort(key=lambda r: r[x_field][0])
    marker, color, name = MARKERS[kind]
    x = [r[x_field][0] for r in pts]
    y = [scale * r[y_field][0] for r in pts]
    err = [scale * r[y_field][1] if np.isfinite(r[y_field][1]) else 0.0 for r in pts]
    ax.errorbar(
        x,
        y,
        yerr=err,
        marker=marker,
        color=color,
        markersize=8 if marker in ("*", "P") else 5,
        capsize=2,
        linestyle="-" if kind == "fixed" else "none",
        label=name if label else None,
        **kw,
    )


def _panel_title(rows: list[dict], profile: str) -> str:
    r = rows[0]
    seeds = sorted({s for x in rows for s in x["seeds"]})
    ns = "/".join(str(n) for n in sorted({n for x in rows for n in x["n"]}))
    return f"{r['model']} / {r['task']} (profile {profile}; seeds {seeds}; n={ns})"


def _groups(rows: list[dict]) -> list[list[dict]]:
    keys = sorted({(r["model"], r["task"]) for r in rows})
    return [[r for r in rows if (r["model"], r["task"]) == k] for k in keys]


def depth_figure(rows: list[dict], profile: str):
    """Score and savings against the number of trained blocks (fixed eof sweep, SALF, budgets,
    ``full``, and classic full fine-tuning as its own marker)."""
    groups = _groups([r for r in rows if _kind(r["policy"]) in DEPTH_KINDS])
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(11.0, 3.6 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 2, squeeze=False)
        for (left, right), part in zip(axes, groups):
            for kind in DEPTH_KINDS:
                _errorbar(left, part, "trained_blocks", "accuracy", kind)
                _errorbar(left, part, "trained_blocks", "macro_f1", kind, label=False, alpha=0.45)
                _errorbar(right, part, "trained_blocks", "saving_analytic", kind)
                _errorbar(
                    right, part, "trained_blocks", "saving_wall", kind, label=False, alpha=0.45
                )
            left.set_ylabel("score % (solid: accuracy, faded: macro-F1)", fontsize=8)
            right.set_ylabel(
                f"saving vs {REFERENCE} % (solid: analytic FLOPs, faded: wall)", fontsize=8
            )
            for ax in (left, right):
                ax.set_xlabel("trained blocks (L − eof)", fontsize=8)
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
                ax.set_title(_panel_title(part, profile), fontsize=8)
            left.legend(fontsize=7, loc="best")
        fig.suptitle(
            f"SALF cost–benefit (reproduced, ours, profile {profile}): score and saving against "
            "trainable depth",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


def _annotate(ax, rows, x_field, y_field, x_scale=1.0, y_scale=1.0):
    for r in rows:
        if r[x_field][2] and r[y_field][2]:
            x, y = x_scale * r[x_field][0], y_scale * r[y_field][0]
            marker, color, _ = MARKERS[_kind(r["policy"])]
            ax.plot([x], [y], marker=marker, color=color, linestyle="none", markersize=6)
            ax.annotate(r["policy"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")


def _timing_points(ax, trows: list[dict]) -> None:
    """Measured (median, min–max over repeats) against analytic saving of timing rows."""
    for r in trows:
        if r["saving_wall"] is None or r["saving_analytic"] is None:
            continue
        med, low, high = (100 * x for x in r["saving_wall"])
        x = 100 * r["saving_analytic"]
        marker, color, _ = MARKERS[_kind(r["policy"])]
        ax.errorbar(
            [x],
            [med],
            yerr=[[med - low], [high - med]],
            marker=marker,
            color=color,
            linestyle="none",
            markersize=6,
            capsize=2,
        )
        ax.annotate(r["policy"], (x, med), fontsize=6, xytext=(3, 3), textcoords="offset points")


def _saving_panel(ax, part: list[dict], trows: list[dict]) -> None:
    """Measured against analytic saving: the timing repeats when there are any, else the sweep
    runs (means over seeds)."""
    if trows:
        _timing_points(ax, trows)
        ends = [
            100 * v
            for r in trows
            if r["saving_wall"] is not None and r["saving_analytic"] is not None
            for v in (r["saving_analytic"], r["saving_wall"][1])
        ]
        source = f"timing repeats ({max(r['repeats'] for r in trows)} per policy, own processes)"
    else:
        _annotate(ax, part, "saving_analytic", "saving_wall", 100, 100)
        ends = [
            100 * v
            for r in part
            if r["saving_wall"][2]
            for v in (r["saving_analytic"][0], r["saving_wall"][0])
        ]
        source = "sweep runs"
    lo = min([0.0, *ends])
    ax.plot(
        [lo, 100],
        [lo, 100],
        color="0.6",
        linestyle="--",
        linewidth=0.8,
        label="measured = analytic",
    )
    ax.set_xlabel(f"analytic FLOPs saving vs {REFERENCE} %", fontsize=8)
    ax.set_ylabel(f"measured wall-time saving % ({source})", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")


def costs_figure(rows: list[dict], profile: str, timing: Sequence[dict] | None = None):
    """Analytic FLOPs against measured wall time and peak memory; analytic against measured
    saving, from the timing repeats (``timing``: their records; None: read the profile's) when
    there are any, else from the sweep runs."""
    timing = read_records(TIMING_EXPERIMENT, profile) if timing is None else timing
    trows = timing_rows(timing)
    groups = _groups([r for r in rows if r["flops"][2]])
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(15.0, 4.2 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 3, squeeze=False)
        for (a, b, c), part in zip(axes, groups):
            key = (part[0]["model"], part[0]["task"])
            _annotate(a, part, "flops", "wall_s", 1e-12)
            a.set_xlabel("analytic training FLOPs (×10¹²)", fontsize=8)
            a.set_ylabel("measured training wall time (s)", fontsize=8)
            _saving_panel(b, part, [r for r in trows if (r["model"], r["task"]) == key])
            _annotate(c, part, "flops", "peak_rss_mb", 1e-12)
            c.set_xlabel("analytic training FLOPs (×10¹²)", fontsize=8)
            c.set_ylabel("peak RSS during training (MB)", fontsize=8)
            for ax in (a, b, c):
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
                ax.set_title(_panel_title(part, profile), fontsize=8)
        fig.suptitle(
            f"SALF cost–benefit (reproduced, ours, profile {profile}): analytic FLOPs against "
            "measured time and memory",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


def ablation_figure(rows: list[dict], profile: str):
    """Bars: score and savings of the budget schemes, padding strategies, prefix cache and LoRA."""
    keep = [r for r in rows if r["policy"] in ABLATION_ORDER or _kind(r["policy"]) == "budget"]
    groups = _groups(keep)
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(
            12.0, max(3.0, 0.32 * max(len(g) for g in groups) + 1.2) * len(groups) + 0.6
        )
        axes = fig.subplots(len(groups), 2, squeeze=False)
        for (left, right), part in zip(axes, groups):
            part = sorted(
                part,
                key=lambda r: (
                    ABLATION_ORDER.index(r["policy"])
                    if r["policy"] in ABLATION_ORDER
                    else len(ABLATION_ORDER),
                    r["policy"],
                ),
            )
            y = np.arange(len(part))[::-1]
            labels = [
                f"{r['policy']} ({cell(r['trained_blocks'], 1, 0)}/{r['layers']} blocks)"
                for r in part
            ]
            for ax, fields, names in (
                (left, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")),
                (right, ("saving_analytic", "saving_wall"), ("analytic FLOPs", "wall time")),
            ):
                for i, (field, name) in enumerate(zip(fields, names)):
                    vals = [100 * r[field][0] if r[field][2] else 0.0 for r in part]
                    err = [100 * r[field][1] if r[field][2] > 1 else 0.0 for r in part]
                    ax.barh(
                        y + (0.2 if i == 0 else -0.2),
                        vals,
                        height=0.38,
                        xerr=err if any(err) else None,
                        label=name,
                        color=("#1f77b4", "#ff7f0e")[i],
                        capsize=2,
                    )
                ax.set_yticks(y)
                ax.set_yticklabels(labels, fontsize=7)
                ax.grid(axis="x", alpha=0.3)
                ax.tick_params(axis="x", labelsize=7)
                ax.legend(fontsize=7, loc="lower right")
                ax.set_title(_panel_title(part, profile), fontsize=8)
            left.set_xlabel("score %", fontsize=8)
            right.set_xlabel(f"saving vs {REFERENCE} %", fontsize=8)
        fig.suptitle(
            f"SALF ablations (reproduced, ours, profile {profile}): budget schemes, "
            "padding strategies (per-example eof), prefix cache, SALF + LoRA",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


def salf_cost_benefit_figures(out_dir: Path) -> list[Path]:
    """``salf_cost_benefit_{depth,costs,ablations}.png`` from the largest profile with
    results/salf_cost_benefit/ records (nothing when none has)."""
    profile = largest_profile(lambda p: read_records(COST_EXPERIMENT, p))
    if profile is None:
        return []
    rows = cost_benefit_rows(profile)
    out_dir = Path(out_dir)
    return [
        plots.save_png(draw(rows, profile), out_dir / f"salf_cost_benefit_{name}.png")
        for name, draw in (
            ("depth", depth_figure),
            ("costs", costs_figure),
            ("ablations", ablation_figure),
        )
    ]


__all__ = [
    "ablation_figure",
    "aggregate",
    "cell",
    "cell_rows",
    "cost_benefit_rows",
    "costs_figure",
    "depth_cell",
    "depth_figure",
    "eof_frame",
    "eof_rows",
    "frame",
    "legend",
    "main_table_frame",
    "main_table_rows",
    "majority",
    "matched_depth_rows",
    "mean_std",
    "median_range",
    "one_label",
    "paired_cell",
    "predicted_time_saving",
    "published_claims",
    "range_cell",
    "ratio",
    "ratio_cell",
    "ratio_flagged",
    "row_order",
    "salf_cost_benefit_figures",
    "salf_main_table",
    "salf_main_table_markdown",
    "same_runs",
    "timing_frame",
    "timing_rows",
    "training_signature",
    "with_savings",
]
