"""SemAlign ablations (``notebooks/05_semalign_ablations``): per task, the table and the figure,
from ``results/semalign_ablations/<profile>/`` and Table 2's records alone.

One section per task with ablation records (``<axis>-<value>__<task>__seed<s>.json``: SST-2, TREC,
the informative tasks the profile ran). One row per variant (axis, value):

- the accuracy: mean % with its 95 % interval from the per-item scores
  (:func:`semalign_core.report.comparisons.score_interval`), n items and the seeds; records
  without per-item data: mean ± sample std over seeds, as Tables 1-2 write them;
- Δ vs default: the variant minus the default (Table 2's ``semalign`` run of the task) on the
  same items (:func:`~semalign_core.report.comparisons.compare`), in points with its paired 95 %
  interval, marked ▲/▼ only when the interval excludes zero;
- the one-label flag (:func:`~semalign_core.report.comparisons.label_summary`) and whether the
  variant's layer plan equals the default's.

Beside the scores: the majority-label rate of the task's evaluated items (the gold labels of the
records), the floor a classifier must beat on exactly these items, in place of a fixed chance
level. Cells, intervals and comparisons are written by :mod:`.semalign_tables`' helpers, so the
ablations and Tables 1-2 read alike.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semalign_core.data.classification import CLASSIFICATION_TASKS
from semalign_core.experiments.ablation_variants import default_config, value_label, variants
from semalign_core.experiments.catalog import (
    ABLATION_SETTING,
    AXES,
    SEMALIGN_ABLATIONS,
    get_setting,
)
from semalign_core.profiles import get_profile
from semalign_core.report import comparisons, plots
from semalign_core.report.markdown import frame_markdown, save_markdown
from semalign_core.report.results import PROFILE_PREFERENCE, largest_profile, read_records
from semalign_core.report.semalign_tables import (
    ABOVE_TARGET,
    BELOW_TARGET,
    cells_text,
    clip,
    interval_cell,
    model_pair,
    points,
    seeds_cell,
    task_descriptions,
)
from semalign_core.report.semalign_tables import load_records as transfer_records
from semalign_core.statistics import label_distribution, majority_rate

INTRO = (
    "# SemAlign ablations (not published in the paper)\n\n"
    "One SemAlign config field changed at a time around Table 2's default run, on each "
    "informative task of the profile (`notebooks/05_semalign_ablations.ipynb`, "
    "`semalign_core/experiments/ablations.py`).\n"
)
ABOVE, BELOW = ABOVE_TARGET, BELOW_TARGET  # the marks of Tables 1-2, here against the default
DEFAULT = ("default", "default")
# Row names that say more than the config value; every other row is named by its value.
VARIANT_LABELS = {
    ("decomposition", "dual"): "dual: a = pinv(S_srcᵀ) h/‖h‖",
    ("decomposition", "gain_folded"): "gain_folded: bases of W diag(g)",
}


def variant_label(axis: str, value: str) -> str:
    """How a variant's row is named in the table and the figure."""
    return VARIANT_LABELS.get((axis, value), value)


def task_title(task: str) -> str:
    """A task's column title in Table 2 (SST-2, TREC)."""
    return get_setting(ABLATION_SETTING).columns.get(task, task)


# --------------------------------------------------------------------------- records


def _records(profile: str, task: str) -> list[dict]:
    return read_records(SEMALIGN_ABLATIONS, profile, f"*__{task}__seed*.json")


def tasks(profile: str) -> list[str]:
    """The tasks with ablation records at ``profile``, in Table 2's column order."""
    return [t for t in get_setting(ABLATION_SETTING).columns if _records(profile, t)]


def _table2(profile: str, task: str) -> list[dict]:
    """Table 2's records of ``task`` at ``profile`` that have a value."""
    return [
        r
        for r in transfer_records(profile, ABLATION_SETTING)
        if r["task"] == task and r["metrics"].get("value") is not None
    ]


def _groups(profile: str, task: str) -> dict[tuple[str, str], list[dict]]:
    """(axis, value) → records (one per seed); the default first: Table 2's ``semalign`` records
    of the task at the seeds the ablations ran."""
    ablations = _records(profile, task)
    if not ablations:
        return {}
    seeds = {r["seed"] for r in ablations}
    default = [
        r for r in _table2(profile, task) if r["method"] == "semalign" and r["seed"] in seeds
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    if default:
        groups[DEFAULT] = default
    for r in ablations:
        if r["metrics"].get("value") is not None:
            groups.setdefault((r["ablation"]["axis"], r["ablation"]["value"]), []).append(r)
    return groups


def _label_names(task: str) -> tuple[Hashable, ...] | None:
    """The label words of a classification task (its choices, in order); None otherwise."""
    return tuple(CLASSIFICATION_TASKS[task].label_words) if task in CLASSIFICATION_TASKS else None


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Majority:
    """The majority label of the evaluated items: its name, its share (%), how many items."""

    label: Hashable
    rate: float
    n: int


def majority(profile: str, task: str, data: list[dict] | None = None) -> Majority | None:
    """The majority-label rate of ``task``'s evaluated items at ``profile``, from the gold labels
    of its records (``data``: its :func:`rows`, the default's first, when the caller has them;
    every row is scored on the same items); None without per-item data."""
    data = rows(profile, task) if data is None else data
    gold = comparisons.gold_labels([r for row in data for r in row["records"]])
    if not gold:
        return None
    names = _label_names(task) or ()
    gold = [comparisons.name(names, g) for g in gold]
    return Majority(label_distribution(gold, names).top_label, 100 * majority_rate(gold), len(gold))


def _stats(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample std or None for one value) in %."""
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    std = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1)) if len(pct) > 1 else None
    return mean, std


def rows(profile: str, task: str) -> list[dict[str, Any]]:
    """One row per variant of ``task`` with records, the default (Table 2's run) first: axis,
    value, mean/std (%) over seeds, interval (per-item, fractions; None without items), n,
    seeds, delta (points vs the default's mean), paired (the paired comparison with the
    default, fractions; None when not comparable), mark, flag (one label), same_plan."""
    groups = _groups(profile, task)
    if not groups:
        return []
    default = groups.get(DEFAULT)
    base = _stats([r["metrics"]["value"] for r in default])[0] if default else None
    order = {(v.axis, v.value): i for i, v in enumerate(variants(get_profile(profile), task=task))}
    names = _label_names(task)
    out = []
    for (axis, value), recs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
    ):
        mean, std = _stats([r["metrics"]["value"] for r in recs])
        paired = None
        if default and (axis, value) != DEFAULT:
            paired = comparisons.compare(recs, default)
        summary = comparisons.label_summary(recs, names) if names else None
        mark = ""
        if paired is not None and paired.significant:
            mark = ABOVE if paired.difference > 0 else BELOW
        out.append(
            {
                "axis": axis,
                "value": value,
                "records": recs,
                "mean": mean,
                "std": std,
                "interval": comparisons.score_interval(recs),
                "n": sorted({r["metrics"]["n"] for r in recs}),
                "seeds": sorted(r["seed"] for r in recs),
                "delta": None if base is None or (axis, value) == DEFAULT else mean - base,
                "paired": paired,
                "mark": mark,
                "flag": "" if summary is None else summary.flag,
                "same_plan": all(r["metrics"].get("same_plan") for r in recs) and axis != "default",
            }
        )
    return out


def _references(profile: str, task: str) -> dict[str, float]:
    """Table 2's untrained rows on the task (teacher, target) in %, those that have a value."""
    reference_rows = get_setting(ABLATION_SETTING).reference_rows
    found = {
        r["method"]: 100 * r["metrics"]["value"]
        for r in _table2(profile, task)
        if r["method"] in reference_rows
    }
    return {row: found[row] for row in reference_rows if row in found}


# --------------------------------------------------------------------------- text


def _default_text(profile: str, task: str, default: list[dict]) -> str:
    """The default run's value of each axis, read from its records' config (``*``: a field the
    records do not hold, shown at the code's current default)."""
    recorded = {}
    for r in default:
        recorded.update(r.get("config", {}).get("transfer", {}).get("method_config", {}))
    base = default_config(get_profile(profile), task=task)
    parts = []
    for axis, (name, _) in AXES.items():
        if name in recorded:
            parts.append(f"{axis} {value_label(recorded[name])}")
        else:
            parts.append(f"{axis} {value_label(getattr(base, name))}*")
    text = ", ".join(parts)
    if any(p.endswith("*") for p in parts):
        text += " (* not in the records' config: the code's default)"
    return text


def _majority_text(found: Majority | None, task: str) -> str:
    if found is None:
        chance = get_setting(ABLATION_SETTING).chance.get(task)
        return "" if chance is None else f"chance {chance:.1f} (no per-item data)"
    return f"majority-label rate {found.rate:.1f} (`{found.label}`, n={found.n} items)"


def caption(profile: str, task: str, data: list[dict] | None = None) -> str:
    """What was run, read from the records: task, models, items, seeds, the default config
    (``data``: the task's :func:`rows`, when the caller has them)."""
    data = rows(profile, task) if data is None else data
    records = [r for row in data for r in row["records"]]
    if not records:
        return f"SemAlign ablations, profile `{profile}`, {task_title(task)}: no records"
    seeds = sorted({s for row in data for s in row["seeds"]})
    table2 = sorted({r["seed"] for r in _table2(profile, task) if r["method"] == "semalign"})
    few = ""
    if len(seeds) < len(table2):
        few = f" (fewer seeds than Table 2's {table2}, to fit the profile's time budget)"
    source, target = model_pair(records)
    teachers = sorted({r["teacher"] for r in records if r.get("teacher")})
    n = sorted({k for row in data for k in row["n"]})
    n_train = sorted(
        {r["config"]["transfer"].get("n_train") for r in records if r["config"].get("transfer")}
        - {None}
    )
    default = data[0]["records"] if data[0]["axis"] == "default" else []
    default_text = _default_text(profile, task, default) if default else "no default record"
    refs = "; ".join(f"{k} {v:.1f}" for k, v in _references(profile, task).items())
    floor = _majority_text(majority(profile, task, data), task)
    setting = get_setting(ABLATION_SETTING)
    return (
        f"SemAlign ablations, profile `{profile}`, {task_title(task)}: fine-tuned teacher "
        f"{', '.join(teachers) or '?'} (base {source}) → target {target}; "
        f"% ({task_descriptions(setting, records, [task])}; n={'/'.join(map(str, n))} items per "
        "seed, the same items for every row); "
        f"training seeds {seeds}{few}"
        + (f", {'/'.join(map(str, n_train))} training examples" if n_train else "")
        + "; one axis at a time around the default "
        f"(Table 2's SemAlign run: {default_text}); Δ = points vs the default; "
        "`=` marks variants whose layer plan equals the default's "
        "(identical training, not retrained); decomposition: cosine = the paper's coefficients "
        "a = S_src h/‖h‖, dual = the exact minimum-norm ones, gain_folded = cosine over the bases "
        "of each head with its final-norm gain g folded in. "
        f"Reference: {'; '.join(x for x in (refs, floor) if x) or 'n/a'}"
    )


def legend(data: list[dict]) -> str:
    """What the Δ column and its marks mean (how many comparisons; no multiplicity
    correction), the one-label flag, and how the cells are written."""
    compared = [r for r in data if r["paired"] is not None]
    unpaired = [
        r for r in data if r["axis"] != "default" and r["paired"] is None and r["delta"] is not None
    ]
    text = cells_text({(r["axis"], r["value"]): r["interval"] for r in data}) + ". "
    if compared:
        text += (
            "Δ vs default: the variant minus the default on the same items (matched by id, on "
            "the seeds both have), in points, with its paired 95% interval; "
            f"{ABOVE}/{BELOW}: that interval lies entirely above/below zero. An unmarked row is "
            "not shown to differ from the default. Each of the "
            f"{len(compared)} comparisons is at its own 95% level, without a correction for "
            "multiple comparisons: about 1 in 20 comparisons with no real difference is marked "
            "by chance. With one training seed an interval covers the sampling of items only: "
            "a mark then says that this trained model differs, not that the variant would with "
            "another seed. "
        )
    if unpaired:
        text += (
            "Δ written without an interval: no paired comparison (records without per-item "
            "data, or not the same items); a difference of means only. "
        )
    text += (
        f"`⚠ one label`: one label gets ≥ {100 * comparisons.ONE_LABEL_SHARE:.0f}% of the row's "
        "predictions (whatever its accuracy)."
    )
    return text


def _acc_cell(row: dict) -> str:
    if row["interval"] is None:
        recs = row["records"]
        return seeds_cell([r["metrics"]["value"] for r in recs], [r["metrics"]["n"] for r in recs])
    return interval_cell(row["interval"])


def _delta_cell(row: dict) -> str:
    paired = row["paired"]
    if paired is not None:
        low, high = (points(clip(b, -1.0, 1.0)) for b in (paired.low, paired.high))
        cell = f"{points(paired.difference)} [{low}, {high}]"
        return f"{cell} {row['mark']}" if row["mark"] else cell
    if row["axis"] == "default" or row["delta"] is None:
        return ""
    return f"{row['delta']:+.1f}"


def table(profile: str, task: str) -> pd.DataFrame:
    """The ablation table of ``task`` at ``profile`` as a DataFrame (``attrs``: caption,
    legend, majority, profile, task)."""
    data = rows(profile, task)
    frame = pd.DataFrame(
        {
            f"{task_title(task)} acc": [_acc_cell(r) for r in data],
            "Δ vs default": [_delta_cell(r) for r in data],
            "seeds": [", ".join(map(str, r["seeds"])) for r in data],
            "flag": [r["flag"] for r in data],
            "plan": ["=" if r["same_plan"] else "" for r in data],
        },
        index=pd.MultiIndex.from_tuples(
            [(r["axis"], variant_label(r["axis"], r["value"])) for r in data],
            names=["axis", "variant"],
        ),
    )
    found = majority(profile, task, data)
    frame.attrs["caption"] = caption(profile, task, data)
    frame.attrs["legend"] = legend(data) if data else ""
    frame.attrs["majority"] = (
        None
        if found is None
        else (
            f"{task_title(task)} items: majority-label rate {found.rate:.1f}% (gold "
            f"`{found.label}`, n={found.n}): always answering `{found.label}` scores that on "
            "these items"
        )
    )
    frame.attrs["profile"] = profile
    frame.attrs["task"] = task
    return frame


def tables(profile: str) -> list[pd.DataFrame]:
    """One :func:`table` per task with ablation records at ``profile``."""
    return [table(profile, task) for task in tasks(profile)]


# --------------------------------------------------------------------------- figure


def _error(row: dict) -> tuple[float, float]:
    """(below, above) the mean in %: the 95% interval (bounds within [0, 100]), else the std."""
    interval = row["interval"]
    if interval is None:
        return (row["std"] or 0.0, row["std"] or 0.0)
    low, high = (100 * clip(b, 0.0, 1.0) for b in (interval.low, interval.high))
    mean = 100 * interval.mean
    return (max(0.0, mean - low), max(0.0, high - mean))


def _panel(ax, profile: str, task: str, data: list[dict]) -> None:
    y = np.arange(len(data))[::-1]
    colors = [
        "0.45" if r["axis"] == "default" else ("0.75" if r["same_plan"] else plots.OUTPUT_COLOR)
        for r in data
    ]
    means = [100 * r["interval"].mean if r["interval"] else r["mean"] for r in data]
    errors = np.array([_error(r) for r in data]).T
    ax.barh(
        y,
        means,
        xerr=errors if errors.any() else None,
        color=colors,
        height=0.7,
        error_kw={"elinewidth": 0.8, "capsize": 2},
    )
    labels = [
        f"{r['axis']}: {variant_label(r['axis'], r['value'])}" + (f" {r['mark']}" * bool(r["mark"]))
        for r in data
    ]
    ax.set_yticks(y, labels, fontsize=8)
    refs = _references(profile, task)
    found = majority(profile, task, data)
    chance = get_setting(ABLATION_SETTING).chance.get(task)
    floor = ("majority label", found.rate) if found else ("chance", chance)
    for name, value, style in (
        ("teacher", refs.get("teacher"), "--"),
        ("target", refs.get("target"), ":"),
        (floor[0], floor[1], "-"),
    ):
        if value is not None:
            ax.axvline(
                value, color="0.2", linestyle=style, linewidth=0.9, label=f"{name} {value:.1f}"
            )
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{task_title(task)} accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    seeds = sorted({s for r in data for s in r["seeds"]})
    n = "/".join(str(k) for k in sorted({k for r in data for k in r["n"]}))
    ax.set_title(f"{task_title(task)} (n={n} items, seeds {seeds})", fontsize=9)


def figure(profile: str) -> Figure:
    """One panel per task: horizontal bars per variant (mean with its 95% interval, or ± std
    without per-item data), grouped by axis, the marks of the paired comparison with the default
    beside the names; teacher, target and the items' majority-label rate as vertical lines."""
    panels = [(task, rows(profile, task)) for task in tasks(profile)]
    heights = [0.32 * len(data) + 1.3 for _, data in panels]
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(7.0, sum(heights) + 0.6)
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
        for ax, (task, data) in zip(axes[:, 0], panels):
            _panel(ax, profile, task, data)
        fig.suptitle(
            f"SemAlign ablations (profile {profile}); grey: default, light: same plan\n"
            f"{ABOVE}/{BELOW}: the paired 95% interval vs the default excludes zero",
            fontsize=9,
        )
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- pages


def task_section(frame: pd.DataFrame) -> str:
    """One task's table as Markdown: heading, caption, majority rate, legend, table."""
    out = [f"\n### {task_title(frame.attrs['task'])}\n\n{frame.attrs['caption']}.\n"]
    if frame.attrs.get("majority"):
        out.append(f"\n{frame.attrs['majority']}.\n")
    if frame.attrs.get("legend"):
        out.append(f"\n{frame.attrs['legend']}\n")
    out.append("\n" + frame_markdown(frame, ["axis", "variant"]))
    return "".join(out)


def ablation_markdown() -> str | None:
    """Every profile with ablation records, one section per task: caption, majority rate,
    legend and table (None when there are none)."""
    profiles = [p for p in PROFILE_PREFERENCE if tasks(p)]
    if not profiles:
        return None
    sections = []
    for profile in profiles:
        sections.append(f"\n## Reproduced: profile `{profile}`\n")
        sections += [task_section(frame) for frame in tables(profile)]
    return INTRO + "".join(sections)


def ablation_figures(out_dir: Path) -> list[Path]:
    """``semalign_ablations.md`` (every profile) and ``semalign_ablations.png`` (the largest profile
    with records, one panel per task); nothing when there are no ablation records."""
    written = save_markdown(ablation_markdown(), Path(out_dir) / "semalign_ablations.md")
    if not written:
        return []
    profile = largest_profile(tasks)
    return [*written, plots.save_png(figure(profile), Path(out_dir) / "semalign_ablations.png")]


__all__ = [
    "Majority",
    "ablation_figures",
    "ablation_markdown",
    "caption",
    "figure",
    "legend",
    "majority",
    "rows",
    "table",
    "tables",
    "task_section",
    "task_title",
    "tasks",
    "variant_label",
]
