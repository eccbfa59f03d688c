"""Notebooks run through papermill: the smoke profile end to end, and parameter errors stop the
notebook in its first cell with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from semalign_core.errors import ArtifactError
from semalign_core.experiments.notebook import require_models, start
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import get_profile

NB00 = REPO_ROOT / "notebooks" / "00_models_and_data.ipynb"


def _run(tmp_path, *params):
    cmd = [sys.executable, "-m", "semalign_core.run_notebook", str(NB00), "--timeout", "600", *params]
    env = {"SEMALIGN_RESULTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    import os

    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **env})


def test_source_notebooks_have_parameters_and_no_outputs():
    for path in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
        assert any("parameters" in t for t in tags), path.name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


def test_models_and_data_notebook_at_smoke(tmp_path):
    proc = _run(tmp_path, "--profile", "smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((tmp_path / "models" / "smoke" / "model_stats.json").read_text())
    assert stats["metrics"]["models"]["tiny-source"]["layers"] == 6
    assert stats["provenance"]["packages"]["torch"]
    census = json.loads((tmp_path / "data" / "smoke" / "census.json").read_text())
    assert census["metrics"]["splits"]["gsm8k/test"]["n"] == 1319
    assert len(census["provenance"]["data_sha256"]) > 10
    executed = json.loads((tmp_path / "notebooks" / "smoke" / "00_models_and_data.ipynb").read_text())
    assert "input_path" not in executed["metadata"]["papermill"]  # machine paths stripped


def test_invalid_parameter_stops_in_first_cell(tmp_path):
    proc = _run(tmp_path, "--profile", "smoke", "-p", "seed=-3")
    assert proc.returncode == 1
    assert "seed=-3 must be an integer >= 0" in proc.stderr
    assert not (tmp_path / "models").exists()  # nothing ran after the check


def test_unknown_profile_stops_before_a_kernel_starts(tmp_path):
    proc = _run(tmp_path, "--profile", "huge")
    assert proc.returncode == 2 and "unknown profile 'huge'" in proc.stderr
    assert not (tmp_path / "notebooks").exists()


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
    from semalign_core.report.build import BUILDERS

    assert _makefile_list("FIGURE_GROUPS") == list(BUILDERS)


def test_unknown_figure_group_is_one_line_error(tmp_path):
    from semalign_core.report import build as report

    assert report.main(["tabel1"]) == 2


def test_source_notebooks_install_the_package_when_missing():
    for path in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        first_code = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert 'find_spec("semalign_core") is None' in "".join(first_code["source"]), path.name


def test_reproduce_preflight_stops_offline_paper_profile_with_what_it_needs():
    import os

    proc = subprocess.run([sys.executable, "-m", "semalign_core.cli", "check", "--profile", "paper"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "codellama/CodeLlama-13b-Python-hf" in proc.stderr and "huggingface-cli download" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
