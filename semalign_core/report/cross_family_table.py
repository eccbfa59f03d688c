"""Cross-family transfer (beyond the papers; ``notebooks/05b``): the table, its costs and bridges.

The cells are :func:`semalign_core.report.semalign_tables.table` cells with
``setting="cross_family"``: a teacher of another family (another tokenizer and vocabulary,
fine-tuned on the task) transfers into the profile's target. Rows: ``teacher``, ``target``,
``sft`` and ``semalign_same_family`` (Table 2's records of the same target on the same items; the
last is SemAlign from the same-family teacher, for scale), ``uld`` and ``bridged_kl`` (output
distillation across vocabularies), ``semalign_cross_exact`` / ``semalign_cross_projection``
(SemAlign across vocabularies with either vocabulary bridge). Every trained row is compared on
the same items with the target, with SFT and with ULD. This module adds the teacher–target gap,
a table of what each row cost (the shared cost accounting of every transfer record) and of its
vocabulary bridge, and the Markdown page ``make figures`` writes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from semalign_core.experiments.catalog import CROSS_FAMILY_ROWS
from semalign_core.report.markdown import markdown_table, save_markdown
from semalign_core.report.results import PROFILE_PREFERENCE
from semalign_core.report.semalign_tables import load_records, reproduced_section
from semalign_core.report.semalign_tables import table as transfer_frame
from semalign_core.report.teacher_table import gap_notes

SETTING = "cross_family"
FIGURE_NAME = "semalign_cross_family.md"
INTRO = (
    "# Beyond the papers: SemAlign across model families\n\n"
    "SemAlign, Seeking and LaTen need one vocabulary shared by source and target. Here the "
    "teacher is a model of **another family** (another tokenizer and vocabulary) fine-tuned on "
    "the task, and SemAlign transfers through hidden states aligned at the character offsets "
    "both tokenisations share, decomposed on the teacher's semantic bases and recomposed on the "
    "target's through a vocabulary bridge (`semalign_core/semalign/crossvocab/`; "
    "`notebooks/05b_semalign_cross_family.ipynb`). It is measured against the published "
    "cross-tokenizer output distillation (ULD) and KL through the same bridge.\n"
)
COST_HEADER = (
    "row",
    "task",
    "seeds",
    "transfer wall s",
    "analytic FLOPs",
    "peak RSS MB",
    "bridge",
    "teacher vocab covered",
    "target vocab covered",
    "aligned share",
)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _flops(value: float | None, overcounted: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" + (OVERCOUNT_MARK if overcounted else "")


OVERCOUNT_MARK = " ◊"
OVERCOUNT_NOTE = (
    "◊ made before stop 30, whose accounting counted SemAlign's source pass over every training "
    "batch though the pass read only the batches the stages train on (at `cpu` 4 of 16): the "
    "FLOPs shown are up to about twice the work done; the wall time is the run's own."
)


def _overcounted(cost: dict) -> bool:
    """A SemAlign-style record (it has a source pass) counted before ``source_pass_batches``."""
    return "flops_source_pass" in cost and "source_pass_batches" not in cost


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def cost_rows(profile: str) -> list[list[str]]:
    """Per trained row and task (means over its seeds): the transfer's wall time, analytic FLOPs
    and peak resident memory as every transfer record counts them, and for the cross-vocabulary
    rows the bridge's mode, the share of each vocabulary it covers and the share of supervised
    target positions that align with a teacher position."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in load_records(profile, SETTING):
        if r.get("setting") == SETTING and (r["cost"] or {}).get("transfer"):
            groups.setdefault((r["method"], r["task"]), []).append(r["cost"]["transfer"])
    order = {row: i for i, row in enumerate(CROSS_FAMILY_ROWS)}
    out = []
    for (row, task), costs in sorted(groups.items(), key=lambda k: (order.get(k[0][0], 99), k)):

        def mean(key: str, costs=costs) -> float | None:
            return _mean([c.get(key) for c in costs])

        out.append(
            [
                row,
                task,
                str(len(costs)),
                _fmt(mean("wall_s")),
                _flops(mean("flops"), any(_overcounted(c) for c in costs)),
                _fmt(mean("peak_rss_mb"), digits=0),
                costs[0].get("bridge_mode", "–"),
                _share(mean("bridge_source_vocab_share")),
                _share(mean("bridge_target_vocab_share")),
                _share(mean("aligned_share")),
            ]
        )
    return out


def table(
    profile: str,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The cross-family table of ``profile`` from its records; the teacher–target gap among its
    notes and ``attrs["costs"]`` the rows of :data:`COST_HEADER`."""
    frame = transfer_frame(profile, methods, tasks, seeds, setting=SETTING)
    frame.attrs["notes"] = [*frame.attrs["notes"], *gap_notes(profile, SETTING)]
    frame.attrs["costs"] = cost_rows(profile)
    return frame


def cost_markdown(frame: pd.DataFrame) -> str:
    """The cost and bridge table of a :func:`table` frame (empty without trained rows)."""
    if not frame.attrs.get("costs"):
        return ""
    return (
        "\nCost of each trained row (the shared cost accounting of every transfer record: "
        "wall time of the transfer, analytic FLOPs of its forward and backward passes, teacher "
        "passes included; peak resident memory of the process) and its vocabulary bridge:\n\n"
        + markdown_table(COST_HEADER, frame.attrs["costs"])
        + (
            f"\n{OVERCOUNT_NOTE}\n"
            if any(OVERCOUNT_MARK in c for r in frame.attrs["costs"] for c in r)
            else ""
        )
    )


def section(frame: pd.DataFrame) -> str:
    """One profile's part of the page (and of the notebook): the table with its notes,
    comparisons and label tables, then the cost and bridge table."""
    return reproduced_section(frame, "training seeds", heading="Measured") + cost_markdown(frame)


def cross_family_markdown() -> str | None:
    """The table of every profile with records (None without any). Deterministic."""
    profiles = [p for p in PROFILE_PREFERENCE if load_records(p, SETTING)]
    if not profiles:
        return None
    return INTRO + "".join(section(table(p)) for p in profiles)


def cross_family_figures(out_dir: Path) -> list[Path]:
    """``semalign_cross_family.md`` in ``out_dir`` (nothing without records)."""
    return save_markdown(cross_family_markdown(), Path(out_dir) / FIGURE_NAME)


__all__ = [
    "COST_HEADER",
    "cost_markdown",
    "cost_rows",
    "cross_family_figures",
    "cross_family_markdown",
    "section",
    "table",
]
