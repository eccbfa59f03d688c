"""`make reproduce PROFILE=smoke`, twice from scratch: the same results apart from timing and
machine fields, and figures rebuilt from the same results are byte-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from semalign_core.paths import REPO_ROOT
from semalign_core.records import without_volatile

NOTEBOOKS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))  # what `make reproduce` runs


def _reproduce(results: Path) -> float:
    cmd = [sys.executable, "-m", "semalign_core.run_notebook", "--profile", "smoke", "--timeout", "600",
           *[str(REPO_ROOT / "notebooks" / f"{nb}.ipynb") for nb in NOTEBOOKS]]
    env = {**os.environ, "SEMALIGN_RESULTS_DIR": str(results), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - start


def _figures(results: Path, out: Path) -> dict[str, bytes]:
    code = f"from pathlib import Path; from semalign_core.report.build import build_all; build_all(Path({str(out)!r}))"
    env = {**os.environ, "SEMALIGN_RESULTS_DIR": str(results), "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_smoke_reproduce_twice_gives_the_same_results_and_figures(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    seconds = [_reproduce(run) for run in runs]
    print(f"smoke reproduce of {len(NOTEBOOKS)} notebooks: {seconds[0]:.0f} s, {seconds[1]:.0f} s")  # timed in the note, not asserted
    records = [sorted(p.relative_to(run) for p in run.rglob("*.json")) for run in runs]
    assert records[0] == records[1] and len(records[0]) > 30
    for rel in records[0]:
        first, second = (without_volatile(json.loads((run / rel).read_text())) for run in runs)
        assert first == second, rel
    figures = _figures(runs[0], tmp_path / "fig_a")
    assert set(figures) >= {"table3_model_statistics.md", "semalign_fig2_fidelity.png", "salf_fig2_deviation_gain.png"}
    assert _figures(runs[0], tmp_path / "fig_b") == figures  # same results -> byte-identical files
