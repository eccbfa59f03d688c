"""The papers' published numbers (``results/paper/<paper>_published.json``), labelled as published.

These files are part of the artifact, not of a run: they are read from the repository even when
``SEMALIGN_RESULTS_DIR`` points the reproduced results elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from semalign_core.paths import REPO_ROOT
from semalign_core.report.markdown import markdown_table

PUBLISHED_DIR = REPO_ROOT / "results" / "paper"


def published_path(paper: str) -> Path:
    """``results/paper/<paper>_published.json`` (``paper``: "semalign" or "salf")."""
    return PUBLISHED_DIR / f"{paper}_published.json"


def published_spec(paper: str) -> dict:
    """The whole published JSON of ``paper``: table key → {caption, columns, rows, ...}."""
    return json.loads(published_path(paper).read_text())


def published_table(paper: str, table: str) -> pd.DataFrame:
    """One published table as a DataFrame, its caption marking it as published."""
    spec = published_spec(paper)[table]
    frame = pd.DataFrame.from_dict(spec["rows"], orient="index", columns=spec["columns"])
    frame.attrs["caption"] = f"{spec['caption']} (published, {paper})"
    return frame


def published_markdown(spec: dict, row_header: str) -> str:
    """A published table spec ({columns, rows}) as a pipe table; row names under ``row_header``."""
    return markdown_table(
        [row_header, *spec["columns"]], [[k, *v] for k, v in spec["rows"].items()]
    )


__all__ = [
    "PUBLISHED_DIR",
    "published_markdown",
    "published_path",
    "published_spec",
    "published_table",
]
