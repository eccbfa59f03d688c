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
import hashlib
import math
import os
import sys
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

    def agree(self, text: str) -> bool:
        """Whether every process passes the same ``text`` (compared by a 60-bit digest)."""
        if not self.sharded:
            return True
        digest = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
        t = torch.tensor([digest, -digest], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [the largest, minus the smallest]
        return int(t[0]) == digest == -int(t[1])

    def barrier(self) -> None:
        """Wait until every process gets here (through the CPU group, as :meth:`total`)."""
        self.total([0.0])

    def total(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the processes (the step's loss and token counts)."""
        if not self.sharded:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def launch_command(train_engine: str, gpus: int) -> list[str]:
    """How a fresh process that trains starts: this Python, or, where ``train_engine`` is
    ``"fsdp"`` and ``gpus`` > 1, ``accelerate launch`` with one process per GPU (they shard
    the model; the first one evaluates and writes what the run keeps)."""
    if train_engine != "fsdp" or gpus < 2:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={gpus}",
        "--num_machines=1",
        "--mixed_precision=no",  # the engine's own policy: fp32 shards, the profile's compute dtype
        "--dynamo_backend=no",
    ]


def local_launch_command(train_engine: str) -> list[str]:
    """:func:`launch_command` for the GPUs this machine shows."""
    return launch_command(train_engine, torch.cuda.device_count())


def launches_several(train_engine: str) -> bool:
    """Whether this process, not itself one of a launch's, would start ``train_engine``'s
    training as several processes (one per visible GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    return len(local_launch_command(train_engine)) > 1


def current_engine() -> Engine:
    """The engine of this process: FSDP when a launcher started several (``WORLD_SIZE`` > 1),
    joining their process group (NCCL on GPUs, gloo on the CPU) the first time."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Engine()
    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process, as the launcher numbers them
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # on GPUs NCCL for the tensors on them and gloo for the small CPU tensors the loops
        # reduce (step losses, counts: Engine.total, Engine.agree), which NCCL cannot carry
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return Engine(rank=dist.get_rank(), world_size=dist.get_world_size())


def shard(model: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` sharded in place: one FSDP unit per decoder block, then the root (embedding,
    final norm, head), each unit's tensors cast to fp32 just before it is sharded, so that the
    process holds one unit in fp32 at a time, never the whole model. ``compute_dtype`` below
    fp32: forward and backward run in it while the shards stay fp32 (master weights);
    gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=compute_dtype if compute_dtype not in (None, torch.float32) else None,
        reduce_dtype=torch.float32,
    )
    blocks = list(surgery.decoder_layers(model))
    for block in blocks:
        for module in block.modules():
            _cast_own_tensors(module, torch.float32)
        fully_shard(block, mp_policy=policy)
    in_blocks = {id(m) for block in blocks for m in block.modules()}
    for module in model.modules():  # the root unit's own tensors (a tied head is one of them)
        if id(module) not in in_blocks:
            _cast_own_tensors(module, torch.float32)
    fully_shard(model, mp_policy=policy)
    return model


def _cast_own_tensors(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module``'s own floating-point parameters and buffers (not its children's) to
    ``dtype`` in place, keeping the Parameter objects (and so any tying)."""
    with torch.no_grad():
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)


def shard_leaves(module: nn.Module) -> nn.Module:
    """``module`` sharded in place for a parameter group outside the model (hidden
    distillation's maps): one FSDP unit per submodule that holds parameters of its own, since
    FSDP gathers a unit's weights when that unit's forward runs."""
    from torch.distributed.fsdp import fully_shard

    for sub in list(module.modules()):
        if any(True for _ in sub.parameters(recurse=False)):
            fully_shard(sub, reshard_after_forward=True)
    return module


@contextmanager
def sharded_copy(
    model: nn.Module, engine: Engine, extras: Sequence[nn.Module] = ()
) -> Iterator[tuple[nn.Module, list[nn.Module]]]:
    """Yield the model to train and ``extras`` (modules trained beside it): themselves in one
    process; under FSDP sharded fp32 copies (the model computing in its own dtype) whose
    trained weights are written back into ``model`` and ``extras`` on the first process (the
    one that evaluates them) when the block ends without error. The originals wait on the CPU
    meanwhile and come back to their device after it, keeping their class and
    ``requires_grad`` flags; set the trainable set first."""
    if not engine.sharded:
        yield model, list(extras)
        return
    if any(p.requires_grad and not p.is_floating_point() for p in model.parameters()):
        raise InvalidParameterError("FSDP training needs floating-point trainable parameters")
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    originals = [model, *extras]
    # The originals wait in CPU memory while their shards train: a card holds only its shards
    # (and whatever else the step keeps there), never a whole copy of the model.
    for module in originals:
        module.to("cpu")
    try:
        work = shard(copy.deepcopy(model), dtype)  # fully_shard moves the shards over
        work_extras = [shard_leaves(copy.deepcopy(m).float()) for m in extras]
        yield work, work_extras
        for original, sharded in zip(originals, [work, *work_extras], strict=True):
            _write_back(original, sharded, first=engine.rank == 0)
        del work, work_extras
    finally:
        for module in originals:
            module.to(device)


def _write_back(original: nn.Module, sharded: nn.Module, first: bool) -> None:
    """Copy ``sharded``'s trained parameters into ``original`` on the ``first`` process, one
    parameter at a time: every process joins each gather, the first copies the whole tensor into
    its original and drops it, so no process holds a second whole copy of the model (the
    state-dict route gathered all of it in fp32 into the first process's host memory)."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, param in sharded.named_parameters():
            whole = param.full_tensor() if isinstance(param, DTensor) else param
            if first:
                target = original.get_parameter(name)
                target.copy_(whole.to(device=target.device, dtype=target.dtype))
            del whole  # before the next gather, so two whole parameters never coexist


__all__ = [
    "Engine",
    "current_engine",
    "launch_command",
    "launches_several",
    "local_launch_command",
    "shard",
    "shard_leaves",
    "sharded_copy",
]
