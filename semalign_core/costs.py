"""Cost accounting of SemAlign, the baselines and SALF: analytic FLOPs and memory, wall time, peak
memory.

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
* LoRA on a frozen block: forward ``2 n_lora`` more; backward the activation gradients ``2 n``
  and the adapters' ``4 n_lora`` (their weight gradients ``2 n_lora``, the gradient through B
  and then A ``2 n_lora``; an earlier version counted ``6 n_lora``, which FlopCounterMode showed
  to be wrong: tests/test_cost_model.py). The lowest LoRA block on a state that needs no
  gradient (a frozen or cached prefix) skips the activation gradient of the projections that
  read its input (q, k, v and their adapters' A: about 6 % of that block's step in a Llama
  block); the model keeps ``2 n`` there, a small over-count;
* the embedding lookup costs no multiply-adds (0 forward, 0 backward: the forward gathers rows,
  the gradient is a scatter-add into them); the LM head costs ``2 d V`` forward per position
  whose logits are computed (one position per example for the label-token loss), ``2 d V``
  backward for the activation gradient when anything below it needs a gradient and ``2 d V``
  more (the weight gradient) when the head is trained. A step may read the head out after any
  block (SemAlign's logit lens), several times, or not at all;
* blocks above the step's top block do not run (a loss read out part-way up costs nothing above);
* a cached frozen prefix costs its forward once (the cache build), not once per epoch;
* only block and head matmuls count: norms, softmax, the losses' own arithmetic (cross-entropy,
  KL, CKA Gram matrices) and the one last-position logit row of ``logits_to_keep=1`` do not.

:func:`step_flops` also splits the total into ``blocks``, ``embedding`` (0) and ``head``. Around
it: :func:`optimizer_flops` (the elementwise optimizer step, which FlopCounterMode does not see:
it counts matmuls only), :func:`analysis_flops` (a forward-only analysis pass, with the head's
pseudo-inverse :func:`pinv_flops`) and :func:`train_memory_bytes` (weights, gradients, optimizer
state, the activations autograd saves, a prefix cache). tests/test_cost_model.py checks the FLOPs
per component against ``torch.utils.flop_counter.FlopCounterMode`` on SALF's loop and the
activations against the bytes ``saved_tensors_hooks`` sees.

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import psutil
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery

# Recorded in every cost dict, so a change of model is visible ("/2": LoRA backward 4 n_lora, not
# 6 n_lora; records made before it say "costs.step_flops").
FLOP_MODEL = "costs.step_flops/2"

# --------------------------------------------------------------------------- analytic FLOPs


@dataclass(frozen=True)
class BlockCost:
    """What one decoder block costs per token: its parameter count and attention width, and for
    the activation-memory estimate its attention heads and MLP width (0: unknown)."""

    params: int
    attn_width: int  # n_heads * head_dim (the d_attn of Kaplan et al.)
    heads: int = 0
    intermediate: int = 0


@dataclass(frozen=True)
class ModelShape:
    """The parts of a model that the FLOPs formula needs (``model_shape(model)`` builds it)."""

    blocks: tuple[BlockCost, ...]
    hidden: int
    vocab: int
    embedding_params: int
    head_params: int
    tied: bool
    other_params: int = 0  # outside blocks, embedding and head: the final norm

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def total_params(self) -> int:
        """Every parameter once (a tied head is the embedding), LoRA adapters excluded."""
        head = 0 if self.tied else self.head_params
        blocks = sum(b.params for b in self.blocks)
        return blocks + self.embedding_params + head + self.other_params


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Per-block parameter counts (LoRA adapters excluded) and head size of a causal LM."""
    base = surgery.unwrap(model)
    config = base.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = surgery.hidden_size(model)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    # GPT-2 calls it n_inner (None: 4 d)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    blocks = []
    for layer in surgery.decoder_layers(model):
        n = sum(p.numel() for name, p in layer.named_parameters() if "lora_" not in name)
        blocks.append(BlockCost(n, heads * head_dim, heads, inner or 4 * hidden))
    emb = surgery.input_embeddings(model).weight
    head = surgery.unembedding(model).weight
    every = {id(p): p.numel() for name, p in base.named_parameters() if "lora_" not in name}
    shape = ModelShape(
        blocks=tuple(blocks),
        hidden=hidden,
        vocab=head.shape[0],
        embedding_params=emb.numel(),
        head_params=head.numel(),
        tied=head is emb,
    )
    return replace(shape, other_params=sum(every.values()) - shape.total_params)


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
    """Analytic forward/backward FLOPs of one training step (see the module docstring), and
    their split into ``blocks``, ``embedding`` and ``head`` (each forward + backward, summing to
    ``total``; the head's backward is its input gradient and, when it trains, its weight
    gradient; the embedding is a lookup, 0 both ways).

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
            bwd += tokens * (2.0 * block.params + 4.0 * spec.lora_params[k] + 2 * attn)
            fwd += tokens * 2.0 * spec.lora_params[k]
        elif needs_grad_below[k]:
            bwd += tokens * (2.0 * block.params + 2 * attn)
    blocks = fwd + bwd
    head = head_flops(shape, logit_positions)
    for after in readouts:
        fwd += head
        if needs_grad_below[after]:
            bwd += head
        if spec.head:
            bwd += head
    return {
        "forward": fwd,
        "backward": bwd,
        "total": fwd + bwd,
        "blocks": blocks,
        "embedding": 0.0,
        "head": fwd + bwd - blocks,
    }


def prefix_forward_flops(shape: ModelShape, n_blocks: int, tokens: int, seq_len: int) -> float:
    """Forward FLOPs of the bottom ``n_blocks`` blocks (the cost of building a prefix cache)."""
    return sum(
        tokens * (2.0 * b.params + 4.0 * seq_len * b.attn_width) for b in shape.blocks[:n_blocks]
    )


# Elementwise FLOPs per trained parameter of one optimizer step, counted on torch's reference
# algorithms (the pseudo-code of the torch.optim docs) as written, weight decay included:
# AdamW: weight decay θ −= γλθ (2), m = β1 m + (1−β1) g (3), v = β2 v + (1−β2) g² (4), the two
# bias corrections m/(1−β1ᵗ), v/(1−β2ᵗ) (1 each), θ −= γ m̂ / (√v̂ + ε) (5: sqrt, +ε, division,
# ·γ, subtraction) = 16; torch's kernels fold the scalar factors (about 14).
# SGD without momentum (SALF's ``sgd``): g += λθ (2), θ −= γ g (2) = 4.
OPTIMIZER_FLOPS_PER_PARAM = {"adamw": 16, "sgd": 4}
# Tensors of optimizer state per trained parameter: AdamW's two moments; SGD without momentum
# keeps none.
OPTIMIZER_STATE_PER_PARAM = {"adamw": 2, "sgd": 0}


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZER_FLOPS_PER_PARAM:
        raise InvalidParameterError(
            f"optimizer must be one of {', '.join(OPTIMIZER_FLOPS_PER_PARAM)}, got {optimizer!r}"
        )


def optimizer_flops(trained_params: int, optimizer: str = "adamw") -> float:
    """FLOPs of one optimizer step over ``trained_params`` parameters
    (:data:`OPTIMIZER_FLOPS_PER_PARAM`). Elementwise work, not matmuls: FlopCounterMode does
    not count it, and beside a step's ``6 n`` per token it is small (16 / (6 × tokens))."""
    _check_optimizer(optimizer)
    return float(OPTIMIZER_FLOPS_PER_PARAM[optimizer] * trained_params)


def pinv_flops(shape: ModelShape) -> float:
    """FLOPs of the pseudo-inverse of the d × V head (the semantic bases, ``torch.linalg.pinv``).

    pinv goes through a thin SVD of the V × d matrix (m = V ≥ n = d): Golub & Van Loan's R-SVD
    (QR first, then the SVD of the d × d factor) for Σ, U₁ and V costs ``6 V d² + 20 d³``
    (Matrix Computations, the SVD cost table), and forming V Σ⁻¹ U₁ᵀ one more ``2 V d²``:
    ``8 V d² + 20 d³`` in all. LAPACK's divide-and-conquer driver differs by a constant factor;
    the term is there so that a V-sized head is not costed at zero."""
    v, d = float(shape.vocab), float(shape.hidden)
    return 8.0 * v * d * d + 20.0 * d**3


def analysis_flops(
    shape: ModelShape,
    tokens: int,
    seq_len: int,
    examples: int,
    head_readouts_per_example: int = 0,
    semantic_bases: bool = True,
) -> float:
    """FLOPs of a forward-only analysis pass (SALF's transition trace and deviations).

    Every block's forward over ``tokens`` processed positions of padded length ``seq_len`` (no
    backward), ``head_readouts_per_example × examples`` head read-outs (a logit-lens deviation
    reads the head in each of the L+1 spaces: ``L + 1``; a cosine deviation reads none: 0) and,
    with ``semantic_bases``, :func:`pinv_flops`, the pseudo-inverse that the bases need."""
    blocks = prefix_forward_flops(shape, shape.num_layers, tokens, seq_len)
    bases = pinv_flops(shape) if semantic_bases else 0.0
    return blocks + head_flops(shape, head_readouts_per_example * examples) + bases


def _block_activation_floats(block: BlockCost, hidden: int, seq_len: int, kind: str) -> float:
    """Values per token that autograd saves in one block (formula: :func:`activation_bytes`)."""
    d, attn, inner = hidden, block.attn_width, block.intermediate
    floats = 2 * d + 3 * attn + block.heads * seq_len + 3 * inner  # saved whenever it records
    if kind in ("trained", "lora"):  # the linear layers' inputs, for their weight gradients
        floats += 2 * d + attn + inner
    if kind == "trained":  # the RMSNorms' normalised inputs, for their weights' gradients
        floats += 2 * d
    return float(floats)


def activation_bytes(
    shape: ModelShape,
    spec: TrainableSpec,
    tokens: int,
    seq_len: int,
    param_bytes: int = 4,
    logit_positions: int | None = None,
) -> float:
    """Bytes autograd saves for one step's backward (:func:`train_memory_bytes`'s
    ``activations``), for Llama-like blocks (pre-norm RMSNorm, attention, gated MLP).

    Per processed token, every block that runs with autograd recording (one whose own weights
    or LoRA adapters train, or a frozen one above such a block) saves, with d the hidden size,
    d_attn = heads × head_dim, I the MLP width and T the padded length:

    * always: each RMSNorm's input (``2 d``), Q and the head-expanded K and V for QKᵀ and AV
      (``3 d_attn``), the softmax probabilities (``heads × T``), the SiLU input, its output and
      the up projection for the gated product (``3 I``);
    * a linear layer saves its input only for its weight gradient: trained and LoRA blocks add
      the inputs of q/k/v and gate/up (``2 d``), o (``d_attn``) and down (``I``); an RMSNorm
      saves its normalised input only for its weight's gradient: trained blocks add ``2 d``.

    So a trained block saves ``6 d + 4 d_attn + heads·T + 4 I`` values per token, a LoRA block
    ``4 d + 4 d_attn + heads·T + 4 I`` (the adapters' rank-r states, 7 r, left out) and a frozen
    one ``2 d + 3 d_attn + heads·T + 3 I``; a frozen block with nothing below it that needs a
    gradient saves nothing. Per logit position (``logit_positions``; None: one per example,
    tokens / T) of a read-out that back-propagates: the loss's log-softmax (``V``) and the final
    norm's input, normalised state and output (``3 d``); and 8 bytes per token of token ids when
    the embeddings train. Values are ``param_bytes`` wide. Against the bytes saved_tensors_hooks
    sees on tiny Llama models (tests/test_cost_model.py) this is within 1.5 % for trained and
    frozen blocks and 3-6 % under for LoRA (the r-sized states)."""
    top = shape.num_layers if spec.run_blocks is None else spec.run_blocks
    readouts = (top,) if spec.readouts is None else spec.readouts
    positions = tokens // max(seq_len, 1) if logit_positions is None else logit_positions
    needs_grad_below = _needs_grad_below(spec, shape.num_layers)
    floats = 0.0
    for k, block in enumerate(shape.blocks[:top]):
        if k in spec.trained_blocks:
            kind = "trained"
        elif k in spec.lora_params:
            kind = "lora"
        elif needs_grad_below[k]:
            kind = "frozen"
        else:
            continue  # no input needs a gradient: nothing is recorded
        floats += tokens * _block_activation_floats(block, shape.hidden, seq_len, kind)
    for after in readouts:
        if needs_grad_below[after] or spec.head:
            floats += positions * (shape.vocab + 3 * shape.hidden)
    return floats * param_bytes + (8.0 * tokens if spec.embeddings else 0.0)


def train_memory_bytes(
    shape: ModelShape,
    spec: TrainableSpec,
    trained_params: int,
    tokens: int,
    seq_len: int,
    param_bytes: int = 4,
    optimizer: str = "adamw",
    cached_prefix_tokens: int = 0,
    logit_positions: int | None = None,
) -> dict[str, float]:
    """Analytic memory of one training step, in bytes, by component, and their ``total``.

    ``weights``: every parameter once (a tied head is the embedding) plus the LoRA adapters;
    ``gradients``: one per trained parameter; ``optimizer_state``
    (:data:`OPTIMIZER_STATE_PER_PARAM`): AdamW's two moments per trained parameter, nothing for
    SGD without momentum; ``activations``: what autograd saves for the backward
    (:func:`activation_bytes`); ``prefix_cache``: the cached hidden states,
    ``cached_prefix_tokens × d``. Values are ``param_bytes`` wide (4: fp32)."""
    _check_optimizer(optimizer)
    weights = shape.total_params + sum(spec.lora_params.values())
    state = OPTIMIZER_STATE_PER_PARAM[optimizer] * trained_params
    out = {
        "weights": float(weights * param_bytes),
        "gradients": float(trained_params * param_bytes),
        "optimizer_state": float(state * param_bytes),
        "activations": activation_bytes(shape, spec, tokens, seq_len, param_bytes, logit_positions),
        "prefix_cache": float(cached_prefix_tokens * shape.hidden * param_bytes),
    }
    out["total"] = sum(out.values())
    return out


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


class SpanTimer:
    """Total time of spans inside a step that a :class:`Stopwatch` already times, without adding
    synchronisations of its own: ``perf_counter`` on the CPU, CUDA event pairs on a GPU (read
    once, after the loop), so timing a part does not change the step's time."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self._seconds = 0.0
        self._events: list[tuple] = []

    @contextmanager
    def span(self):
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - t0

    @property
    def total(self) -> float:
        if self._events:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self._events) / 1000.0  # ms -> s
        return self._seconds


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
    "OPTIMIZER_FLOPS_PER_PARAM",
    "OPTIMIZER_STATE_PER_PARAM",
    "BlockCost",
    "ModelShape",
    "PeakMemory",
    "SpanTimer",
    "Stopwatch",
    "TrainableSpec",
    "activation_bytes",
    "analysis_flops",
    "current_rss_mb",
    "head_flops",
    "model_shape",
    "optimizer_flops",
    "parameter_counts",
    "pinv_flops",
    "prefix_forward_flops",
    "saving_rate",
    "shape_dict",
    "step_flops",
    "summarize",
    "train_memory_bytes",
]
