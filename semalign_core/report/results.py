"""Result records as the report reads them: ``results/<experiment>/<profile>/<run>.json``.

The folder is :func:`semalign_core.paths.results_dir` (``SEMALIGN_RESULTS_DIR`` moves it). A figure
shows one profile: the first of :data:`~semalign_core.profiles.PROFILE_PREFERENCE` (largest
first) that has records; a table shows every profile that has them, in that order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from semalign_core.paths import results_dir
from semalign_core.profiles import PROFILE_PREFERENCE


def read_records(
    experiment: str, profile: str, pattern: str = "*__*.json", folder: Path | None = None
) -> list[dict]:
    """Every record ``results/<experiment>/<profile>/<pattern>`` in file-name order (``folder``:
    another results folder than the one in use); a file that cannot be read or parsed (being
    written, truncated) is skipped."""
    out = []
    for path in sorted(((folder or results_dir()) / experiment / profile).glob(pattern)):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def read_record(experiment: str, profile: str, run: str) -> dict | None:
    """The record ``results/<experiment>/<profile>/<run>.json``, None when there is none."""
    path = results_dir() / experiment / profile / f"{run}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def largest_profile(has_records: Callable[[str], object]) -> str | None:
    """The first profile of :data:`PROFILE_PREFERENCE` for which ``has_records(profile)`` holds."""
    return next((p for p in PROFILE_PREFERENCE if has_records(p)), None)


__all__ = ["PROFILE_PREFERENCE", "largest_profile", "read_record", "read_records"]
