"""Shared fixtures. The real GGUF models are loaded once per test session (conversion is cached
in .cache/models, so only the very first session on a machine pays for it).

Notebooks: every notebook runs once per session at smoke (``smoke_reproduction``) and every test
of what a notebook wrote reads that run; a test that needs kernels of its own uses
``notebook_runner``. A test that asks for either fixture is marked ``e2e``, so
``pytest -m "not e2e"`` starts no kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every writer points at a session temp folder, and no test reuses a committed record: the run
# folder and the reference results are empty temp folders unless a test sets its own.
_ISOLATED = Path(tempfile.mkdtemp(prefix="semalign-tests-"))
os.environ["SEMALIGN_RUN_DIR"] = str(_ISOLATED / "run")
os.environ["SEMALIGN_REFERENCE_DIR"] = str(_ISOLATED / "reference" / "results")
for _key in ("SEMALIGN_RESULTS_DIR", "SEMALIGN_FIGURES_DIR", "SEMALIGN_REUSE_REFERENCE"):
    os.environ.pop(_key, None)

import pytest  # noqa: E402
import torch  # noqa: E402

from semalign_core.paths import REPO_ROOT  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def smollm2():
    from semalign_core.models.registry import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3():
    from semalign_core.models.registry import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_pair():
    from semalign_core.models.registry import load_model

    return load_model("tiny-source", verbose=False), load_model("tiny-target", verbose=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster (and identically) on one thread than on two on a shared 2-core
    machine; use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_transfer_pair():
    """Factory: (source, target, tokenizer, train records, extract records) of the smoke pair on GSM
    transfer splits. Each call loads fresh models, so a module may train them in place."""
    from semalign_core.data import load_transfer
    from semalign_core.models.registry import load_model

    def make(n_train: int = 4, n_extract: int = 2):
        src = load_model("tiny-source", verbose=False)
        tgt = load_model("tiny-target", verbose=False)
        train = load_transfer("gsm", "align", limit=n_train).records
        extract = load_transfer("gsm", "extract", limit=n_extract).records
        return src.model, tgt.model, src.tokenizer, train, extract

    return make


# --------------------------------------------------------------------------- notebooks

NOTEBOOKS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))  # `make reproduce`


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A run folder and a reference, both empty temp folders: (run results, reference)."""
    monkeypatch.delenv("SEMALIGN_RESULTS_DIR", raising=False)
    monkeypatch.setenv("SEMALIGN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("SEMALIGN_REFERENCE_DIR", str(tmp_path / "ref" / "results"))
    return tmp_path / "run" / "results", tmp_path / "ref" / "results"


NOTEBOOK_FIXTURES = ("smoke_reproduction", "notebook_runner")
REPO_OUTPUTS = ("results", "figures")  # tracked folders no test may write


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so `-m "not e2e"` sees the marker
def pytest_collection_modifyitems(items):
    for item in items:
        if set(NOTEBOOK_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def tree_snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime, bytes) of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class NotebookRunner:
    """Runs notebooks as `make` does (``python -m semalign_core.run_notebook``, one subprocess),
    with results in ``<folder>/results`` and figures in ``<folder>/figures``, offline."""

    cell_timeout_s: int = 600

    def command(
        self, *notebooks: str, params: Sequence[str] = (), profile: str = "smoke"
    ) -> list[str]:
        """The command line; ``notebooks`` by stem, ``params`` as ``key=value`` strings."""
        paths = [str(REPO_ROOT / "notebooks" / f"{nb}.ipynb") for nb in notebooks]
        extra = [arg for param in params for arg in ("-p", param)]
        return [
            sys.executable,
            "-m",
            "semalign_core.run_notebook",
            "--profile",
            profile,
            "--timeout",
            str(self.cell_timeout_s),
            *extra,
            *paths,
        ]

    def env(self, folder: Path) -> dict[str, str]:
        return {
            **os.environ,
            "SEMALIGN_RESULTS_DIR": str(folder / "results"),
            "SEMALIGN_FIGURES_DIR": str(folder / "figures"),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # tiny models: one thread is faster on a shared 2-core box
        }

    def run(
        self, folder: Path, *notebooks: str, params: Sequence[str] = (), timeout_s: int = 1800
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*notebooks, params=params),
            env=self.env(folder),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


@dataclass(frozen=True)
class SmokeReproduction:
    """What `make reproduce PROFILE=smoke` wrote: every notebook once, results and figures in a
    session temp folder (read it; never write into it)."""

    notebooks: tuple[str, ...]
    results: Path
    figures: Path
    wall_s: float
    repo_before: dict = field(repr=False)  # tree_snapshot of REPO_OUTPUTS before the run

    def repo_outputs_changed(self) -> list[str]:
        """Those of the repo's results/ and figures/ that differ from before the run."""
        return [n for n in REPO_OUTPUTS if tree_snapshot(REPO_ROOT / n) != self.repo_before[n]]

    def record(self, *parts: str) -> dict:
        return json.loads(self.results.joinpath(*parts).read_text())

    def records(self, experiment: str) -> list[str]:
        """File names of the experiment's records, sorted."""
        return sorted(p.name for p in (self.results / experiment / "smoke").glob("*.json"))

    def executed(self, notebook: str) -> dict:
        """The executed copy of ``notebooks/<notebook>.ipynb``, as JSON."""
        return json.loads((self.results / "notebooks" / "smoke" / f"{notebook}.ipynb").read_text())

    def outputs(self, notebook: str) -> list[dict]:
        """Every output of every code cell of the executed notebook."""
        cells = self.executed(notebook)["cells"]
        return [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]


@pytest.fixture(scope="session")
def notebook_runner() -> NotebookRunner:
    return NotebookRunner()


@pytest.fixture(scope="session")
def smoke_reproduction(tmp_path_factory, notebook_runner) -> SmokeReproduction:
    """Every notebook at smoke, once per session, into a temp folder."""
    folder = tmp_path_factory.mktemp("smoke_reproduction")
    repo_before = {name: tree_snapshot(REPO_ROOT / name) for name in REPO_OUTPUTS}
    start = time.perf_counter()
    proc = notebook_runner.run(folder, *NOTEBOOKS)
    if proc.returncode != 0:
        pytest.fail(f"smoke reproduction failed:\n{proc.stderr[-3000:]}", pytrace=False)
    wall_s = time.perf_counter() - start
    return SmokeReproduction(
        tuple(NOTEBOOKS), folder / "results", folder / "figures", wall_s, repo_before
    )
