"""Where experiments run: one answer to "which device?" for every module that loads a model."""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (recorded in each run's provenance)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["default_device"]
