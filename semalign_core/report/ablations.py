"""SemAlign ablations (``notebooks/05_semalign_ablations``): the table and the figure, from
``results/semalign_ablations/<profile>/`` and Table 2's records alone.

One row per variant (axis, value): SST-2 accuracy, mean ± sample std over seeds, Δ against the
default (Table 2's ``semalign`` run), and whether its layer plan equals the default's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semalign_core.experiments.ablation_variants import (
    default_config,
    value_label,
    variants,
)
from semalign_core.experiments.catalog import (
    ABLATION_SETTING,
    ABLATION_TASK,
    AXES,
    SEMALIGN_ABLATIONS,
    get_setting,
)
from semalign_core.profiles import get_profile
from semalign_core.report import plots
from semalign_core.report.markdown import frame_markdown, save_markdown
from semalign_core.report.results import PROFILE_PREFERENCE, largest_profile, read_records
from semalign_core.report.semalign_tables import load_records as transfer_records

INTRO = (
    "# SemAlign ablations (not published in the paper)\n\n"
    "One SemAlign config field changed at a time around Table 2's default run "
    "(`notebooks/05_semalign_ablations.ipynb`, `semalign_core/ablations.py`).\n"
)
CHANCE = 50.0  # % (SST-2 is binary)
# Row names that say more than the config value; every other row is named by its value.
VARIANT_LABELS = {
    ("decomposition", "dual"): "dual: a = pinv(S_srcᵀ) h/‖h‖",
    ("decomposition", "gain_folded"): "gain_folded: bases of W diag(g)",
}


def variant_label(axis: str, value: str) -> str:
    """How a variant's row is named in the table and the figure."""
    return VARIANT_LABELS.get((axis, value), value)


def _records(profile: str) -> list[dict]:
    return read_records(SEMALIGN_ABLATIONS, profile, f"*__{ABLATION_TASK}__seed*.json")


def _stats(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample std or None for one value) in %."""
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    std = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1)) if len(pct) > 1 else None
    return mean, std


def _groups(profile: str, ablations: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(axis, value) → records; the default: Table 2's ``semalign`` records of the same seeds."""
    seeds = {r["seed"] for r in ablations}
    default = [
        r
        for r in transfer_records(profile, ABLATION_SETTING)
        if r["task"] == ABLATION_TASK and r["method"] == "semalign" and r["seed"] in seeds
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    if default:
        groups[("default", "default")] = default
    for r in ablations:
        groups.setdefault((r["ablation"]["axis"], r["ablation"]["value"]), []).append(r)
    return groups


def rows(profile: str) -> list[dict[str, Any]]:
    """One row per variant with records: axis, value, mean/std (%) over seeds, n, seeds, Δ vs
    default, whether its plan equals the default's. The default comes from Table 2's records."""
    ablations = _records(profile)
    if not ablations:
        return []
    groups = _groups(profile, ablations)
    default = groups.get(("default", "default"))
    base = _stats([r["metrics"]["value"] for r in default])[0] if default else None
    order = {(v.axis, v.value): i for i, v in enumerate(variants(get_profile(profile)))}
    out = []
    for (axis, value), recs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
    ):
        mean, std = _stats([r["metrics"]["value"] for r in recs])
        out.append(
            {
                "axis": axis,
                "value": value,
                "mean": mean,
                "std": std,
                "n": sorted({r["metrics"]["n"] for r in recs}),
                "seeds": sorted(r["seed"] for r in recs),
                "delta": None if base is None else mean - base,
                "same_plan": all(r["metrics"].get("same_plan") for r in recs) and axis != "default",
            }
        )
    return out


def _references(profile: str) -> dict[str, float]:
    """Table 2's untrained rows on the task (teacher, target) in %, those that have a value."""
    reference_rows = get_setting(ABLATION_SETTING).reference_rows
    found = {
        r["method"]: 100 * r["metrics"]["value"]
        for r in transfer_records(profile, ABLATION_SETTING)
        if r["task"] == ABLATION_TASK
        and r["method"] in reference_rows
        and r["metrics"].get("value") is not None
    }
    return {row: found[row] for row in reference_rows if row in found}


def caption(profile: str) -> str:
    data = rows(profile)
    seeds = sorted({s for r in data for s in r["seeds"]})
    ref_text = "; ".join(f"{k} {v:.1f}" for k, v in _references(profile).items())
    few = " (fewer seeds than Table 2, to fit the profile's time budget)" if len(seeds) < 3 else ""
    base = default_config(get_profile(profile))
    default = ", ".join(
        f"{axis} {value_label(getattr(base, name))}" for axis, (name, _) in AXES.items()
    )
    return (
        f"SemAlign ablations, profile `{profile}`: fine-tuned teacher → target on SST-2 "
        "(accuracy %, held-out dev sentences, n per seed as shown); "
        f"seeds {seeds}{few}; one axis at a time around the default "
        f"(Table 2's SemAlign run: {default}); Δ = points vs the default; "
        "`=` marks variants whose layer plan equals the default's "
        "(identical training, not retrained); decomposition: cosine = the paper's coefficients "
        "a = S_src h/‖h‖, dual = the exact minimum-norm ones, gain_folded = cosine over the bases "
        "of each head with its final-norm gain g folded in. "
        f"Reference: {ref_text or 'n/a'}; "
        f"chance {CHANCE:.1f}"
    )


def _cell(row: dict) -> str:
    spread = "" if row["std"] is None else f" ± {row['std']:.1f}"
    seeds = f"{len(row['seeds'])} seed{'s' * (len(row['seeds']) > 1)}"
    return f"{row['mean']:.1f}{spread} (n={'/'.join(map(str, row['n']))}, {seeds})"


def table(profile: str) -> pd.DataFrame:
    """The ablation table of ``profile`` as a DataFrame (``attrs``: caption, profile)."""
    data = rows(profile)
    frame = pd.DataFrame(
        {
            "SST-2 acc": [_cell(r) for r in data],
            "Δ vs default": [
                "" if r["axis"] == "default" or r["delta"] is None else f"{r['delta']:+.1f}"
                for r in data
            ],
            "plan": ["=" if r["same_plan"] else "" for r in data],
        },
        index=pd.MultiIndex.from_tuples(
            [(r["axis"], variant_label(r["axis"], r["value"])) for r in data],
            names=["axis", "variant"],
        ),
    )
    frame.attrs["caption"] = caption(profile)
    frame.attrs["profile"] = profile
    return frame


def figure(profile: str) -> Figure:
    """Horizontal bars per variant (mean ± std over seeds), grouped by axis; teacher, target and
    chance as vertical lines."""
    data = rows(profile)
    refs = _references(profile)
    with matplotlib.style.context(plots.STYLE):
        fig = plots.new_figure(7.0, 0.32 * len(data) + 1.6)
        ax = fig.subplots()
        y = np.arange(len(data))[::-1]
        colors = [
            "0.45" if r["axis"] == "default" else ("0.75" if r["same_plan"] else plots.OUTPUT_COLOR)
            for r in data
        ]
        spread = [r["std"] or 0.0 for r in data]
        ax.barh(
            y,
            [r["mean"] for r in data],
            xerr=spread if any(spread) else None,
            color=colors,
            height=0.7,
            error_kw={"elinewidth": 0.8, "capsize": 2},
        )
        ax.set_yticks(
            y, [f"{r['axis']}: {variant_label(r['axis'], r['value'])}" for r in data], fontsize=8
        )
        for name, value, style in (
            ("teacher", refs.get("teacher"), "--"),
            ("target", refs.get("target"), ":"),
            ("chance", CHANCE, "-"),
        ):
            if value is not None:
                ax.axvline(
                    value, color="0.2", linestyle=style, linewidth=0.9, label=f"{name} {value:.1f}"
                )
        ax.set_xlim(0, 100)
        ax.set_xlabel("SST-2 accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        seeds = sorted({s for r in data for s in r["seeds"]})
        ax.set_title(
            f"SemAlign ablations (profile {profile}, seeds {seeds}); "
            "grey: default, light: same plan",
            fontsize=9,
        )
        fig.tight_layout()
    return fig


def ablation_markdown() -> str | None:
    """Every profile with ablation records: caption and table (None when there are none)."""
    profiles = [p for p in PROFILE_PREFERENCE if rows(p)]
    if not profiles:
        return None
    sections = []
    for profile in profiles:
        frame = table(profile)
        sections.append(
            f"\n## Reproduced: profile `{profile}`\n\n{frame.attrs['caption']}.\n\n"
            + frame_markdown(frame, ["axis", "variant"])
        )
    return INTRO + "".join(sections)


def ablation_figures(out_dir: Path) -> list[Path]:
    """``semalign_ablations.md`` (every profile) and ``semalign_ablations.png`` (the largest profile
    with records); nothing when there are no ablation records."""
    written = save_markdown(ablation_markdown(), Path(out_dir) / "semalign_ablations.md")
    if not written:
        return []
    profile = largest_profile(rows)
    return [*written, plots.save_png(figure(profile), Path(out_dir) / "semalign_ablations.png")]


__all__ = ["ablation_figures", "ablation_markdown", "caption", "figure", "rows", "table"]
