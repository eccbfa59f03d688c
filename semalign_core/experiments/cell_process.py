"""Start one experiment cell (or several in turn) in a fresh process, as the cell runner's command
line computes it (``python -m semalign_core.experiments.cells``): a plain Python process, or,
for a cell trained under FSDP on a machine with several GPUs, ``accelerate launch`` with one
process per GPU (:func:`semalign_core.lm.sharding.launch_command`).

Kept apart from :mod:`~semalign_core.experiments.cells` so that the code a cell runs (SALF's
grid) can start a launch without importing the runner that imports it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import torch

from semalign_core.errors import ArtifactError
from semalign_core.lm import sharding
from semalign_core.profiles import get_profile


def spawn(
    experiment: str,
    names: str | Sequence[str],
    profile: str,
    force: bool,
    threads: int,
    measure: bool = True,
    sharded: bool = False,
) -> None:
    """Compute ``names`` (one cell, or several in turn) in a fresh process with ``threads``
    torch threads; ``measure``: one cell whose own-process peak memory goes into its record;
    ``sharded``: the cells train under FSDP, launched on every visible GPU where the profile
    says so."""
    names = [names] if isinstance(names, str) else list(names)
    gpus = torch.cuda.device_count() if sharded else 0
    command = [
        *sharding.launch_command(get_profile(profile).train_engine, gpus),
        "-m",
        "semalign_core.experiments.cells",
        experiment,
        *names,
        "--profile",
        profile,
        "--threads",
        str(threads),  # a timing repeat's config holds the thread count: keep the parent's
        *(["--measure-own-process"] if measure else []),
        *(["--force"] if force else []),
    ]
    rc = subprocess.run(command, check=False).returncode
    if rc != 0:
        what = names[0] if len(names) == 1 else f"one of {len(names)} cells"
        raise ArtifactError(f"{what} of {experiment} failed in its own process (exit {rc})")


__all__ = ["spawn"]
