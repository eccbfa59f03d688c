"""The one Markdown writer of the report: pipe tables from rows or DataFrames, and saving a page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub pipe table: the header, a ``---`` rule per column, a line per row (str() cells)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def frame_markdown(frame, index_header: Sequence[str]) -> str:
    """``frame`` as a pipe table whose first columns are its index (a tuple index fills several),
    headed ``index_header``, then the frame's columns."""
    rows = [
        [*(key if isinstance(key, tuple) else (key,)), *values]
        for key, values in zip(frame.index, frame.values.tolist())
    ]
    return markdown_table([*index_header, *frame.columns], rows)


def save_markdown(text: str | None, path: Path) -> list[Path]:
    """Write one generated page (nothing when ``text`` is None: no records yet); [path] or []."""
    if text is None:
        return []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [path]
