"""SemAlign Table 2: transfer from fine-tuned teachers (``notebooks/04``).

The cells are :func:`semalign_core.report.semalign_tables.table` cells with ``setting="finetuned"``:
the source of every method is a teacher fine-tuned on the task, the rows are ``teacher``,
``target`` and every transfer method. This module adds the check that the setting is informative
(the teacher beats the target by at least :data:`MIN_GAP` points; with per-item records, the
paired 95 % interval of that gap beside it) and the Markdown page that ``make figures`` writes
(:func:`teacher_table_markdown`, :func:`teacher_table_figures`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from semalign_core.experiments.budgets import MIN_GAP
from semalign_core.experiments.catalog import get_setting
from semalign_core.report import comparisons
from semalign_core.report.markdown import save_markdown
from semalign_core.report.published import published_markdown, published_spec, published_table
from semalign_core.report.results import PROFILE_PREFERENCE
from semalign_core.report.semalign_tables import load_records, reproduced_section
from semalign_core.report.semalign_tables import table as transfer_frame

SETTING = "finetuned"
FIGURE_NAME = "semalign_table2_finetuned_teacher.md"
INTRO = (
    "# SemAlign Table 2: parametric knowledge transfer from fine-tuned teachers\n\n"
    "Each method trains a fresh target with a **fine-tuned teacher** as its source "
    "(`notebooks/04_semalign_finetuned_teacher.ipynb`). Below `paper` the teacher is the profile's "
    "source fine-tuned on the task (`semalign_core/teachers.py`); the paper's teachers are "
    "CodeLlama-13B-Python and WizardCoder-13B-Python on HumanEval/MBPP.\n"
)


def _valued(profile: str, setting: str) -> list[dict]:
    return [r for r in load_records(profile, setting) if r["metrics"].get("value") is not None]


def gaps(profile: str, setting: str = SETTING) -> dict[tuple[str, str], float]:
    """(teacher, task) → teacher minus target, in points, from the records of ``setting``."""
    recs = _valued(profile, setting)
    target = {r["task"]: 100 * r["metrics"]["value"] for r in recs if r["method"] == "target"}
    return {
        (r["teacher"], r["task"]): 100 * r["metrics"]["value"] - target[r["task"]]
        for r in recs
        if r["method"] == "teacher" and r["task"] in target
    }


def gap_intervals(profile: str, setting: str = SETTING) -> dict[tuple[str, str], object]:
    """(teacher, task) → the paired difference teacher minus target on the same items
    (:func:`semalign_core.report.comparisons.compare`, fractions), where both have items."""
    recs = _valued(profile, setting)
    rows: dict[tuple[str, str | None, str], list[dict]] = {}
    for r in recs:
        rows.setdefault((r["method"], r.get("teacher"), r["task"]), []).append(r)
    out = {}
    for (method, teacher, task), teacher_recs in sorted(rows.items(), key=str):
        if method != "teacher":
            continue
        target = [r for (m, _, t), rs in rows.items() if m == "target" and t == task for r in rs]
        result = comparisons.compare(teacher_recs, target) if target else None
        if result is not None:
            out[(teacher, task)] = result
    return out


def gap_notes(profile: str, setting: str = SETTING) -> list[str]:
    """One line per teacher and task: the gap (with its paired 95% interval where the records
    have items), and whether it clears :data:`MIN_GAP`."""
    intervals = gap_intervals(profile, setting)
    out = []
    for (teacher, task), gap in sorted(gaps(profile, setting).items()):
        verdict = "informative" if gap >= MIN_GAP else f"NOT informative (< {MIN_GAP:.0f} points)"
        paired = intervals.get((teacher, task))
        if paired is None:
            interval = " (no items in the records: no interval)"
        else:
            low, high = 100 * paired.low, 100 * paired.high
            excludes = "excludes" if paired.significant else "includes"
            interval = f" (paired 95% interval [{low:+.1f}, {high:+.1f}], {excludes} zero)"
        out.append(
            f"teacher {teacher} leads the target on {task} by {gap:+.1f} points{interval}: "
            f"{verdict}"
        )
    return out


def table(
    profile: str,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Table 2 of ``profile`` from its records, the teacher–target gaps among its notes."""
    frame = transfer_frame(profile, methods, tasks, seeds, setting=SETTING)
    frame.attrs["notes"] = [*frame.attrs["notes"], *gap_notes(profile)]
    return frame


def published_key() -> str:
    """Key of the published Table 2 in ``results/paper/semalign_published.json``."""
    return get_setting(SETTING).published


def published() -> pd.DataFrame:
    """The published Table 2 as a DataFrame (labelled as published)."""
    return published_table("semalign", published_key())


def teacher_table_markdown() -> str | None:
    """Reproduced Table 2 of every profile with records, then the published Table 2 (labelled as
    such). None when no profile has records. Deterministic: records sorted, fixed formats."""
    profiles = [p for p in PROFILE_PREFERENCE if load_records(p, SETTING)]
    if not profiles:
        return None
    pub = published_spec("semalign")[published_key()]
    return (
        INTRO
        + "".join(reproduced_section(table(p), "training seeds") for p in profiles)
        + f"\n## Published (SemAlign paper, Table 2: {pub['caption']})\n\n"
        + published_markdown(pub, "teacher / method (published)")
    )


def teacher_table_figures(out_dir: Path) -> list[Path]:
    """``semalign_table2_finetuned_teacher.md`` in ``out_dir`` (nothing without records)."""
    return save_markdown(teacher_table_markdown(), Path(out_dir) / FIGURE_NAME)


__all__ = [
    "MIN_GAP",
    "gap_intervals",
    "gap_notes",
    "gaps",
    "published",
    "published_key",
    "table",
    "teacher_table_figures",
    "teacher_table_markdown",
]
