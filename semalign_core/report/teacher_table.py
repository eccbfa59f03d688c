"""SemAlign Table 2: transfer from fine-tuned teachers (``notebooks/04_semalign_finetuned_teacher``).

The cells are :mod:`semalign_core.experiments.transfer_tables` cells with ``setting="finetuned"``: the source of
every method is a teacher fine-tuned on the task (:mod:`semalign_core.experiments.teachers`), the rows are
``teacher``, ``target`` and every method of :data:`semalign_core.transfer.registry.METHODS`. This module
adds the seeds each profile runs by default, the check that the setting is informative (the
teacher beats the target by at least :data:`MIN_GAP` points), and the Markdown page that
``make figures`` writes (:func:`teacher_table_markdown`, :func:`teacher_table_figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

SETTING = "finetuned"
DEFAULT_SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0,), "cpu": (0, 1, 2), "gpu-small": (0, 1, 2),
                                             "paper": (0, 1, 2)}
MIN_GAP = 10.0  # points the teacher must lead the target by for methods to be told apart
PROFILE_PREFERENCE = ("paper", "gpu-small", "cpu", "smoke")
FIGURE_NAME = "semalign_table2_finetuned_teacher.md"


def default_seeds(profile: str, seed: int = 0, seeds: Sequence[int] | None = None):
    """``seeds`` when given (as given: the caller checks them); else the profile's default seeds,
    shifted to start at ``seed``."""
    if seeds is not None:
        return seeds
    return [seed + s for s in DEFAULT_SEEDS.get(profile, (0,))]


def gaps(profile: str) -> dict[tuple[str, str], float]:
    """(teacher, task) → teacher minus target, in points, from the records."""
    from semalign_core.experiments import transfer_tables as transfer_table

    recs = [r for r in transfer_table.load_records(profile, SETTING) if r["metrics"].get("value") is not None]
    target = {r["task"]: 100 * r["metrics"]["value"] for r in recs if r["method"] == "target"}
    return {(r["teacher"], r["task"]): 100 * r["metrics"]["value"] - target[r["task"]]
            for r in recs if r["method"] == "teacher" and r["task"] in target}


def gap_notes(profile: str) -> list[str]:
    """One line per teacher and task: the gap, and whether it clears :data:`MIN_GAP`."""
    out = []
    for (teacher, task), gap in sorted(gaps(profile).items()):
        verdict = "informative" if gap >= MIN_GAP else f"NOT informative (< {MIN_GAP:.0f} points)"
        out.append(f"teacher {teacher} leads the target on {task} by {gap:+.1f} points: {verdict}")
    return out


def table(profile: str, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
          seeds: Sequence[int] | None = None):
    """Table 2 of ``profile`` from its records (see :func:`semalign_core.experiments.transfer_tables.table`)."""
    from semalign_core.experiments import transfer_tables as transfer_table

    frame = transfer_table.table(profile, methods, tasks, seeds, setting=SETTING)
    frame.attrs["notes"] = [*frame.attrs["notes"], *gap_notes(profile)]
    return frame


def published_key() -> str:
    """Key of the published Table 2 in ``results/paper/semalign_published.json``."""
    from semalign_core.experiments import transfer_tables as transfer_table

    return transfer_table.get_setting(SETTING).published


def published():
    """The published Table 2 as a DataFrame (labelled as published)."""
    from semalign_core.report.build import published_table

    return published_table("semalign", published_key())


def teacher_table_markdown() -> str | None:
    """Reproduced Table 2 of every profile with records, then the published Table 2 (labelled as
    such). None when no profile has records. Deterministic: records sorted, fixed formats."""
    from semalign_core.experiments import transfer_tables as transfer_table
    from semalign_core.report.build import _markdown, _paper

    out = ["# SemAlign Table 2: parametric knowledge transfer from fine-tuned teachers\n\n",
           "Each method trains a fresh target with a **fine-tuned teacher** as its source "
           "(`notebooks/04_semalign_finetuned_teacher.ipynb`). Below `paper` the teacher is the profile's "
           "source fine-tuned on the task (`semalign_core/teachers.py`); the paper's teachers are "
           "CodeLlama-13B-Python and WizardCoder-13B-Python on HumanEval/MBPP.\n"]
    found = False
    for profile in PROFILE_PREFERENCE:
        if not transfer_table.load_records(profile, SETTING):
            continue
        found = True
        frame = table(profile)
        out.append(f"\n## Reproduced: profile `{profile}` (training seeds {frame.attrs['seeds']})\n\n")
        out.append(frame.attrs["caption"] + ".\n")
        for note in frame.attrs["notes"]:
            out.append(f"Note: {note}.\n")
        out.append("\n" + _markdown(["method", *frame.columns],
                                    [[i, *row] for i, row in zip(frame.index, frame.values.tolist())]))
    if not found:
        return None
    pub = _paper("semalign")[published_key()]
    out.append(f"\n## Published (SemAlign paper, Table 2: {pub['caption']})\n\n")
    out.append(_markdown(["teacher / method (published)", *pub["columns"]], [[m, *v] for m, v in pub["rows"].items()]))
    return "".join(out)


def teacher_table_figures(out_dir: Path) -> list[Path]:
    """``semalign_table2_finetuned_teacher.md`` in ``out_dir`` (nothing when there are no records)."""
    from semalign_core.report.build import save_markdown

    return save_markdown(teacher_table_markdown(), Path(out_dir) / FIGURE_NAME)


__all__ = ["DEFAULT_SEEDS", "MIN_GAP", "default_seeds", "gap_notes", "gaps", "published", "published_key", "table",
           "teacher_table_figures", "teacher_table_markdown"]
