"""Where experiments run: one answer to "which device?" for every module that loads a model."""

from __future__ import annotations

import os

import torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (recorded in each run's provenance)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


SPREAD_ENV = "SEMALIGN_SPREAD_SOURCES"


def inference_device() -> str:
    """Where a model that is only read (a source) goes: ``"auto"`` (accelerate's ``device_map``:
    its layers spread over the visible GPUs, so a 13B source fits beside the target) where
    ``SEMALIGN_SPREAD_SOURCES=1`` asks for it and several GPUs are visible, else
    :func:`default_device`. Opt-in: with the layers on several GPUs, the methods' code must move
    every source activation to the device of the target tensors it meets, which no GPU has
    checked yet (docs/decisions.md, "More than one GPU")."""
    spread = os.environ.get(SPREAD_ENV, "").lower() in ("1", "true", "yes")
    return "auto" if spread and torch.cuda.device_count() > 1 else default_device()


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype a model asked for in ``dtype`` is loaded in on ``device``.

    ``"bfloat16"`` on a CUDA GPU without native bf16 (compute capability below 8.0, e.g. Colab's
    T4) becomes ``"float32"``: fp16 would need loss scaling in every training loop, which none
    has, and emulated bf16 is slow. Everything else (every CPU load) is returned unchanged.
    """
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if dtype == "bfloat16" and on_gpu and not _native_bf16():
        return "float32"
    return dtype


def _native_bf16() -> bool:
    # including_emulation=False: torch reports emulated bf16 (T4) as supported by default
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


__all__ = ["compute_dtype", "default_device", "inference_device"]
