"""Sandbox throughput: programs/s of HumanEval canonical solutions with per-sample namespaces
(``isolation="require"``) and without (``isolation="off"``), in alternating rounds; medians.

    python bench/bench_sandbox.py [--n 40] [--workers 2] [--rounds 3] [--all]

``--all`` also scores every HumanEval and MBPP (test split) reference solution once per mode
and prints the pass rate and how many programs needed the shared-process fallback. Prints a
JSON line; writes nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

from semalign_core.data.benchmarks import load_humaneval, load_mbpp
from semalign_core.evaluation.code_tasks import humaneval_program, mbpp_program, score_programs
from semalign_core.evaluation.sandbox import SandboxLimits

MODES = ("require", "off")


def _programs(n: int | None) -> list[str]:
    problems = load_humaneval().records
    return [humaneval_program(p, p["canonical_solution"]) for p in problems[:n]]


def _mbpp_programs() -> list[str]:
    return [mbpp_program(p, p["code"]) for p in load_mbpp("test").records]


def _score(programs: list[str], mode: str, workers: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = score_programs(programs, SandboxLimits(isolation=mode), workers, progress=False)
    return time.perf_counter() - t0, results


def throughput(n: int, workers: int, rounds: int) -> dict:
    """Median programs/s per mode over ``rounds`` alternating rounds (one warm-up each)."""
    programs = _programs(n)
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    for mode in MODES:
        _score(programs[:4], mode, workers)  # warm-up: probe, page cache
    for _ in range(rounds):
        for mode in MODES:
            wall, results = _score(programs, mode, workers)
            assert all(r.passed for r in results), [r.stderr[-200:] for r in results][:2]
            walls[mode].append(wall)
    return {
        f"{mode}_programs_per_s": round(len(programs) / statistics.median(w), 2)
        for mode, w in walls.items()
    } | {"n_programs": len(programs), "workers": workers, "rounds": rounds}


def census(workers: int) -> dict:
    """Pass rate and tests-process census of every reference solution, per benchmark and mode."""
    out = {}
    for name, programs in (("humaneval", _programs(None)), ("mbpp", _mbpp_programs())):
        for mode in MODES:
            wall, results = _score(programs, mode, workers)
            out[f"{name}_{mode}"] = {
                "pass_rate": sum(r.passed for r in results) / len(results),
                "tests_process": dict(collections.Counter(r.tests_process for r in results)),
                "isolation": dict(collections.Counter(r.isolation for r in results)),
                "wall_s": round(wall, 1),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--all", action="store_true")
    args = parser.parse_args()
    report = throughput(args.n, args.workers, args.rounds)
    if args.all:
        report["census"] = census(args.workers)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
