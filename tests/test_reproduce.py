"""`make reproduce PROFILE=smoke` twice from scratch (the session's smoke run, then one more, in
`make test-scale`): the same results apart from timing and machine fields; figures rebuilt from
the same results are byte-identical to those the report notebook wrote; the repo's results/ and
figures/ untouched."""

from __future__ import annotations

import json
import time

import pytest

from semalign_core.records import without_volatile
from semalign_core.report.build import build_all


def _record_paths(results):
    """Every result record; the run logs beside the executed notebooks measure a run (finish
    time, the sha256 of records that hold timings) and are left out."""
    return sorted(
        p.relative_to(results)
        for p in results.rglob("*.json")
        if p.relative_to(results).parts[0] != "notebooks"
    )


# A second whole reproduction (≈ 2.5 min): a heavier end-to-end check, run by `make test-scale`.
@pytest.mark.slow
def test_smoke_reproduce_twice_gives_the_same_results(
    smoke_reproduction, notebook_runner, tmp_path
):
    start = time.perf_counter()
    proc = notebook_runner.run(tmp_path, *smoke_reproduction.notebooks)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds = f"{smoke_reproduction.wall_s:.0f} s, {time.perf_counter() - start:.0f} s"
    print(
        f"smoke reproduce of {len(smoke_reproduction.notebooks)} notebooks: {seconds}"
    )  # not asserted
    runs = [smoke_reproduction.results, tmp_path / "results"]
    records = [_record_paths(run) for run in runs]
    assert records[0] == records[1] and len(records[0]) > 30
    for rel in records[0]:
        first, second = (without_volatile(json.loads((run / rel).read_text())) for run in runs)
        assert first == second, rel


def test_figures_rebuilt_from_the_same_results_are_byte_identical(
    smoke_reproduction, tmp_path, monkeypatch
):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(smoke_reproduction.results))
    rebuilt = {p.name: p.read_bytes() for p in build_all(tmp_path)}  # here, not in a kernel
    written = {p.name: p.read_bytes() for p in sorted(smoke_reproduction.figures.iterdir())}
    assert set(written) >= {
        "table3_model_statistics.md",
        "semalign_fig2_fidelity.png",
        "salf_fig2_deviation_gain.png",
    }
    assert rebuilt.keys() == written.keys()
    for name, content in written.items():
        assert rebuilt[name] == content, name


def test_smoke_run_left_the_repo_results_and_figures_alone(smoke_reproduction):
    assert smoke_reproduction.repo_outputs_changed() == []
