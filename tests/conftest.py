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
