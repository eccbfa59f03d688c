"""``make data``: download every benchmark file from its official source, sha256-checked.

Usage::

    python -m semalign_core.data.fetch [--dest DIR] [--only gsm8k mmlu ...]

``--dest`` defaults to ``<repo>/data`` (the loaders' second place to look). What is fetched
from where, and how each file is checked, is :mod:`semalign_core.data.sources`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semalign_core import paths
from semalign_core.data.sources import fetch_data, load_manifest
from semalign_core.errors import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semalign_core.data.fetch",
        description="Download the benchmark files from their official sources, sha256-checked.",
    )
    parser.add_argument("--dest", type=Path, help="data folder (default: <repo>/data)")
    datasets = ", ".join(load_manifest().datasets)
    parser.add_argument("--only", nargs="+", metavar="DATASET", help=f"any of: {datasets}")
    args = parser.parse_args(argv)
    try:
        report = fetch_data(args.dest, args.only)
    except ArtifactError as err:  # one line, no traceback (errors.py)
        print(f"error: {err}", file=sys.stderr)
        return 1
    where = args.dest or paths.REPO_ROOT / "data"
    print(f"{len(report['fetched'])} fetched, {len(report['skipped'])} already present in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
