"""Shared fixtures. The real GGUF models are loaded once per test session (conversion is cached
in .cache/models, so only the very first session on a machine pays for it)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture
def run_smoke_notebook(tmp_path):
    """Run notebooks/<name>.ipynb at smoke through run_notebook with results in ``tmp_path``;
    returns the CompletedProcess (extra args: ``-p key=value`` pairs)."""
    import os
    import subprocess
    import sys

    from semalign_core.paths import REPO_ROOT

    def run(name: str, *args: str, timeout: int = 300):
        env = {**os.environ, "SEMALIGN_RESULTS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "semalign_core.run_notebook", str(REPO_ROOT / "notebooks" / f"{name}.ipynb"),
               "--profile", "smoke", "--timeout", str(timeout), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    return run
