"""Notebooks run through papermill: the smoke profile end to end (the session's smoke run), and
parameter errors stop the notebook in its first cell with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import papermill
import pytest

from semalign_core import run_notebook
from semalign_core.errors import ArtifactError
from semalign_core.experiments.cells import cell_names
from semalign_core.experiments.notebook import require_models, start
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import get_profile
from semalign_core.report import build as report_build

NB00 = REPO_ROOT / "notebooks" / "00_models_and_data.ipynb"


def test_source_notebooks_have_parameters_and_no_outputs():
    for path in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
        assert any("parameters" in t for t in tags), path.name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


def test_models_and_data_notebook_at_smoke(smoke_reproduction):
    stats = smoke_reproduction.record("models", "smoke", "model_stats.json")
    assert stats["metrics"]["models"]["tiny-source"]["layers"] == 6
    assert stats["provenance"]["packages"]["torch"]
    census = smoke_reproduction.record("data", "smoke", "census.json")
    assert census["metrics"]["splits"]["gsm8k/test"]["n"] == 1319
    assert len(census["provenance"]["data_sha256"]) > 10


def test_every_executed_notebook_ran_without_errors_or_machine_paths(smoke_reproduction):
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        errors = [o for o in smoke_reproduction.outputs(path.stem) if o["output_type"] == "error"]
        assert not errors, path.name
        assert "input_path" not in smoke_reproduction.executed(path.stem)["metadata"]["papermill"]


def test_cost_benefit_notebook_times_its_repeats_at_the_defaults(smoke_reproduction):
    # notebook 07 at the profile's defaults runs every timing repeat of budgets.TIMING (a check
    # of its overrides once read the defaults it had filled in, and skipped them all)
    folder = smoke_reproduction.results / "salf_timing" / "smoke"
    written = {p.stem for p in folder.glob("*.json")}
    assert written and written == set(cell_names("salf_timing", "smoke"))
    text = json.dumps(smoke_reproduction.outputs("07_salf_cost_benefit"))
    assert "timing repeats skipped" not in text


@pytest.mark.slow  # a kernel per notebook: make test-scale (13 s)
def test_invalid_parameter_stops_in_first_cell(tmp_path, notebook_runner):
    """The one notebook-level check (one kernel); each experiment's checks are tested in-process."""
    proc = notebook_runner.run(tmp_path, NB00.stem, params=["seed=-3"])
    assert proc.returncode == 1
    assert "seed=-3 must be an integer >= 0" in proc.stderr
    assert not (tmp_path / "results" / "models").exists()  # nothing ran after the check


def test_unknown_profile_stops_before_a_kernel_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(
        papermill, "execute_notebook", lambda *a, **k: pytest.fail("kernel started")
    )
    assert run_notebook.main([str(NB00), "--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "notebooks").exists()


def test_every_notebook_checks_its_parameters_in_the_cell_after_them():
    """What lets the in-process parameter tests stand for the notebooks: each notebook calls
    ``start`` (and its experiment's ``check_parameters``, if it has one) right after the
    parameters cell, before any work."""
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first = next(
            i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", [])
        )
        checks = "".join(cells[first + 1]["source"])
        assert "start(profile, seed, force" in checks, path.name
        later = "".join("".join(c["source"]) for c in cells[first + 2 :])
        assert "check_parameters(" not in later, path.name


def test_paper_profile_offline_names_what_it_needs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError) as info:
        require_models(get_profile("paper"))
    text = str(info.value)
    assert "meta-llama/Llama-2-13b-chat-hf" in text and "huggingface-cli download" in text


def test_start_validates_choices():
    with pytest.raises(ArtifactError, match="objective='v9'"):
        start("smoke", 0, objective=("v9", ("acl", "v2", "v1")))


def _makefile_list(name: str) -> list[str]:
    text = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{name} :="))
    return line.split(":=", 1)[1].split()


def test_make_reproduce_runs_every_notebook_and_each_has_a_target():
    notebooks = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))
    assert _makefile_list("NOTEBOOKS") == notebooks
    text = (REPO_ROOT / "Makefile").read_text()
    assert all(f"\n{nb}: setup" in text for nb in notebooks)


def test_every_figure_group_has_a_builder():
    assert _makefile_list("FIGURE_GROUPS") == list(report_build.BUILDERS)


def test_unknown_figure_group_is_one_line_error():
    assert report_build.main(["tabel1"]) == 2


def test_source_notebooks_install_the_package_when_missing():
    for path in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        first_code = next(
            c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"
        )
        assert 'find_spec("semalign_core") is None' in "".join(first_code["source"]), path.name


def test_reproduce_preflight_stops_offline_paper_profile_with_what_it_needs():
    proc = subprocess.run(
        [sys.executable, "-m", "semalign_core.cli", "check", "--profile", "paper"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert (
        "codellama/CodeLlama-13b-Python-hf" in proc.stderr
        and "huggingface-cli download" in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1
