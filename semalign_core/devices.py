"""Where experiments run: one answer to "which device?" for every module that loads a model."""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (recorded in each run's provenance)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype a model asked for in ``dtype`` is loaded in on ``device``.

    ``"bfloat16"`` on a CUDA GPU without native bf16 (compute capability below 8.0, e.g. Colab's
    T4) becomes ``"float32"``: fp16 would need loss scaling in every training loop, which none
    has, and emulated bf16 is slow. Everything else (every CPU load) is returned unchanged.
    """
    if dtype == "bfloat16" and device.startswith("cuda") and not _native_bf16():
        return "float32"
    return dtype


def _native_bf16() -> bool:
    # including_emulation=False: torch reports emulated bf16 (T4) as supported by default
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


__all__ = ["compute_dtype", "default_device"]
