"""A notebook whose kernel is killed mid-run resumes from its records when rerun with the same
parameters, and ends with the same results as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from semalign_core.paths import REPO_ROOT
from semalign_core.records import without_volatile

NOTEBOOK = REPO_ROOT / "notebooks" / "03_semalign_transfer.ipynb"
PARAMS = ["-p", "methods=[sft, output_kl, hidden_distill]", "-p", "tasks=[mmlu]"]


def _command() -> list[str]:
    return [sys.executable, "-m", "semalign_core.run_notebook", "--profile", "smoke", "--timeout", "600",
            *PARAMS, str(NOTEBOOK)]


def _env(results: Path) -> dict:
    return {**os.environ, "SEMALIGN_RESULTS_DIR": str(results), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _records(results: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((results / "semalign_transfer" / "smoke").glob("*.json"))}


def _run_and_kill_kernel_after_first_record(results: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(_command(), env=_env(results), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _records(results) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the notebook ended before it could be interrupted"
    kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if any("ipykernel" in part for part in p.cmdline())]
    assert kernels, "no kernel process found"
    for kernel in kernels:
        kernel.kill()  # SIGKILL: the kernel dies mid-cell, as on an out-of-memory kill
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_killed_kernel_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    uninterrupted, interrupted = tmp_path / "once", tmp_path / "killed"
    subprocess.run(_command(), env=_env(uninterrupted), check=True, capture_output=True, timeout=600)

    killed = _run_and_kill_kernel_after_first_record(interrupted)
    assert killed.returncode != 0  # the dead kernel fails the run instead of hanging it
    survivors = {name: path.read_bytes() for name, path in _records(interrupted).items()}
    assert 0 < len(survivors) < len(_records(uninterrupted))

    rerun = subprocess.run(_command(), env=_env(interrupted), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = _records(interrupted)
    for name, content in survivors.items():
        assert final[name].read_bytes() == content, f"{name} was recomputed instead of reused"
    assert set(final) == set(_records(uninterrupted))
    for name, path in final.items():
        assert without_volatile(json.loads(path.read_text())) == without_volatile(json.loads(_records(uninterrupted)[name].read_text()))
