"""Which lm-eval model wrapper generates: HF (``HFLM`` over the in-memory model) or vLLM.

Generation (GSM8K, HumanEval, MBPP) is most of an evaluation's time at the hub profiles; vLLM's
batched decoding is much faster on a GPU. A profile names its choice
(:attr:`semalign_core.profiles.Profile.generation_backend`: ``"auto"``, ``"hf"`` or ``"vllm"``)
and :func:`choose_backend` turns it into the backend this machine can run: vLLM only where the
package is installed (the ``vllm`` extra, in its own environment: vLLM pins an exact torch) and a
CUDA GPU is visible. vLLM loads models from a folder, so a model trained in memory is first
written with :func:`export_for_vllm`. Every evaluation record names its backend.
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.models.huggingface import HFLM

from semalign_core.errors import InvalidParameterError

BACKENDS = ("hf", "vllm")
CHOICES = ("auto", *BACKENDS)  # what a profile may name
INSTALL_HINT = 'pip install -e ".[vllm]" in an environment of its own (vLLM pins its torch)'
VLLM_DTYPES = ("float32", "bfloat16", "float16")
# vLLM reserves this share of the GPU memory that is free when it starts (the in-memory model it
# was exported from, and a transfer cell's source, stay where they are).
GPU_MEMORY_SHARE = 0.85


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a broken or half-imported install counts as absent
        return False


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, reason) for a profile's ``requested`` choice on this machine.

    ``"auto"``: vLLM where it is installed and a CUDA GPU is visible, HF otherwise;
    ``"vllm"``: vLLM, or a one-line error saying what is missing; ``"hf"``: HF.
    """
    if requested not in CHOICES:
        raise InvalidParameterError(
            f"unknown generation backend {requested!r}; choose one of: {', '.join(CHOICES)}"
        )
    if requested == "hf":
        return "hf", "requested"
    missing = _vllm_missing()
    if requested == "vllm" and missing:
        raise InvalidParameterError(
            f"generation backend 'vllm' cannot run here: {missing}; install it with "
            f"{INSTALL_HINT}, or choose 'hf' or 'auto'"
        )
    if missing:
        return "hf", f"auto: {missing}"
    return "vllm", "requested" if requested == "vllm" else "auto: vllm installed, CUDA visible"


def _vllm_missing() -> str:
    """What keeps vLLM from running here ("" when nothing does)."""
    if not vllm_installed():
        return "vllm is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return ""


def backend_name(lm: LM) -> str:
    """The backend of an lm-eval model passed in as is: "hf", "vllm" or its class name."""
    if isinstance(lm, HFLM):
        return "hf"
    name = type(lm).__name__
    return "vllm" if name == "VLLM" else name


# --------------------------------------------------------------------------- export


def export_for_vllm(model, tokenizer, folder) -> Path:
    """Write the HF causal LM ``model`` (as it is in memory, trained or not) and its tokenizer
    to ``folder`` as safetensors, the layout vLLM and ``AutoModelForCausalLM.from_pretrained``
    load; returns ``folder``.

    Written into a temporary sibling and renamed into place, so a reader never sees half a
    model, and an interrupted export leaves the previous folder (or none).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_folder(new: Path, folder: Path) -> None:
    """Move ``new`` to ``folder``; an existing ``folder`` is moved aside first, then removed
    (a directory cannot be renamed over a non-empty one)."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        folder.rename(old / folder.name)
    new.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- vLLM


def vllm_lm(folder, batch_size: int, dtype: str, max_length: int | None, seed, **kwargs) -> LM:
    """lm-eval's vLLM wrapper over the model in ``folder``, with the settings the HF path uses
    (batch size, dtype, context window, seed; ``kwargs``, e.g. ``add_bos_token``, passed on)."""
    # lm-eval's vLLM module imports vllm, an optional dependency (the "vllm" extra)
    from lm_eval.models.vllm_causallms import VLLM

    share = _gpu_memory_share()
    if share is not None:
        kwargs.setdefault("gpu_memory_utilization", share)
    return VLLM(
        pretrained=str(folder),
        tokenizer=str(folder),
        dtype=dtype if dtype in VLLM_DTYPES else "auto",
        batch_size=batch_size,
        max_length=max_length,
        seed=0 if seed is None else int(seed),
        **kwargs,
    )


def _gpu_memory_share() -> float | None:
    """The share of the GPU's memory vLLM may take: ``GPU_MEMORY_SHARE`` of what is free now
    (vLLM refuses to start when its share exceeds the free memory). None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return round(GPU_MEMORY_SHARE * free / total, 3)


def release(lm: LM) -> None:
    """Free a vLLM engine's GPU memory once its evaluation is done (best effort: vLLM keeps
    process-wide state that only its own teardown functions clear)."""
    if backend_name(lm) == "vllm":
        lm.model = None  # the engine: its last reference
        _destroy_vllm_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _destroy_vllm_state() -> None:
    try:
        # vllm's teardown of its process-wide parallel state: an optional dependency
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )
    except ImportError:
        return
    destroy_model_parallel()
    destroy_distributed_environment()
