"""Full fine-tuning across several processes with FSDP, or in this one process.

A training loop asks :func:`current_engine` which it is. One process (the default, and every
notebook kernel) trains as before. Under ``accelerate launch --num_processes N`` (or
``torchrun``), which sets ``WORLD_SIZE`` and ``RANK``, each process holds a shard of the model
(torch's ``fully_shard``, FSDP2: one unit per decoder block plus the root) and computes its share
of every optimizer step; FSDP averages the gradients, so the update is the one-process update.

Why torch's ``fully_shard`` and not accelerate's FSDP plugin: accelerate only selects FSDP on GPU
states (its multi-CPU state never does), so its path could not be tested on the CPU; the plugin's
FSDP2 mode wraps this same ``fully_shard``. accelerate still launches the processes.

Mixed precision keeps fp32 master weights: the shards (and AdamW's state) stay fp32 and FSDP
casts to the compute dtype for forward and backward (``MixedPrecisionPolicy``), so the paper's
learning rates are not lost to bf16 rounding.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery


@dataclass(frozen=True)
class Engine:
    """Where a training step runs: ``world_size`` processes, this one being ``rank``."""

    rank: int = 0
    world_size: int = 1

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def name(self) -> str:
        return f"fsdp x{self.world_size}" if self.sharded else "single process"

    def step_chunks(self, ids: Sequence[int], micro: int) -> list[tuple[list[int], float]]:
        """This process's micro-batches of one optimizer step: ``(example ids, weight)``.

        Examples are dealt in turn (``ids[rank::world]``). Every process runs the same number of
        forward/backward passes, since each one is a collective under FSDP: a process with fewer
        examples repeats its first one with weight 0 (no gradient) rather than skipping a pass."""
        share = list(ids[self.rank :: self.world_size])
        passes = math.ceil(math.ceil(len(ids) / self.world_size) / micro)
        chunks = [(share[i : i + micro], 1.0) for i in range(0, len(share), micro)]
        filler = share[:1] or list(ids[:1])
        return chunks + [(filler, 0.0)] * (passes - len(chunks))

    def total(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the processes (the step's loss and token counts)."""
        if not self.sharded:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def current_engine() -> Engine:
    """The engine of this process: FSDP when a launcher started several (``WORLD_SIZE`` > 1),
    joining their process group (NCCL on GPUs, gloo on the CPU) the first time."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Engine()
    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process, as the launcher numbers them
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Engine(rank=dist.get_rank(), world_size=dist.get_world_size())


def shard(model: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` sharded in place: one FSDP unit per decoder block, then the root (embedding,
    final norm, head). ``compute_dtype`` below the parameters' dtype: forward and backward run in
    it while the shards stay in theirs (fp32 master weights); gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    param_dtype = next(model.parameters()).dtype
    policy = MixedPrecisionPolicy(
        param_dtype=compute_dtype if compute_dtype not in (None, param_dtype) else None,
        reduce_dtype=torch.float32,
    )
    for block in surgery.decoder_layers(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded model, on the CPU of every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return {k: v.detach().cpu() for k, v in get_model_state_dict(model, options=options).items()}


@contextmanager
def sharded_copy(model: nn.Module, engine: Engine) -> Iterator[nn.Module]:
    """Yield the model to train: ``model`` itself in one process; under FSDP a sharded fp32 copy
    (computing in ``model``'s own dtype) whose trained weights are written back into ``model``
    on every process (so each can go on to evaluate it) when the block ends without error.
    ``model`` keeps its class, device and ``requires_grad`` flags; set the trainable set first."""
    if not engine.sharded:
        yield model
        return
    if any(p.requires_grad and not p.is_floating_point() for p in model.parameters()):
        raise InvalidParameterError("FSDP training needs floating-point trainable parameters")
    first = next(model.parameters())
    device = first.device
    work = shard(copy.deepcopy(model).float(), first.dtype)
    yield work
    state = full_state(work)
    del work
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name in state:
                tensor.copy_(state[name].to(device=device, dtype=tensor.dtype))


__all__ = ["Engine", "current_engine", "full_state", "shard", "sharded_copy"]
