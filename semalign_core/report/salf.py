"""SALF's main table and cost–benefit figures, rebuilt from result records alone.

Records come from ``notebooks/06_salf_main_table`` (``results/salf_main/<profile>/``) and
``notebooks/07_salf_cost_benefit`` (``results/salf_cost_benefit/<profile>/``). Measured savings
are computed here, against the ``full`` run of the same model, task and seed; every number is
shown as mean ± sample std over seeds with the number of runs and the held-out n behind it.
Output is deterministic: fixed formats and orders, and PNGs through
:func:`semalign_core.report.plots.save_png` (no timestamps).

For ``make figures`` (``report.build_all``): :func:`salf_main_table` writes
``salf_table_main.md``; :func:`salf_cost_benefit_figures` writes
``salf_cost_benefit_{depth,costs,ablations}.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd

from semalign_core.experiments.catalog import MAIN_POLICIES, ZERO_SHOT
from semalign_core.experiments.catalog import SALF_COST_BENEFIT as COST_EXPERIMENT
from semalign_core.experiments.catalog import SALF_MAIN as MAIN_EXPERIMENT
from semalign_core.report import plots
from semalign_core.report.markdown import markdown_table, save_markdown
from semalign_core.report.published import published_path, published_spec
from semalign_core.report.results import PROFILE_PREFERENCE, largest_profile, read_records

ABLATION_ORDER = (
    "full",
    "salf",
    "salf_nocache",
    "salf_per_example_min",
    "salf_per_example_bucket",
    "lora_all",
    "lora_salf_suffix",
)


# --------------------------------------------------------------------------- records → rows


def _saving(cost, reference) -> float:
    return float("nan") if not reference else 1.0 - cost / reference


def with_savings(records: Sequence[dict]) -> list[dict]:
    """One row per record, with the measured savings against ``full`` of the same model, task and
    seed: training-loop wall time, that plus the policy's set-up (SALF's analysis pass), and peak
    memory (NaN without a reference)."""

    def key(r):
        return r["config"]["model"], r["config"]["task"], r["config"]["seed"]

    full = {key(r): r["cost"] for r in records if r["config"]["policy"] == "full"}
    rows = []
    for r in records:
        c, ref = r["cost"], full.get(key(r))
        row = {
            "model": r["config"]["model"],
            "task": r["config"]["task"],
            "policy": r["config"]["policy"],
            "seed": r["config"]["seed"],
            "accuracy": r["metrics"]["accuracy"],
            "macro_f1": r["metrics"]["macro_f1"],
            "n": r["metrics"]["n"],
            "layers": r.get("model_info", {}).get("layers"),
        }
        if "wall_s" in c:
            setup, ref_setup = c.get("setup_s", 0.0), (ref or {}).get("setup_s", 0.0)
            history = r.get("history") or [{}]
            row.update(
                flops=c["flops_analytic"],
                saving_analytic=c["saving_analytic"],
                wall_s=c["wall_s"],
                setup_s=setup,
                peak_rss_mb=c["peak_rss_mb"],
                trainable_fraction=c["trainable_params"] / c["total_params"],
                eof=r.get("policy", {}).get("eof"),
                trained_blocks=len(history[0].get("blocks", [])),
                saving_wall=_saving(c["wall_s"], ref and ref["wall_s"]),
                saving_wall_setup=_saving(c["wall_s"] + setup, ref and ref["wall_s"] + ref_setup),
                saving_memory=_saving(c["peak_rss_mb"], ref and ref["peak_rss_mb"]),
            )
        rows.append(row)
    return rows


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std (ddof 1; NaN for a single value), count) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan")), len(v)


FIELDS = (
    "accuracy",
    "macro_f1",
    "saving_analytic",
    "saving_wall",
    "saving_wall_setup",
    "saving_memory",
    "peak_rss_mb",
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


def sweep_order(policy: str) -> tuple:
    """Cost–benefit order: zero-shot, full, fixed eof (eof_<k> by k, then the fractions), SALF,
    SALF under budgets, then the ablations (cache, padding, LoRA)."""
    fixed = {"freeze_1_4": 0.25, "freeze_1_2": 0.5, "freeze_3_4": 0.75}
    if policy in (ZERO_SHOT, "full"):
        return (0, (ZERO_SHOT, "full").index(policy), "")
    if policy.startswith("eof_") and policy[4:].isdigit():
        return (1, int(policy[4:]), "")
    if policy in fixed:
        return (2, fixed[policy], "")
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
            "n": sorted({m["n"] for m in members}),
            "layers": members[0].get("layers"),
        }
        for field in FIELDS:
            agg[field] = mean_std([m.get(field) for m in members])
        out.append(agg)
    return out


# --------------------------------------------------------------------------- main table


COLUMNS = (  # (header, field, scale, decimals)
    ("accuracy %", "accuracy", 100, 1),
    ("macro-F1 %", "macro_f1", 100, 1),
    ("analytic FLOPs saving %", "saving_analytic", 100, 1),
    ("wall saving %", "saving_wall", 100, 1),
    ("wall saving incl. set-up %", "saving_wall_setup", 100, 1),
    ("peak RSS MB", "peak_rss_mb", 1, 0),
    ("memory saving %", "saving_memory", 100, 1),
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


def main_table_rows(profile: str, records: Sequence[dict] | None = None) -> list[dict]:
    """Aggregated rows of the main table at ``profile`` (from its records unless given)."""
    records = read_records(MAIN_EXPERIMENT, profile) if records is None else records
    return aggregate(with_savings(records))


def main_table_frame(profile: str, records: Sequence[dict] | None = None):
    """The main table as a pandas DataFrame of formatted cells (for notebooks)."""
    return frame(main_table_rows(profile, records))


def _setting(records: Sequence[dict]) -> str:
    """The training setting shared by a group's records (from the first non-zero-shot config)."""
    cfg = next((r["config"] for r in records if "finetune" in r["config"]), None)
    if cfg is None:
        return ""
    ft, data = cfg["finetune"], cfg["data"]
    return (
        f"train {data['n_train']} examples × {ft['epochs']} epochs, batch {ft['batch_size']}, "
        f"AdamW lr {ft['lr']:g}, loss `{ft['loss']}`, max length {ft['max_length']}, "
        f"prefix cache {'on' if ft['cache_prefix'] else 'off'}, {cfg['dtype']} on {cfg['device']}, "
        f"{cfg['threads']} thread(s)"
    )


def _main_section(
    profile: str, rows: list[dict], records: list[dict], model: str, task: str
) -> str:
    part = [r for r in rows if (r["model"], r["task"]) == (model, task)]
    seeds = sorted({s for r in part for s in r["seeds"]})
    ns = "/".join(str(n) for n in sorted({n for r in part for n in r["n"]}))
    note = (
        " (seeded random tiny models: the numbers only show that the pipeline runs)"
        if profile == "smoke"
        else ""
    )
    setting = _setting(
        [r for r in records if (r["config"]["model"], r["config"]["task"]) == (model, task)]
    )
    table = markdown_table(
        ["policy", *[h for h, *_ in COLUMNS], "runs"],
        [[r["policy"], *[cell(r[f], s, d) for _, f, s, d in COLUMNS], r["runs"]] for r in part],
    )
    return (
        f"\n## Reproduced (ours): profile `{profile}`, {model} on {task}{note}\n\n"
        f"Seeds {seeds}; n = {ns} held-out examples per run; {setting}.\n\n{table}"
    )


def published_claims() -> list[str]:
    """The SALF claims stored in results/paper/salf_published.json (none when it is absent)."""
    if not published_path("salf").is_file():
        return []
    spec = published_spec("salf")
    return [f"“{c['claim']}” ({c.get('status', 'published')})" for c in spec.get("claims", [])]


def salf_main_table_markdown() -> str | None:
    """The reproduced main table of every profile with records (largest first), then the published
    claims. None when no profile has main-table records."""
    out = [
        "# SALF main table: every freezing policy against full fine-tuning (reproduced, ours)\n\n",
        "One run = one model × task × policy × seed (`notebooks/06_salf_main_table.ipynb`). "
        "Cells: mean ± sample std over seeds (a single value: one run); n = held-out examples "
        "scored per run (the same fixed subset for every policy and seed). Savings are "
        "1 − cost / cost of `full` fine-tuning of the same model, task and seed: analytic "
        "training FLOPs (2N forward + 4N backward per token, no backward through a frozen prefix, "
        "a cached prefix's forward paid once); measured wall time of the training loop, and the "
        "same plus the policy's set-up (SALF's analysis pass over the training data); peak "
        "resident memory of the process during training. `zero_shot`: the model before any "
        "training. `eof` = blocks frozen below the trained suffix (SALF: argmax gain). For scale: "
        "freezing e of L equal blocks saves ≈ (2/3)(e/L) of the FLOPs, at most ≈ 67% "
        "(a derivation, not a published number).\n",
    ]
    found = False
    for profile in PROFILE_PREFERENCE:
        records = read_records(MAIN_EXPERIMENT, profile)
        found = found or bool(records)
        rows = main_table_rows(profile, records)
        out += [
            _main_section(profile, rows, records, *key)
            for key in sorted({(r["model"], r["task"]) for r in rows})
        ]
    if not found:
        return None
    claims = published_claims()
    if claims:
        out.append(
            "\n## Published claims (SALF paper; no published numbers to set beside ours)\n\n"
        )
        out += [f"- {c}\n" for c in claims]
    return "".join(out)


def salf_main_table(out_dir: Path) -> list[Path]:
    """``salf_table_main.md`` from results/salf_main/ (nothing when there are no records)."""
    return save_markdown(salf_main_table_markdown(), Path(out_dir) / "salf_table_main.md")


# --------------------------------------------------------------------------- cost-benefit figures


def cost_benefit_rows(profile: str, records: Sequence[dict] | None = None) -> list[dict]:
    """Aggregated rows of the cost–benefit runs at ``profile`` (from its records unless given)."""
    records = read_records(COST_EXPERIMENT, profile) if records is None else records
    return aggregate(with_savings(records), order=sweep_order)


def frame(rows: Sequence[dict]):
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
    if policy == "full":
        return "full"
    if policy == "salf":
        return "salf"
    if policy.startswith("eof_") or policy.startswith("freeze_"):
        return "fixed"
    if policy.startswith(("salf_max", "salf_frac", "salf_flops")):
        return "budget"
    return "other"


MARKERS = {
    "fixed": ("o", "#1f77b4", "fixed eof"),
    "salf": ("*", "#2ca02c", "SALF"),
    "full": ("s", "#d62728", "full FT (+ embeddings/head)"),
    "budget": ("^", "#ff7f0e", "SALF + budget"),
    "other": ("D", "#7f7f7f", "other"),
}


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
        markersize=8 if marker == "*" else 5,
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
    full)."""
    groups = _groups([r for r in rows if _kind(r["policy"]) != "other"])
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(11.0, 3.6 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 2, squeeze=False)
        for (left, right), part in zip(axes, groups):
            for kind in ("fixed", "budget", "salf", "full"):
                _errorbar(left, part, "trained_blocks", "accuracy", kind)
                _errorbar(left, part, "trained_blocks", "macro_f1", kind, label=False, alpha=0.45)
                _errorbar(right, part, "trained_blocks", "saving_analytic", kind)
                _errorbar(
                    right, part, "trained_blocks", "saving_wall", kind, label=False, alpha=0.45
                )
            left.set_ylabel("score % (solid: accuracy, faded: macro-F1)", fontsize=8)
            right.set_ylabel("saving % (solid: analytic FLOPs, faded: wall)", fontsize=8)
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


def costs_figure(rows: list[dict], profile: str):
    """Analytic FLOPs against measured wall time and peak memory; analytic against measured
    saving."""
    groups = _groups([r for r in rows if r["flops"][2]])
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(15.0, 4.2 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 3, squeeze=False)
        for (a, b, c), part in zip(axes, groups):
            _annotate(a, part, "flops", "wall_s", 1e-12)
            a.set_xlabel("analytic training FLOPs (×10¹²)", fontsize=8)
            a.set_ylabel("measured training wall time (s)", fontsize=8)
            _annotate(b, part, "saving_analytic", "saving_wall", 100, 100)
            lo = min(
                [0.0]
                + [
                    100 * min(r["saving_analytic"][0], r["saving_wall"][0])
                    for r in part
                    if r["saving_wall"][2]
                ]
            )
            b.plot(
                [lo, 100],
                [lo, 100],
                color="0.6",
                linestyle="--",
                linewidth=0.8,
                label="measured = analytic",
            )
            b.set_xlabel("analytic FLOPs saving %", fontsize=8)
            b.set_ylabel("measured wall-time saving %", fontsize=8)
            b.legend(fontsize=7, loc="upper left")
            _annotate(c, part, "flops", "peak_rss_mb", 1e-12)
            c.set_xlabel("analytic training FLOPs (×10¹²)", fontsize=8)
            c.set_ylabel("peak RSS during training (MB)", fontsize=8)
            for ax in (a, b, c):
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
                ax.set_title(_panel_title(part, profile), fontsize=8)
        fig.suptitle(
            f"SALF cost–benefit (reproduced, ours, profile {profile}): analytic FLOPs against "
            "measured time and memory (means over seeds)",
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
            right.set_xlabel("saving vs full FT %", fontsize=8)
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
    "cost_benefit_rows",
    "costs_figure",
    "depth_figure",
    "frame",
    "main_table_frame",
    "main_table_rows",
    "mean_std",
    "published_claims",
    "salf_cost_benefit_figures",
    "salf_main_table",
    "salf_main_table_markdown",
    "with_savings",
]
