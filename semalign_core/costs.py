"""Cost accounting of SemAlign, the baselines and SALF: analytic FLOPs, wall time, peak memory.

Analytic training FLOPs (Kaplan et al. 2020, "C ≈ 6N per token", refined per block), counted by
:func:`step_flops` for any step that a :class:`TrainableSpec` describes (the only FLOP model of
the package; every cost dict says so in ``flop_model``):

* forward of a block with n parameters: ``2 n`` per processed token, plus the attention-context
  term ``4 T d_attn`` (QKᵀ and AV over a length-T sequence; implementations compute the full
  T×T square, so no causal halving);
* backward of a block: ``4 n + 8 T d_attn`` when its weights are trained (activation gradients
  ``2 n`` + weight gradients ``2 n``, and twice the forward attention term); ``2 n + 8 T d_attn``
  when it is frozen but lies *above* a trained block or a block whose output gradient is wanted
  (gradients must flow through it); ``0`` when nothing below it needs a gradient (bottom-up
  freezing: no backward through the frozen prefix at all);
* LoRA on a frozen block: activation gradients ``2 n`` + the adapters' own ``6 n_lora``;
* the embedding lookup costs no multiply-adds (0 forward, 0 backward; its gradient is a
  scatter-add); the LM head costs ``2 d V`` forward per position whose logits are computed (one
  position per example for the label-token loss), ``2 d V`` backward for the activation gradient
  when anything below it needs a gradient and ``2 d V`` more when the head is trained. A step may
  read the head out after any block (SemAlign's logit lens), several times, or not at all;
* blocks above the step's top block do not run (a loss read out part-way up costs nothing above);
* a cached frozen prefix costs its forward once (the cache build), not once per epoch;
* only block and head matmuls count: norms, softmax, the losses' own arithmetic (cross-entropy,
  KL, CKA Gram matrices) and the one last-position logit row of ``logits_to_keep=1`` do not.

How the methods map onto it: SFT-like training and the baselines use one spec per step. A SemAlign
stage-k step (``semalign_core.semalign.flops``) reads block k's input from a cache
(``cached_prefix = k−1``), trains block k (or its LoRA adapters), reads the head out after it and,
when the output KL is on, runs the blocks after k (forward + activation gradients) and reads the
head out at the top; the no-grad readouts (aligned logits, the teacher's head, the VDS
decomposition) are :func:`head_flops`. Its attribution pass wants gradients at every block output
(``grad_outputs_from=0``); its source pass is forward-only.

Tokens are the *processed* (padded) positions, since padded positions are computed too; the real
(non-pad) token count is reported beside them.

Measured costs: wall time is ``time.perf_counter`` from the entry point's first piece of work
(after its argument checks) to its end, set-up, data preparation and caches included;
:class:`Stopwatch` times single steps. :class:`PeakMemory` is the peak resident set size of the
process during a block, reset on Linux through ``/proc/self/clear_refs`` so it is the peak *of
that block* (``rss_scope == "block"``; blocks may nest), and ``torch.cuda.max_memory_allocated``
on GPU. :func:`summarize` writes a run's totals in the keys every method records.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import psutil
import torch

from semalign_core.lm import surgery

FLOP_MODEL = "costs.step_flops"  # recorded in every cost dict, so a change of model is visible

# --------------------------------------------------------------------------- analytic FLOPs


@dataclass(frozen=True)
class BlockCost:
    """What one decoder block costs per token: its parameter count and attention width."""

    params: int
    attn_width: int  # n_heads * head_dim (the d_attn of Kaplan et al.)


@dataclass(frozen=True)
class ModelShape:
    """The parts of a model that the FLOPs formula needs (``model_shape(model)`` builds it)."""

    blocks: tuple[BlockCost, ...]
    hidden: int
    vocab: int
    embedding_params: int
    head_params: int
    tied: bool

    @property
    def num_layers(self) -> int:
        return len(self.blocks)


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Per-block parameter counts (LoRA adapters excluded) and head size of a causal LM."""
    base = surgery.unwrap(model)
    config = base.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = surgery.hidden_size(model)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    blocks = []
    for layer in surgery.decoder_layers(model):
        n = sum(p.numel() for name, p in layer.named_parameters() if "lora_" not in name)
        blocks.append(BlockCost(params=n, attn_width=heads * head_dim))
    emb = surgery.input_embeddings(model).weight
    head = surgery.unembedding(model).weight
    return ModelShape(
        blocks=tuple(blocks),
        hidden=hidden,
        vocab=head.shape[0],
        embedding_params=emb.numel(),
        head_params=head.numel(),
        tied=head is emb,
    )


@dataclass
class TrainableSpec:
    """What one step runs and trains, for the FLOPs formula.

    ``trained_blocks``: 0-based indices of blocks whose own weights are trained;
    ``lora_params``: per-block LoRA parameter counts (a LoRA block is frozen but trains adapters);
    ``embeddings`` / ``head``: whether those weights are trained;
    ``cached_prefix``: number of bottom blocks whose outputs come from a cache (no forward);
    ``grad_outputs_from``: lowest block whose output gradient is wanted though nothing there
    trains (an attribution pass); the blocks above it run their activation backward;
    ``run_blocks``: blocks at or above this index do not run (None: all);
    ``readouts``: LM-head read-outs of the logit positions, each after that many blocks
    (None: one, after the top block that runs; ``()``: none).
    """

    trained_blocks: frozenset[int] = frozenset()
    lora_params: dict[int, int] = field(default_factory=dict)
    embeddings: bool = False
    head: bool = False
    cached_prefix: int = 0
    grad_outputs_from: int | None = None
    run_blocks: int | None = None
    readouts: tuple[int, ...] | None = None


def _needs_grad_below(spec: TrainableSpec, n_blocks: int) -> list[bool]:
    """Entry k: something below block k (embeddings, blocks < k) needs a gradient."""
    out, acc = [], spec.embeddings
    for k in range(n_blocks):
        out.append(acc)
        wants = k in spec.trained_blocks or k in spec.lora_params or k == spec.grad_outputs_from
        acc = acc or wants
    return out + [acc]


def head_flops(shape: ModelShape, positions: int) -> float:
    """Forward FLOPs of the LM head (or any d × V read-out) at ``positions`` positions."""
    return 2.0 * shape.hidden * shape.vocab * positions


def step_flops(
    shape: ModelShape, spec: TrainableSpec, tokens: int, seq_len: int, logit_positions: int
) -> dict[str, float]:
    """Analytic forward/backward FLOPs of one training step (see the module docstring).

    ``tokens``: processed positions (batch × padded length); ``seq_len``: padded length T;
    ``logit_positions``: positions whose logits each read-out computes (batch for the
    label-token loss).
    """
    top = shape.num_layers if spec.run_blocks is None else spec.run_blocks
    readouts = (top,) if spec.readouts is None else spec.readouts
    needs_grad_below = _needs_grad_below(spec, shape.num_layers)
    fwd = bwd = 0.0
    for k, block in enumerate(shape.blocks[:top]):
        attn = 4.0 * seq_len * block.attn_width
        if k >= spec.cached_prefix:
            fwd += tokens * (2.0 * block.params + attn)
        if k in spec.trained_blocks:
            bwd += tokens * (4.0 * block.params + 2 * attn)
        elif k in spec.lora_params:
            bwd += tokens * (2.0 * block.params + 6.0 * spec.lora_params[k] + 2 * attn)
            fwd += tokens * 2.0 * spec.lora_params[k]
        elif needs_grad_below[k]:
            bwd += tokens * (2.0 * block.params + 2 * attn)
    for after in readouts:
        head = head_flops(shape, logit_positions)
        fwd += head
        if needs_grad_below[after]:
            bwd += head
        if spec.head:
            bwd += head
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def prefix_forward_flops(shape: ModelShape, n_blocks: int, tokens: int, seq_len: int) -> float:
    """Forward FLOPs of the bottom ``n_blocks`` blocks (the cost of building a prefix cache)."""
    return sum(
        tokens * (2.0 * b.params + 4.0 * seq_len * b.attn_width) for b in shape.blocks[:n_blocks]
    )


def saving_rate(cost: float, reference: float) -> float:
    """``1 − cost / reference`` (the spec's computation cost saving rate)."""
    return float("nan") if not reference else 1.0 - cost / reference


# --------------------------------------------------------------------------- measurement


class Stopwatch:
    """Wall-clock timer for steps: ``with sw.step(): ...``; ``sw.steps`` holds the seconds."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.steps: list[float] = []
        self.cuda = torch.device(device).type == "cuda"

    def step(self):
        return _Timed(self)

    @property
    def total(self) -> float:
        return float(sum(self.steps))

    def summary(self) -> dict[str, float]:
        s = sorted(self.steps)
        return {
            "steps": len(s),
            "total_s": self.total,
            "mean_step_s": self.total / len(s) if s else float("nan"),
            "median_step_s": s[len(s) // 2] if s else float("nan"),
        }


class _Timed:
    def __init__(self, sw: Stopwatch):
        self.sw = sw

    def __enter__(self):
        if self.sw.cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.sw.cuda:
            torch.cuda.synchronize()
        self.sw.steps.append(time.perf_counter() - self.t0)
        return False


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    try:
        return psutil.Process().memory_info().rss / 2**20
    except psutil.Error:  # no access to this process's counters: fall back to /proc
        kb = _read_status_kb("VmRSS")
        return kb / 1024 if kb is not None else float("nan")


class PeakMemory:
    """Peak memory during a ``with`` block: ``peak_rss_mb`` (process) and ``peak_cuda_mb``.

        with PeakMemory(device) as run:
            with PeakMemory(device) as stage: ...
        run.peak_rss_mb >= stage.peak_rss_mb

    On Linux the peak RSS counter is reset on entry, so the value is this block's peak
    (``rss_scope == "block"``); elsewhere it is the process's lifetime peak (``"process"``).
    Blocks nest: an inner block's reset first hands the peak so far to the blocks around it.
    """

    _open: list[PeakMemory] = []  # blocks entered and not yet left, innermost last

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.peak_rss_mb = float("nan")
        self.peak_cuda_mb: float | None = None
        self.rss_scope = "process"
        self._carried_rss_kb = 0
        self._carried_cuda = 0

    def __enter__(self):
        self._carry_into_open_blocks()
        self.rss_scope = "block" if _reset_peak_rss() else "process"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        PeakMemory._open.append(self)
        return self

    def __exit__(self, *exc):
        PeakMemory._open.remove(self)
        hwm = _read_status_kb("VmHWM") if self.rss_scope == "block" else None
        if hwm is not None:
            self.peak_rss_mb = max(hwm, self._carried_rss_kb) / 1024
        else:
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_rss_mb = ru / 2**20 if sys.platform == "darwin" else ru / 1024
        if self.cuda:
            self.peak_cuda_mb = max(torch.cuda.max_memory_allocated(), self._carried_cuda) / 2**20
        return False

    def _carry_into_open_blocks(self) -> None:
        """The counters are process-wide: keep the enclosing blocks' peaks before resetting."""
        if not PeakMemory._open:
            return
        hwm = _read_status_kb("VmHWM") or 0
        for block in PeakMemory._open:
            block._carried_rss_kb = max(block._carried_rss_kb, hwm)
            if block.cuda:
                block._carried_cuda = max(block._carried_cuda, torch.cuda.max_memory_allocated())

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_mb": self.peak_cuda_mb,
            "rss_scope": self.rss_scope,
        }


def summarize(stages: list[dict], wall_s: float, peak: PeakMemory, **extra) -> dict:
    """A run's cost dict in the keys every transfer method records: ``wall_s``, the PeakMemory
    fields, processed and real ``tokens``, ``flops`` summed over ``stages``, the FLOP model."""
    return {
        "wall_s": wall_s,
        **peak.as_dict(),
        "tokens": sum(s.get("tokens", 0) for s in stages),
        "real_tokens": sum(s.get("real_tokens", 0) for s in stages),
        "flops": float(sum(s.get("flops", 0.0) for s in stages)),
        "flop_model": FLOP_MODEL,
        **extra,
    }


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameters (shared tensors counted once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total}


def shape_dict(shape: ModelShape) -> dict:
    d = asdict(shape)
    d["blocks"] = [b["params"] for b in d["blocks"]]
    return d


__all__ = [
    "FLOP_MODEL",
    "BlockCost",
    "ModelShape",
    "PeakMemory",
    "Stopwatch",
    "TrainableSpec",
    "current_rss_mb",
    "head_flops",
    "model_shape",
    "parameter_counts",
    "prefix_forward_flops",
    "saving_rate",
    "shape_dict",
    "step_flops",
    "summarize",
]
