"""Two cells on a small CPU box: one after the other in one two-thread process, or at once in two
one-thread processes (`cells --jobs 2`)? Wall time of each, same cells, records recomputed.

    python bench/bench_jobs.py [--profile cpu] [--cells source__gsm target__gsm] [--out FILE]

Writes JSON (default: the run folder's ``results/bench/jobs.json``); ``promote`` does not copy
bench files: copy one into ``results/bench/`` by hand to commit it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from semalign_core.experiments import cells  # noqa: E402
from semalign_core.paths import results_dir  # noqa: E402
from semalign_core.records import package_versions, provenance, write_json_atomic  # noqa: E402

EXPERIMENT = "semalign_transfer"


def _timed(results: Path, run) -> float:
    os.environ["SEMALIGN_RESULTS_DIR"] = str(results)
    start = time.perf_counter()
    run()
    return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--cells", nargs="+", default=["source__gsm", "target__gsm"])
    parser.add_argument("--out", type=Path, default=results_dir() / "bench" / "jobs.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    os.environ["SEMALIGN_REFERENCE_DIR"] = str(scratch / "no-reference")  # nothing is reused

    def in_turn() -> None:
        torch.set_num_threads(2)
        for name in args.cells:
            cells.run_cell(EXPERIMENT, name, args.profile, force=True, own_process=True)

    def at_once() -> None:
        cells.run_cells_in_processes(EXPERIMENT, args.cells, args.profile, force=True, jobs=2)

    report = {
        "cells": args.cells,
        "profile": args.profile,
        "one_process_per_cell_in_turn_2_threads_s": _timed(scratch / "in_turn", in_turn),
        "two_processes_at_once_1_thread_s": _timed(scratch / "at_once", at_once),
        "cpus": os.cpu_count(),
        "packages": package_versions(),
        "provenance": provenance(),
    }
    ratio = report["one_process_per_cell_in_turn_2_threads_s"] / max(
        report["two_processes_at_once_1_thread_s"], 1e-9
    )
    report["speedup_of_two_processes"] = round(ratio, 2)
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
