"""SemAlign Table 3 (model statistics): published, beside the models each reproduced profile loaded.

Reads ``results/models/<profile>/model_stats.json`` (``notebooks/00_models_and_data.ipynb``).
"""

from __future__ import annotations

from pathlib import Path

from semalign_core.experiments.catalog import MODELS
from semalign_core.paths import results_dir
from semalign_core.report.markdown import markdown_table, save_markdown
from semalign_core.report.published import published_markdown, published_spec
from semalign_core.report.results import read_record

FIGURE_NAME = "table3_model_statistics.md"
COLUMNS = ("model", "heads", "layers", "dimension", "vocabulary", "parameters", "origin")


def _measured_rows(record: dict) -> list[list]:
    return [
        [
            name,
            s["heads"],
            s["layers"],
            s["hidden"],
            s["vocab"],
            f"{s['parameters'] / 1e6:.1f}M",
            s["origin"],
        ]
        for name, s in sorted(record["metrics"]["models"].items())
    ]


def model_statistics_table() -> str:
    """Table 3 as published, then one section per profile with measured statistics (by name)."""
    out = [
        "# Model statistics (SemAlign Table 3)\n",
        "\n## Published (paper setting)\n\n",
        published_markdown(published_spec("semalign")["table3_models"], "model"),
    ]
    profiles = sorted(p.parent.name for p in (results_dir() / MODELS).glob("*/model_stats.json"))
    for profile in profiles:
        record = read_record(MODELS, profile, "model_stats")
        out.append(
            f"\n## Reproduced: profile `{record['profile']}` (measured on the loaded models)\n\n"
        )
        out.append(markdown_table(COLUMNS, _measured_rows(record)))
    return "".join(out)


def model_statistics(out_dir: Path) -> list[Path]:
    """``table3_model_statistics.md`` in ``out_dir``."""
    return save_markdown(model_statistics_table(), Path(out_dir) / FIGURE_NAME)


__all__ = ["model_statistics", "model_statistics_table"]
