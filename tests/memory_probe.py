"""Peak memory of one step in a fresh process: what the memory tests (test_planner.py,
test_semalign_memory.py) measure.

Each step runs in a fresh spawned process on one thread. After a warm-up of the same step at
micro sizes (so kernel and thread-pool set-up is not counted), the process's RSS is read, the
kernel's peak-RSS counter is reset (``costs.PeakMemory``, ``/proc/self/clear_refs``) and the step
runs; the measurement is the peak RSS of that block minus the RSS before it, so neither the
interpreter nor the libraries count. glibc's malloc keeps freed heap memory resident (RSS would
show the allocator's high-water mark, growing from step to step), so the child runs with
``MALLOC_MMAP_THRESHOLD_=65536``: every allocation over 64 KiB is its own mapping, returned on
free, and the peak RSS growth is the peak of live allocations, the CPU counterpart of
``torch.cuda.max_memory_allocated``.

A step is a module-level function (the spawned process imports it by name) taking keyword
arguments only.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from unittest import mock

import pytest
import torch

from semalign_core import costs

MIB = 2**20
# read by glibc when the measuring process starts: freed tensors leave the RSS at once
LIVE_MEMORY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _measure_in_this_process(
    step: Callable[..., None], kwargs: dict, warm_up: dict
) -> tuple[float, str]:
    torch.set_num_threads(1)
    step(**warm_up)
    gc.collect()
    before = costs.current_rss_mb()
    with costs.PeakMemory() as peak:
        step(**kwargs)
    return (peak.peak_rss_mb - before) * MIB, peak.rss_scope


def measured_peak(step: Callable[..., None], kwargs: dict, warm_up: dict) -> float:
    """Bytes ``step(**kwargs)`` adds to a fresh process's RSS at its peak, after
    ``step(**warm_up)`` (see the module docstring); skips where the counter cannot be reset."""
    spawn = multiprocessing.get_context("spawn")
    with (
        mock.patch.dict(os.environ, LIVE_MEMORY_MALLOC),
        ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool,
    ):
        job = pool.submit(_measure_in_this_process, step, kwargs, warm_up)
        grown, scope = job.result(timeout=600)
    if scope != "block":
        pytest.skip("the peak-RSS counter cannot be reset here (/proc/self/clear_refs)")
    return grown
