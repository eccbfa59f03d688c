"""Figures of the analysis notebooks: SemAlign Fig. 2 and Figs. 4-6 (``notebooks/01``), SALF's
deviations and gains with the eof table (``notebooks/02``). Drawing lives in :mod:`.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from semalign_core.experiments.catalog import SALF_ANALYSIS, SEMALIGN_ANALYSES
from semalign_core.report import plots
from semalign_core.report.markdown import markdown_table, save_markdown
from semalign_core.report.results import (
    PROFILE_PREFERENCE,
    largest_profile,
    read_record,
    read_records,
)

SEMALIGN_FIGURES = (
    ("fidelity", "semalign_fig2_fidelity.png", plots.fidelity_figure),
    ("cka", "semalign_fig4-6_cka.png", plots.cka_figure),
)  # (run, file, drawing)
EOF_INTRO = (
    "# SALF: end of freezing (eof) per model and task\n\n"
    "eof = e freezes the embeddings and blocks 1..e (argmax gain over blocks 1..L-1). "
    "The chosen eof uses the run's gain; the other columns re-choose it from the same "
    "deviation trace with every registered gain formula (docs/decisions.md).\n"
)


def semalign_analysis_figures(out_dir: Path) -> list[Path]:
    """SemAlign Fig. 2 (fidelity) and Figs. 4-6 (CKA), each from the largest profile that has it."""
    written = []
    for run, name, draw in SEMALIGN_FIGURES:
        record = _largest_record(SEMALIGN_ANALYSES, run)
        if record is not None:
            written.append(plots.save_png(draw(record), Path(out_dir) / name))
    return written


def _largest_record(experiment: str, run: str) -> dict | None:
    """The record ``run`` of the largest profile that has it."""
    profile = largest_profile(lambda p: read_record(experiment, p, run))
    return None if profile is None else read_record(experiment, profile, run)


def salf_eof_rows(records: Sequence[dict]) -> list[dict]:
    """One row per SALF analysis record: model, task, n, layers, gain used, its eof, and the eof
    the same deviation trace gives under every registered gain formula."""
    rows = []
    for r in sorted(records, key=lambda r: (r["config"]["model"], r["config"]["task"])):
        m = r["metrics"]
        rows.append(
            {
                "model": r["config"]["model"],
                "task": r["config"]["task"],
                "n": m["n"],
                "layers": m["layers"],
                "gain": m["gain_kind"],
                "eof": m["eof"],
                **{f"eof[{g}]": e for g, e in sorted(m["eof_by_gain"].items())},
            }
        )
    return rows


def salf_eof_table() -> str:
    """Per profile: the eof chosen per model × task, and under every registered gain formula."""
    out = [EOF_INTRO]
    for profile in PROFILE_PREFERENCE:
        records = read_records(SALF_ANALYSIS, profile)
        if not records:
            continue
        rows = salf_eof_rows(records)
        header = list(rows[0])
        deviations = sorted({r["metrics"]["deviation_kind"] for r in records})
        out.append(f"\n## Reproduced: profile `{profile}` (deviation: {', '.join(deviations)})\n\n")
        out.append(markdown_table(header, [[row.get(h, "") for h in header] for row in rows]))
    return "".join(out)


def salf_analysis_figures(out_dir: Path) -> list[Path]:
    """SALF deviation/gain panels (largest profile with records), eof table (every profile)."""
    profile = largest_profile(lambda p: read_records(SALF_ANALYSIS, p))
    if profile is None:
        return []
    out_dir = Path(out_dir)
    fig = plots.salf_deviation_gain_figure(read_records(SALF_ANALYSIS, profile))
    return [
        plots.save_png(fig, out_dir / "salf_fig2_deviation_gain.png"),
        *save_markdown(salf_eof_table(), out_dir / "salf_eof_table.md"),
    ]


__all__ = ["salf_analysis_figures", "salf_eof_rows", "salf_eof_table", "semalign_analysis_figures"]
