"""Every freezing policy of the SALF main table on one model × task × seed, timed (`cpu` profile).

A thin command line over :func:`semalign_core.experiments.salf_main.run_main_table` (the same
runs and records as notebooks/06_salf_main_table.ipynb: results/salf_main/<profile>/, reused when
valid), for sizing budgets: prints each run's score, training time and saving, then the total.
Usage:
    OMP_NUM_THREADS=1 python bench/salf_policies_cpu.py [--model smollm2-135m-instruct]
        [--task mpqa] [--seed 0] [--train 48] [--eval 96] [--epochs 2] [--threads 1] [--force]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from semalign_core.experiments.salf_cells import run_budget  # noqa: E402
from semalign_core.experiments.salf_main import run_main_table  # noqa: E402
from semalign_core.profiles import get_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="mpqa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train", type=int, default=None, help="n_train (default: the profile's budget)"
    )
    parser.add_argument(
        "--eval", type=int, default=None, help="n_eval (default: the profile's budget)"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    budget = run_budget(prof, n_train=args.train, n_eval=args.eval, epochs=args.epochs, lr=args.lr)
    print(budget, flush=True)
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    run_main_table(
        prof, [args.model], [args.task], seeds=[args.seed], force=args.force, budget=budget
    )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(
        f"total: wall {time.perf_counter() - t0:.1f} s, process CPU {cpu:.1f} s "
        f"({args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
