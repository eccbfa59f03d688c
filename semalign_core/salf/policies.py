"""Freezing policies: which parameters train, decided once or changed during training.

Every policy runs through the same loop (:func:`semalign_core.salf.finetune.finetune`). A policy
returns a :class:`Trainable` state at setup (and may return a new one at a step boundary); the
loop applies it (``requires_grad``), rebuilds the optimizer whenever the state changes (the LISA
bug: an optimizer built before a layer is activated never updates it), and runs everything below
the lowest trained part under ``torch.no_grad``.

Policies: ``full``; ``salf`` (eof from the semantic analysis, per dataset or per example);
``fixed`` (freeze the first ¼, ½, ¾ or a given eof); ``random`` (a seeded random set of blocks
with SALF's trainable depth: bottom-up freezing with the same depth would pin eof itself);
``signal`` (logit-lens CE drop, block influence); ``autofreeze``; ``lisa``; ``lora`` (all layers
or SALF's suffix).

Embeddings and the LM head are frozen by every freezing policy (``train_head=True`` trains an
untied head; with tied embeddings that would change the frozen prefix's input, so it is refused).
Full fine-tuning and LISA train them (LISA keeps embeddings and head always active).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from semalign_core import costs
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.salf import analysis, gains


@dataclass(frozen=True)
class Trainable:
    """What trains now. ``blocks``: 0-based indices of trained blocks; ``lora``: only their LoRA
    adapters train; ``example_eofs``: per-example eof (per-example SALF), else None."""

    blocks: frozenset[int]
    embeddings: bool = False
    head: bool = False
    norm: bool = True
    lora: bool = False
    example_eofs: tuple[int, ...] | None = None
    padding: str = "min"

    @property
    def boundary(self) -> int:
        """Number of bottom blocks that need no gradient (−1 when the embeddings train)."""
        if self.embeddings:
            return -1
        # With only the norm or head trained, no block needs a gradient.
        return min(self.blocks) if self.blocks else 10**9

    def eof(self, num_layers: int) -> int:
        """The bottom-up eof this state corresponds to (blocks below the lowest trained one)."""
        return min(max(self.boundary, 0), num_layers)


def suffix_state(eof: int, num_layers: int, **kw) -> Trainable:
    """Embeddings and blocks 1..eof frozen; blocks eof+1..L (0-based eof..L−1) and norm train."""
    eof = gains.check_eof(eof, num_layers)
    return Trainable(blocks=frozenset(range(eof, num_layers)), **kw)


@dataclass
class PolicyContext:
    """What a policy may look at when it decides: the model, data and the run's settings."""

    model: Any
    tokenizer: Any
    train_records: list[dict]
    task: str | None
    label_words: tuple[str, ...]
    template: str | None = None
    max_length: int | None = 64
    seed: int = 0
    batch_size: int = 8
    analysis_batch_size: int = 16
    epochs: int = 1

    @property
    def num_layers(self) -> int:
        return surgery.num_layers(self.model)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run (batches per epoch × epochs) with the plain batching; a
        per-example ``bucket`` plan forms more batches (only AutoFreeze reads this, and it has
        no per-example eof)."""
        return -(-len(self.train_records) // max(self.batch_size, 1)) * self.epochs


class Policy:
    """Base class. ``static``: the frozen set never changes (a frozen prefix can be cached)."""

    name = "policy"
    static = True

    def setup(self, ctx: PolicyContext) -> Trainable:
        raise NotImplementedError

    def wrap_model(self, model):
        """A policy that changes the model (LoRA) returns the wrapped model here."""
        return model

    def on_step_start(self, step: int) -> Trainable | None:
        return None

    def after_backward(self, step: int, model) -> Trainable | None:
        return None

    def describe(self) -> dict:
        return {"name": self.name}

    def analysis_flops(self, shape) -> float:
        """Analytic FLOPs of the policy's own analysis pass at set-up, paid by every run (none by
        default)."""
        return 0.0

    def bases_flops(self, shape) -> float:
        """Analytic FLOPs of what the analysis computes once per model and caches on disk (the
        semantic bases' pseudo-inverse); none by default."""
        return 0.0


@dataclass
class FullFinetune(Policy):
    """Every block and the final norm train; the embeddings and LM head too unless
    ``embeddings=False`` (then it is eof = 0, the like-for-like reference of the freezing
    policies)."""

    embeddings: bool = True
    name: str = "full"

    def setup(self, ctx):
        L = ctx.num_layers
        return Trainable(
            blocks=frozenset(range(L)), embeddings=self.embeddings, head=self.embeddings
        )

    def describe(self):
        return {"name": self.name, "embeddings": self.embeddings}


@dataclass
class FixedEof(Policy):
    """Freeze embeddings + the first ``eof`` blocks, or a ``fraction`` of them (¼ → eof = L/4)."""

    eof: int | None = None
    fraction: float | None = None
    train_head: bool = False
    name: str = "fixed"

    def setup(self, ctx):
        L = ctx.num_layers
        if (self.eof is None) == (self.fraction is None):
            raise InvalidParameterError("FixedEof needs exactly one of eof or fraction")
        eof = self.eof if self.eof is not None else int(round(self.fraction * L))
        self.resolved_eof = gains.check_eof(eof, L)
        return suffix_state(self.resolved_eof, L, head=_head_ok(ctx.model, self.train_head))

    def describe(self):
        return {
            "name": self.name,
            "eof": getattr(self, "resolved_eof", self.eof),
            "fraction": self.fraction,
        }


def _head_ok(model, train_head: bool) -> bool:
    if train_head and surgery.unembedding(model).weight is surgery.input_embeddings(model).weight:
        raise InvalidParameterError(
            "train_head=True with tied embeddings would change the frozen prefix; "
            "untie the head first"
        )
    return train_head


@dataclass
class RandomEof(Policy):
    """A seeded random set of ``depth`` trained blocks (not necessarily contiguous or on top):
    the control for "is it *where* SALF freezes or only *how much*"."""

    depth: int
    seed: int = 0
    name: str = "random"

    def setup(self, ctx):
        L = ctx.num_layers
        if not 1 <= self.depth <= L:
            raise InvalidParameterError(f"random policy depth must be in 1..{L}, got {self.depth}")
        self.blocks = sorted(random.Random(self.seed).sample(range(L), self.depth))
        return Trainable(blocks=frozenset(self.blocks))

    def describe(self):
        return {
            "name": self.name,
            "depth": self.depth,
            "seed": self.seed,
            "blocks": getattr(self, "blocks", None),
        }


@dataclass
class SignalEof(Policy):
    """eof from a layer signal over the training data, per dataset or per example.

    ``signal``: ``deviation`` (SALF: a deviation kind + a gain formula; the default gain is the
    scaling-law reconstruction ``scaling_kaplan``), ``block_influence`` (argmax of
    1 − cos(h_k, h_{k−1})). ``per_example`` gives each example its eof and batches them with
    ``padding`` ("min" or "bucket"). ``budget`` raises eof (see gains.apply_budget).
    ``first_block``: the shallowest block whose gain may win (2: space 0 left out, see
    :data:`~semalign_core.salf.gains.FIRST_BLOCK`).
    """

    signal: str = "deviation"
    deviation: str = "cos_normed"
    gain: str = "scaling_kaplan"
    per_example: bool = False
    padding: str = "min"
    budget: gains.Budget | None = None
    flops_of_eof: Callable[[int], float] | None = None
    full_flops: float | None = None
    first_block: int = gains.FIRST_BLOCK
    name: str = "salf"
    analysis_: dict = field(default_factory=dict, repr=False)

    def setup(self, ctx):
        L = ctx.num_layers
        trace = analysis.transition_trace(
            ctx.model,
            ctx.tokenizer,
            ctx.train_records,
            ctx.task,
            ctx.label_words,
            ctx.template,
            batch_size=ctx.analysis_batch_size,
            max_length=ctx.max_length,
        )
        signal, g, per_ex = self._signal(ctx.model, trace)
        eof_raw = gains.choose_eof(g, first_block=self.first_block)
        eof = gains.apply_budget(eof_raw, L, self.budget, self.flops_of_eof, self.full_flops)
        self.analysis_ = {
            "gains": np.asarray(g).tolist(),
            "eof_raw": eof_raw,
            "eof": eof,
            "analysis_batches": trace.meta["batch_shapes"],
        }
        self.analysis_.update(self._diagnostics(ctx.model, signal))
        if per_ex is None:
            return suffix_state(eof, L)
        per_ex = [
            gains.apply_budget(int(e), L, self.budget, self.flops_of_eof, self.full_flops)
            for e in per_ex
        ]
        self.analysis_["example_eofs"] = per_ex
        return replace(
            suffix_state(min(per_ex), L), example_eofs=tuple(per_ex), padding=self.padding
        )

    def _signal(self, model, trace) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(per-example signal matrix, gains per block, per-example eofs or None)."""
        first = self.first_block
        if self.signal == "deviation":
            dev = analysis.deviations(model, trace, self.deviation).numpy()
            params = analysis.block_params(model)
            g = gains.compute_gains(dev.mean(0), params, self.gain)
            per_ex = (
                gains.eof_per_example(dev, params, self.gain, first_block=first)
                if self.per_example
                else None
            )
            return dev, g, per_ex
        if self.signal == "block_influence":
            bi = analysis.block_influence(trace).numpy()
            per_ex = (
                np.array([gains.choose_eof(r, first_block=first) for r in bi])
                if self.per_example
                else None
            )
            return bi, bi.mean(0), per_ex
        raise InvalidParameterError(
            f"signal must be 'deviation' or 'block_influence', got {self.signal!r}"
        )

    def analysis_flops(self, shape) -> float:
        """The trace's forward over the analysed prompts and the logit lens's read-outs in every
        space (``logit_lens_ce``): what every run pays. The bases are :meth:`bases_flops`."""
        batches = self.analysis_.get("analysis_batches") or []
        tokens = sum(b * t for b, t in batches)
        if not tokens:
            return 0.0
        # tokens × 4·T·d_attn per batch is exact with the token-weighted mean length
        seq_len = sum(b * t * t for b, t in batches) / tokens
        return costs.analysis_flops(
            shape,
            tokens,
            seq_len,
            sum(b for b, _ in batches),
            head_readouts_per_example=shape.num_layers + 1 if self._logit_lens() else 0,
            semantic_bases=False,
        )

    def bases_flops(self, shape) -> float:
        """The head's pseudo-inverse that cosine deviations need: ``semantic_bases`` caches it
        on disk per model, so only a model's first run computes it (a one-off, not per run)."""
        cosine = self.signal == "deviation" and not self._logit_lens()
        return costs.pinv_flops(shape) if cosine and self.analysis_ else 0.0

    def _logit_lens(self) -> bool:
        return self.signal == "deviation" and self.deviation == "logit_lens_ce"

    def _diagnostics(self, model, signal: np.ndarray) -> dict:
        """The deviation trace, the eof of every gain formula on it and the bootstrap stability
        of this policy's eof over the analysed examples (deviation signals only)."""
        if self.signal != "deviation":
            return {"deviation": None}
        params = analysis.block_params(model)
        return {
            "deviation": signal.mean(0).tolist(),
            "first_block": self.first_block,
            "eof_by_gain": gains.eof_by_gain(signal.mean(0), params, self.first_block),
            "eof_stability": gains.eof_stability(signal, params, self.gain, self.first_block)
            if len(signal) > 1
            else None,
        }

    def describe(self):
        return {
            "name": self.name,
            "signal": self.signal,
            "deviation": self.deviation,
            "gain": self.gain,
            "first_block": self.first_block,
            "per_example": self.per_example,
            "padding": self.padding,
            "budget": None if self.budget is None else vars(self.budget),
            **self.analysis_,
        }


def salf_policy(**kw) -> SignalEof:
    return SignalEof(signal="deviation", name=kw.pop("name", "salf"), **kw)


def logit_lens_policy(**kw) -> SignalEof:
    return SignalEof(
        signal="deviation",
        deviation="logit_lens_ce",
        gain="drop",
        name=kw.pop("name", "logit_lens_ce"),
        **kw,
    )


def block_influence_policy(**kw) -> SignalEof:
    return SignalEof(signal="block_influence", name=kw.pop("name", "block_influence"), **kw)


@dataclass
class AutoFreeze(Policy):
    """AutoFreeze (Liu et al. 2021), bottom-up and never unfreezing.

    At each checkpoint, for each still-trained block the change of its mean gradient norm over
    the steps since the previous checkpoint, |‖g‖_now − ‖g‖_prev| / ‖g‖_prev, is compared with
    the ``percentile``-th percentile of those changes; the lowest trained block is frozen when
    its change is at or below it (one block per decision). ``min_trainable`` blocks always
    train. Checkpoints fall every ``interval`` steps, or with ``interval=None`` at the
    boundaries of the run split into ``decisions`` + 2 parts: the first only sets the
    reference, so a run of at least ``decisions`` + 2 steps decides ``decisions`` times (a
    shorter one fewer: its boundaries coincide). No checkpoint falls on the last step (no step
    would train at the depth it chose).
    """

    interval: int | None = None
    percentile: float = 50.0
    min_trainable: int = 1
    decisions: int = 6
    name: str = "autofreeze"
    static = False

    def setup(self, ctx):
        self.L = ctx.num_layers
        self.layers = surgery.decoder_layers(ctx.model)
        self.checkpoints = self._checkpoints(ctx.total_steps)
        self.frozen_upto = 0
        self.acc, self.acc_steps = np.zeros(self.L), 0
        self.prev: np.ndarray | None = None
        self.history: list[tuple[int, int]] = [(0, 0)]
        return suffix_state(0, self.L)

    def _checkpoints(self, total_steps: int) -> frozenset[int]:
        """Step counts after which the gradient norms are compared (all before the last step)."""
        if self.interval is not None:
            if self.interval < 1:
                raise InvalidParameterError(f"AutoFreeze interval must be ≥ 1, got {self.interval}")
            return frozenset(range(self.interval, total_steps, self.interval))
        if self.decisions < 1:
            raise InvalidParameterError(f"AutoFreeze decisions must be ≥ 1, got {self.decisions}")
        parts = self.decisions + 2
        points = {i * total_steps // parts for i in range(1, parts)}
        return frozenset(p for p in points if 0 < p < total_steps)

    def after_backward(self, step, model):
        for k in range(self.frozen_upto, self.L):
            sq = sum(
                float(p.grad.pow(2).sum())
                for p in self.layers[k].parameters()
                if p.grad is not None
            )
            self.acc[k] += sq**0.5
        self.acc_steps += 1
        if step + 1 not in self.checkpoints:
            return None
        # means, not sums: intervals of a split run differ by a step
        now, self.acc, self.acc_steps = self.acc / self.acc_steps, np.zeros(self.L), 0
        prev, self.prev = self.prev, now
        if prev is None or self.L - self.frozen_upto <= self.min_trainable:
            return None
        live = range(self.frozen_upto, self.L)
        change = np.array([abs(now[k] - prev[k]) / max(prev[k], 1e-12) for k in live])
        if change[0] <= np.percentile(change, self.percentile):
            self.frozen_upto += 1
            self.history.append((step + 1, self.frozen_upto))
            return suffix_state(self.frozen_upto, self.L)
        return None

    def describe(self):
        return {
            "name": self.name,
            "interval": self.interval,
            "decisions": self.decisions,
            "checkpoints": sorted(getattr(self, "checkpoints", ())),
            "percentile": self.percentile,
            "history": getattr(self, "history", None),
        }


@dataclass
class Lisa(Policy):
    """LISA (Pan et al. 2024): every ``interval`` steps a new random set of ``n_active`` blocks
    trains; embeddings and LM head always train as in the paper, unless ``embeddings=False`` (the
    like-for-like setting where no policy trains them). The loop rebuilds the optimizer on each
    switch."""

    n_active: int = 2
    interval: int = 4
    seed: int = 0
    embeddings: bool = True
    name: str = "lisa"
    static = False

    def setup(self, ctx):
        self.L = ctx.num_layers
        if not 1 <= self.n_active <= self.L:
            raise InvalidParameterError(
                f"LISA n_active must be in 1..{self.L}, got {self.n_active}"
            )
        self.rng = random.Random(self.seed)
        self.history: list[tuple[int, list[int]]] = []
        return self._draw(0)

    def _draw(self, step):
        active = sorted(self.rng.sample(range(self.L), self.n_active))
        self.history.append((step, active))
        return Trainable(blocks=frozenset(active), embeddings=self.embeddings, head=self.embeddings)

    def on_step_start(self, step):
        return self._draw(step) if step > 0 and step % self.interval == 0 else None

    def describe(self):
        return {
            "name": self.name,
            "n_active": self.n_active,
            "interval": self.interval,
            "seed": self.seed,
            "embeddings": self.embeddings,
            "history": getattr(self, "history", None),
        }


@dataclass
class Lora(Policy):
    """LoRA adapters (peft) on the blocks from ``eof`` up (eof=0: all layers), base weights frozen.

    ``target_modules``: names of the adapted layers; None adapts every linear layer of the blocks
    (``surgery.block_linear_names``: q/k/v/o and gate/up/down in Llama-like blocks, GPT-2's
    Conv1D layers, GPT-NeoX's query_key_value/dense/...). ``eof_from``: another policy (e.g.
    SALF) whose eof is used (SALF + LoRA)."""

    eof: int = 0
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    eof_from: Policy | None = None
    name: str = "lora"

    def setup(self, ctx):
        L = ctx.num_layers
        if self.eof_from is not None:
            self.eof = self.eof_from.setup(ctx).eof(L)
        self.eof = gains.check_eof(self.eof, L)
        if self.eof >= L:
            raise InvalidParameterError(
                f"LoRA eof={self.eof} leaves no layer to adapt in a {L}-layer model"
            )
        return Trainable(blocks=frozenset(range(self.eof, L)), lora=True, norm=False)

    def wrap_model(self, model):
        from peft import LoraConfig, get_peft_model  # lazy: importing peft takes seconds

        L = surgery.num_layers(model)
        targets = list(self.target_modules or surgery.block_linear_names(model))
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            layers_to_transform=list(range(self.eof, L)),
            bias="none",
        )
        return get_peft_model(model, config)

    def describe(self):
        return {
            "name": self.name,
            "eof": self.eof,
            "r": self.r,
            "alpha": self.alpha,
            "eof_from": None if self.eof_from is None else self.eof_from.describe(),
        }


# --------------------------------------------------------------------------- applying a state


def block_lora_params(model, blocks) -> dict[int, int]:
    layers = surgery.decoder_layers(model)
    return {
        k: sum(p.numel() for n, p in layers[k].named_parameters() if "lora_" in n) for k in blocks
    }


def apply_trainable(model, state: Trainable) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` to match ``state``; return the trained parameters (unique, ordered)."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = surgery.decoder_layers(model)
    chosen: list[torch.nn.Parameter] = []
    for k in sorted(state.blocks):
        for name, p in layers[k].named_parameters():
            if not state.lora or "lora_" in name:
                chosen.append(p)
    if state.embeddings:
        chosen += surgery.embedding_parameters(model)
    if state.head:
        chosen.append(surgery.unembedding(model).weight)
    if state.norm:
        chosen += list(surgery.final_norm(model).parameters())
    unique, seen = [], set()
    for p in chosen:
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            unique.append(p)
    return unique


POLICIES = {
    "full": FullFinetune,
    "fixed": FixedEof,
    "random": RandomEof,
    "salf": salf_policy,
    "logit_lens_ce": logit_lens_policy,
    "block_influence": block_influence_policy,
    "autofreeze": AutoFreeze,
    "lisa": Lisa,
    "lora": Lora,
}


def make_policy(name: str, **kw) -> Policy:
    if name not in POLICIES:
        raise InvalidParameterError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](**kw)
