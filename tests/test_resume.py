"""A notebook whose kernel is killed mid-run resumes from its records when rerun with the same
parameters, and ends with the same results as a run that was never interrupted (the session's
smoke run, which computed the same cells as part of the whole Table 1)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from semalign_core.records import without_volatile

NOTEBOOK = "03_semalign_transfer"
METHODS, TASK = ("sft", "output_kl", "hidden_distill"), "mmlu"
PARAMS = [f"methods=[{', '.join(METHODS)}]", f"tasks=[{TASK}]"]
# Table 1's reference rows, then the methods: one record each (seed 0)
# the untrained rows are evaluated once on the fixed items: no seed in their names
EXPECTED = sorted(
    [f"{m}__{TASK}.json" for m in ("source", "target")]
    + [f"{m}__{TASK}__seed0.json" for m in METHODS]
)


def _records(results: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((results / "semalign_transfer" / "smoke").glob("*.json"))}


def _run_and_kill_kernel_after_first_record(runner, folder: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        runner.command(NOTEBOOK, params=PARAMS),
        env=runner.env(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _records(folder / "results") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the notebook ended before it could be interrupted"
    kernels = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if any("ipykernel" in part for part in p.cmdline())
    ]
    assert kernels, "no kernel process found"
    for kernel in kernels:
        kernel.kill()  # SIGKILL: the kernel dies mid-cell, as on an out-of-memory kill
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow  # a kernel killed and rerun, twice a notebook: make test-scale (36 s)
def test_killed_kernel_then_rerun_resumes_and_matches_an_uninterrupted_run(
    smoke_reproduction, notebook_runner, tmp_path
):
    uninterrupted = {n: p for n, p in _records(smoke_reproduction.results).items() if n in EXPECTED}
    assert sorted(uninterrupted) == EXPECTED

    killed = _run_and_kill_kernel_after_first_record(notebook_runner, tmp_path)
    assert killed.returncode != 0  # the dead kernel fails the run instead of hanging it
    survivors = {name: path.read_bytes() for name, path in _records(tmp_path / "results").items()}
    assert 0 < len(survivors) < len(EXPECTED)

    rerun = notebook_runner.run(tmp_path, NOTEBOOK, params=PARAMS, timeout_s=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = _records(tmp_path / "results")
    for name, content in survivors.items():
        assert final[name].read_bytes() == content, f"{name} was recomputed instead of reused"
    assert sorted(final) == EXPECTED
    for name, path in final.items():
        ours, reference = (json.loads(p.read_text()) for p in (path, uninterrupted[name]))
        assert without_volatile(ours) == without_volatile(reference), name
