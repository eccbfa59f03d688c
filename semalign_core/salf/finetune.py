"""Fine-tuning with layer freezing: one loop for every policy, with a cached frozen prefix.

The saving of freezing comes from not back-propagating through the frozen prefix (embeddings and
blocks 1..eof): it runs under ``torch.no_grad`` and stores no activations. With a static frozen
set its output — the hidden state entering block eof+1 — is computed once per training batch and
cached, so later epochs run only blocks eof+1..L, the final norm and the head.

Blocks run through :class:`semalign_core.lm.replay.BlockReplay` (the arguments the model itself
passes each block: masks per layer type, rotary embeddings, positions) and logits through
:class:`semalign_core.lm.surgery.Unembed`, so every supported architecture trains the same way.

Batches are right-padded (the last real position is gathered), which keeps the model's default
position ids correct for every real token. Batch *composition* is fixed once per run (seeded) and
only the batch order is reshuffled each epoch: that is what lets a per-batch prefix cache be
reused, and an uncached run uses the same batches, so the two give the same losses.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semalign_core import costs
from semalign_core.data import CLASSIFICATION_TASKS
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.evaluation.metrics import macro_f1
from semalign_core.lm import sharding, surgery
from semalign_core.lm.replay import BlockReplay
from semalign_core.salf import analysis, gains, policies
from semalign_core.salf.policies import Policy, PolicyContext, Trainable, apply_trainable

LOSSES = ("label_token", "label_words", "lm")


# --------------------------------------------------------------------------- data


@dataclass
class Encoded:
    """Tokenised examples: prompt ids, label index, label-token target, and LM labels if any."""

    ids: list[list[int]]
    labels: list[int]
    targets: list[int]
    label_tokens: analysis.LabelTokens
    lm_labels: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode_classification(
    tokenizer,
    records: Sequence[dict],
    label_tokens: analysis.LabelTokens,
    task: str | None = None,
    template: str | None = None,
    max_length: int | None = 64,
    with_answer: bool = False,
) -> Encoded:
    """Prompts (``analysis.format_prompt``) and their targets. ``with_answer`` appends the label
    word's tokens and marks them as LM labels (the ``lm`` loss)."""
    prompts = [analysis.format_prompt(r["text"], task, template) for r in records]
    ids = analysis.encode_prompts(tokenizer, prompts, max_length)
    labels = [int(r["label"]) for r in records]
    targets = [label_tokens.first[y] for y in labels]
    lm = None
    if with_answer:
        lm = []
        for i, y in enumerate(labels):
            answer = list(label_tokens.ids[y])
            lm.append([-100] * len(ids[i]) + answer)
            ids[i] = ids[i] + answer
    return Encoded(ids, labels, targets, label_tokens, lm)


def _batch(enc: Encoded, idx: Sequence[int], pad: int, device) -> dict[str, torch.Tensor]:
    batch = analysis.pad_right([enc.ids[i] for i in idx], pad, device)
    batch["targets"] = torch.tensor([enc.targets[i] for i in idx], device=device)
    batch["labels"] = torch.tensor([enc.labels[i] for i in idx], device=device)
    if enc.lm_labels is not None:
        width = batch["input_ids"].shape[1]
        lm = torch.full((len(idx), width), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            lm[r, : len(enc.lm_labels[i])] = torch.tensor(enc.lm_labels[i])
        batch["lm_labels"] = lm.to(device)
    return batch


# --------------------------------------------------------------------------- config and result


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (recorded whole in the result)."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd
    grad_clip: float | None = 1.0
    loss: str = "label_token"  # label_token (full vocabulary) | label_words (restricted) | lm
    cache_prefix: bool = True
    max_length: int | None = 64
    template: str | None = None
    label_token_mode: str = "first"
    require_single_token: bool = False
    eval_batch_size: int = 16
    analysis_batch_size: int = 16
    seed: int = 0
    device: str | None = None  # None: wherever the model is; else the model is moved there


@dataclass
class FinetuneResult:
    """One run: policy and config as recorded, metrics, cost, per-step losses, trainable-set
    history; ``model`` is the trained (possibly LoRA-wrapped) model, left out of the record."""

    policy: dict
    config: dict
    metrics: dict
    cost: dict
    losses: list[float]
    epoch_losses: list[float]
    history: list[dict] = field(default_factory=list)
    grad_params: list[str] = field(default_factory=list)
    model: Any = field(default=None, repr=False)

    def as_record(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# --------------------------------------------------------------------------- loop parts


def _optimizer(params, config: FinetuneConfig):
    if not params:
        raise InvalidParameterError("the policy leaves nothing trainable")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    raise InvalidParameterError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")


def _loss(
    unembed: surgery.Unembed, hidden, batch, config: FinetuneConfig, label_ids: torch.Tensor
) -> torch.Tensor:
    if config.loss == "lm":
        logits = unembed(hidden)[:, :-1].float()
        targets = batch["lm_labels"][:, 1:].reshape(-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, ignore_index=-100)
    logits = unembed(analysis.gather_last(hidden, batch["last_index"])).float()
    if config.loss == "label_words":
        return F.cross_entropy(logits[:, label_ids], batch["labels"])
    return F.cross_entropy(logits, batch["targets"])


def _spec(model, state: Trainable, boundary: int, cached_depth: int) -> costs.TrainableSpec:
    """What one step ran: the blocks trained at or above ``boundary``, the bottom
    ``cached_depth`` blocks read from the prefix cache."""
    live = frozenset(k for k in state.blocks if k >= max(boundary, 0))
    return costs.TrainableSpec(
        trained_blocks=frozenset() if state.lora else live,
        lora_params=policies.block_lora_params(model, live) if state.lora else {},
        embeddings=state.embeddings,
        head=state.head,
        cached_prefix=cached_depth,
    )


def _plans(
    state: Trainable, n: int, batch_size: int, seed: int
) -> tuple[list[gains.BatchPlan], bool]:
    if state.example_eofs is not None:
        return gains.plan_batches(state.example_eofs, batch_size, state.padding, seed), True
    return gains.plan_batches([0] * n, batch_size, "min", seed), False


def _history_entry(step: int, state: Trainable, model) -> dict:
    return {
        "step": step,
        "blocks": sorted(state.blocks),
        "embeddings": state.embeddings,
        "head": state.head,
        **costs.parameter_counts(model),
    }


@dataclass
class _Tally:
    """Running totals of one run, for its losses and cost record."""

    flops: float = 0.0
    full_flops: float = 0.0
    full_embeddings_flops: float = 0.0
    components: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("blocks", "embedding", "head", "optimizer"), 0.0)
    )
    memory: dict[str, float] = field(default_factory=dict)  # the step of largest analytic total
    tokens: int = 0
    real_tokens: int = 0
    cache_hits: int = 0
    losses: list[float] = field(default_factory=list)
    grad_names: set[str] = field(default_factory=set)
    updated: int = 0  # parameters the last optimizer step updated (those with a gradient)
    updated_total: int = 0  # the same summed over the run's steps (what the updates touched)


class _Loop:
    """One fine-tuning run's moving parts: trainable set, optimizer, prefix cache and totals.

    The optimizer is rebuilt whenever the trainable set changes (LISA's pitfall: one built
    before a layer is activated never updates it)."""

    def __init__(
        self,
        model,
        policy: Policy,
        prepared: _Prepared,
        config: FinetuneConfig,
        engine: sharding.Engine | None = None,
    ):
        self.model, self.policy, self.enc, self.pad = model, policy, prepared.enc, prepared.pad
        self.label_ids, self.config, self.device = prepared.label_ids, config, prepared.device
        self.engine = engine or sharding.Engine()
        self.compute_dtype = next(prepared.model.parameters()).dtype
        state = prepared.state
        self.unembed = surgery.Unembed(model)
        self.num_layers = surgery.num_layers(model)
        self.shape = costs.model_shape(model)
        # The references of the savings: every block trained (the like-for-like "full"), and
        # every block with the embeddings and LM head (full fine-tuning in the usual sense).
        blocks = frozenset(range(self.num_layers))
        self.full_spec = costs.TrainableSpec(trained_blocks=blocks)
        self.full_embeddings_spec = costs.TrainableSpec(
            trained_blocks=blocks, embeddings=True, head=True
        )
        # the reference trains every block and the final norm, as every freezing policy does
        norm = sum(p.numel() for p in surgery.final_norm(model).parameters())
        self.block_params = sum(b.params for b in self.shape.blocks) + norm
        self.shape_params = costs.parameter_counts(model)["total_params"]
        self.param_bytes = next(model.parameters()).element_size()
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.cacheable = policy.static and config.cache_prefix
        self.cache: dict[tuple[int, int], torch.Tensor] = {}  # (batch, depth) -> state
        self.tally = _Tally()
        self.stopwatch = costs.Stopwatch(self.device)
        # the update (clipping, AdamW, zeroing) timed apart: memory-bound, not counted in FLOPs
        self.update_watch = costs.SpanTimer(self.device)
        self.history: list[dict] = []
        self.switch(0, state)

    def switch(self, step: int, state: Trainable) -> None:
        self.state, self.params = state, apply_trainable(self.model, state)
        self.optimizer = _optimizer(self.params, self.config)
        self.history.append(_history_entry(step, state, self.model))

    def _suffix_input(
        self, replay: BlockReplay, depth: int, boundary: int, batch_index: int
    ) -> tuple[Any, int, bool]:
        """The state entering the first block that needs gradients, that block's index, and
        whether the bottom ``depth`` blocks came from the prefix cache.

        Only the bottom ``depth`` blocks (below every block the run trains) are cached: with
        per-example eof a batch's own boundary can lie above blocks that other batches train,
        so its state there changes from epoch to epoch and is recomputed (under no_grad)."""
        if boundary < 0:
            return replay.embedding_output, 0, False
        depth = min(depth, boundary)
        cached = self.cacheable and depth > 0 and (batch_index, depth) in self.cache
        with torch.no_grad():
            if cached:
                self.tally.cache_hits += 1
                hidden = self.cache[(batch_index, depth)]
            else:
                hidden = replay.run(replay.embedding_output, 0, depth)
                if self.cacheable and depth > 0:
                    self.cache[(batch_index, depth)] = hidden
            hidden = replay.run(hidden, depth, boundary)
        return hidden, boundary, cached

    def _forward(self, batch: dict, boundary: int, batch_index: int):
        """The loss of ``batch`` and whether its prefix came from the cache."""
        # The embedding output needs a graph only when the embeddings train.
        with torch.set_grad_enabled(boundary < 0):
            replay = BlockReplay(self.model, batch["input_ids"], batch["attention_mask"])
        depth = self.cache_depth()
        hidden, start, cached = self._suffix_input(replay, depth, boundary, batch_index)
        hidden = replay.run(hidden, start)
        return _loss(self.unembed, hidden, batch, self.config, self.label_ids), cached

    def _in_root_call(self, forward):
        """``forward()``, under FSDP as the model's own call: the root unit's hooks gather its
        parameters (embedding, final norm, head) for it and reduce their gradients after the
        backward, while the blocks run as their own units inside."""
        if not self.engine.sharded:
            return forward()
        own = vars(self.model).get("forward")  # an instance forward already set (accelerate's)
        self.model.forward = forward  # the instance attribute shadows the class's forward
        try:
            return self.model()
        finally:
            if own is None:
                del self.model.forward
            else:
                self.model.forward = own

    def _forward_backward(self, batch: dict, boundary: int, batch_index: int, scale: float):
        """Forward and backward of one pass; ``scale``: its share of the step's gradient."""
        loss, cached = self._in_root_call(lambda: self._forward(batch, boundary, batch_index))
        (loss * scale).backward()
        self.tally.grad_names |= {
            self.names[id(p)] for p in self.model.parameters() if p.grad is not None
        }
        # AdamW skips a parameter without a gradient (a per-example batch's frozen blocks)
        self.tally.updated = sum(p.numel() for p in self.params if p.grad is not None)
        return loss, cached

    def cache_depth(self) -> int:
        """Blocks below every trained block (what a static policy may cache)."""
        return min(max(self.state.boundary, 0), self.num_layers)

    def _pass(self, ids: Sequence[int]) -> tuple[list[int], float]:
        """This process's examples of a step on ``ids`` and their weight: all of them in one
        process; under FSDP its share (one pass each, a weight-0 filler where it has none)."""
        [(chunk, weight)] = self.engine.step_chunks(list(ids), max(len(ids), 1))
        return chunk, weight

    def _count(self, ids: Sequence[int]) -> int:
        """What the loss averages over in ``ids``: examples, or label tokens for the LM loss."""
        if self.config.loss != "lm":
            return len(ids)
        return sum(sum(t != -100 for t in self.enc.lm_labels[i]) for i in ids)

    def step(self, step: int, plan: gains.BatchPlan, batch_index: int, per_example: bool) -> float:
        """One optimizer step on one planned batch; returns its loss."""
        new = self.policy.on_step_start(step)
        if new is not None and new != self.state:
            self.switch(step, new)
        boundary = max(self.state.boundary, plan.eof) if per_example else self.state.boundary
        boundary = min(boundary, self.num_layers)
        with self.stopwatch.step():
            ids, weight = self._pass(plan.indices)
            batch = _batch(self.enc, ids, self.pad, self.device)
            share = weight * self._count(ids) / self._count(plan.indices)
            loss, cached = self._forward_backward(
                batch, boundary, batch_index, share * self.engine.world_size
            )
            changed = self.policy.after_backward(step, self.model)
            with self.update_watch.span():
                if self.config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        (step_loss,) = self.engine.total([share * loss.item()])
        depth = self.cache_depth() if cached else 0
        self._account(batch if weight else None, boundary, depth, step_loss)
        if changed is not None and changed != self.state:
            self.switch(step + 1, changed)
        return self.tally.losses[-1]

    def train(
        self, plans: list[gains.BatchPlan], per_example: bool
    ) -> tuple[list[float], list[float]]:
        """Every epoch over ``plans`` (the batch order reshuffled per epoch, seeded); the mean
        loss and the seconds of each epoch."""
        rng = random.Random(self.config.seed + 1)
        epoch_losses, epoch_s, step = [], [], 0
        for _ in range(self.config.epochs):
            order = list(range(len(plans)))
            rng.shuffle(order)
            t_epoch, epoch_loss = time.perf_counter(), []
            for batch_index in order:
                epoch_loss.append(self.step(step, plans[batch_index], batch_index, per_example))
                step += 1
            epoch_s.append(time.perf_counter() - t_epoch)
            epoch_losses.append(float(np.mean(epoch_loss)))
        self.sum_over_processes()
        return epoch_losses, epoch_s

    def _account(self, batch: dict | None, boundary: int, cached_depth: int, loss: float) -> None:
        """Add one step's loss and this process's part of it to the totals: its pass (None: a
        filler pass, not counted) and its share of the update (every process updates its shard
        at every step); under FSDP :meth:`sum_over_processes` adds up the processes' counts."""
        tally = self.tally
        tally.losses.append(loss)
        updated = self._shard_share(tally.updated)
        optimizer = costs.optimizer_flops(updated, self.config.optimizer)
        tally.updated_total += updated
        tally.components["optimizer"] += optimizer
        if batch is None:
            tally.flops += optimizer
            tally.full_flops += self._update_flops(self.block_params)
            tally.full_embeddings_flops += self._update_flops(self.shape_params)
            return
        b, t = batch["input_ids"].shape
        positions = b * t if self.config.loss == "lm" else b
        spec = _spec(self.model, self.state, boundary, cached_depth)
        step = costs.step_flops(self.shape, spec, b * t, t, positions)
        tally.flops += step["total"] + optimizer
        for part in ("blocks", "embedding", "head"):
            tally.components[part] += step[part]
        tally.full_flops += self._reference(self.full_spec, b, t, positions, self.block_params)
        tally.full_embeddings_flops += self._reference(
            self.full_embeddings_spec, b, t, positions, self.shape_params
        )
        memory = costs.train_memory_bytes(
            self.shape,
            spec,
            sum(p.numel() for p in self.params),  # AdamW state of every parameter it holds
            b * t,
            t,
            self.param_bytes,
            self.config.optimizer,
            cached_prefix_tokens=sum(h.shape[0] * h.shape[1] for h in self.cache.values()),
        )
        if memory["total"] > tally.memory.get("total", -1.0):
            tally.memory = memory
        tally.tokens += b * t
        tally.real_tokens += int(batch["attention_mask"].sum())

    def _shard_share(self, params: int) -> int | float:
        """The parameters this process updates of ``params``: all in one process; under FSDP
        its shard, so that the sum over processes counts each update once."""
        return params / self.engine.world_size if self.engine.sharded else params

    def _update_flops(self, params: int) -> float:
        return costs.optimizer_flops(self._shard_share(params), self.config.optimizer)

    def _reference(self, spec, b: int, t: int, positions: int, trained: int) -> float:
        flops = costs.step_flops(self.shape, spec, b * t, t, positions)["total"]
        return flops + self._update_flops(trained)

    def sum_over_processes(self) -> None:
        """Under FSDP, replace this process's counts by their sum over the processes."""
        if not self.engine.sharded:
            return
        tally, parts = self.tally, list(self.tally.components)
        counts = ("flops", "full_flops", "full_embeddings_flops", "updated_total")
        whole = ("tokens", "real_tokens")  # cache hits stay per process: one per step each
        mine = [getattr(tally, k) for k in (*counts, *whole)]
        summed = self.engine.total([*mine, *(tally.components[p] for p in parts)])
        for key, value in zip((*counts, *whole), summed):
            setattr(tally, key, int(value) if key in whole else value)
        tally.components = dict(zip(parts, summed[len(mine) :]))

    def cost(self, wall: float, epoch_s: list[float], peak: costs.PeakMemory, rss_start: float):
        counts, tally = self.history[0], self.tally
        analysis = self.policy.analysis_flops(self.shape)
        bases = self.policy.bases_flops(self.shape)  # once per model (cached), not per run
        mb = {k: v / 2**20 for k, v in tally.memory.items()}
        return {
            "flops_analytic": tally.flops,
            "flops_components": {**tally.components, "analysis": analysis, "bases_once": bases},
            "flops_full_analytic": tally.full_flops,
            "flops_full_embeddings_analytic": tally.full_embeddings_flops,
            "saving_analytic": costs.saving_rate(tally.flops, tally.full_flops),
            "saving_analytic_with_analysis": costs.saving_rate(
                tally.flops + analysis, tally.full_flops
            ),
            "saving_analytic_with_analysis_and_bases": costs.saving_rate(
                tally.flops + analysis + bases, tally.full_flops
            ),
            "flop_model": costs.FLOP_MODEL,  # the key every method's cost dict carries
            "memory_analytic_mb": mb,
            "wall_s": wall,
            "epoch_s": epoch_s,
            "step_s": self.stopwatch.steps,
            **self.stopwatch.summary(),
            # of the steps' time: the parameter update (clip, AdamW, zero grads), and the
            # parameters it updated summed over steps (the time model's second term)
            "update_s": self.update_watch.total,
            "updated_params_steps": tally.updated_total,
            **peak.as_dict(),
            "rss_start_mb": rss_start,
            "train_memory_mb": peak.peak_rss_mb - rss_start,
            "trainable_params": counts["trainable_params"],
            "total_params": counts["total_params"],
            "tokens": tally.tokens,
            "real_tokens": tally.real_tokens,
            "cache_hits": tally.cache_hits,
            "cached_batches": len(self.cache),
            "device": str(self.device),
            # the model's own dtype: under FSDP the shards are fp32 master weights, computing in it
            "dtype": str(self.compute_dtype).replace("torch.", ""),
        }


# --------------------------------------------------------------------------- loop


def _label_words(task: str | None, label_words: Sequence[str] | None) -> tuple[str, ...]:
    if label_words is not None:
        return tuple(label_words)
    if task not in CLASSIFICATION_TASKS:
        raise InvalidParameterError("finetune needs label_words or a known classification task")
    return tuple(CLASSIFICATION_TASKS[task].label_words)


def finetune(
    model,
    tokenizer,
    train_records: Sequence[dict],
    eval_records: Sequence[dict] | None,
    policy: Policy,
    config: FinetuneConfig | None = None,
    task: str | None = None,
    label_words: Sequence[str] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on classification records under ``policy``; evaluate on ``eval_records``.

    The model is trained in place (LoRA policies wrap it; the wrapped model is ``result.model``).
    """
    config = config or FinetuneConfig()
    if config.loss not in LOSSES:
        raise InvalidParameterError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    label_words = _label_words(task, label_words)
    torch.manual_seed(config.seed)
    if config.device is not None:
        model = model.to(config.device)
    label_tokens = analysis.label_token_ids(
        tokenizer, label_words, config.label_token_mode, config.require_single_token
    )
    prepared = _prepare(
        model, tokenizer, train_records, policy, task, label_words, label_tokens, config
    )
    engine = sharding.current_engine()
    _check_engine(engine, policy, prepared.state)
    plans, per_example = _plans(prepared.state, len(prepared.enc), config.batch_size, config.seed)
    # Under FSDP the loop trains sharded fp32 copies, written back into the model after it.
    with sharding.sharded_copy(prepared.model, engine) as (work, _):
        loop = _Loop(work, policy, prepared, config, engine)
        t_start, rss_start = time.perf_counter(), costs.current_rss_mb()
        with costs.PeakMemory(loop.device) as peak:
            epoch_losses, epoch_s = loop.train(plans, per_example)
        wall = time.perf_counter() - t_start
    model = prepared.model
    scored = eval_records and engine.rank == 0  # under FSDP the first process evaluates
    metrics = evaluate(model, tokenizer, eval_records, label_tokens, task, config) if scored else {}
    return FinetuneResult(
        policy=policy.describe(),
        config=asdict(config),
        metrics=metrics,
        cost=loop.cost(wall, epoch_s, peak, rss_start),
        losses=loop.tally.losses,
        epoch_losses=epoch_losses,
        history=loop.history,
        grad_params=sorted(loop.tally.grad_names),
        model=model,
    )


def _check_engine(engine: sharding.Engine, policy: Policy, state: Trainable) -> None:
    """FSDP trains a fixed trainable set of the model's own weights: a policy that changes the
    set during training (each process would decide from its own gradient shards) or trains
    LoRA adapters runs in one process. Every process set its policy up on its own: they must
    have chosen the same set and boundaries, or their collectives would not match."""
    if not engine.sharded:
        return
    if not policy.static or state.lora:
        why = "LoRA adapters" if state.lora else "a trainable set that changes during training"
        raise InvalidParameterError(
            f"policy {policy.name!r} trains {why}: it runs in one process, not under FSDP"
        )
    if not engine.agree(json.dumps(asdict(state), sort_keys=True, default=sorted)):
        raise ArtifactError(
            f"policy {policy.name!r} chose different trainable sets in the FSDP processes "
            "(its analysis is not deterministic here); run it in one process"
        )


@dataclass
class _Prepared:
    """What a run has before its loop: the (possibly LoRA-wrapped) model, the policy's state at
    step 0, the encoded train records and what batches and the loss need."""

    model: Any
    state: Trainable
    enc: Encoded
    pad: int
    label_ids: torch.Tensor
    device: torch.device


def _prepare(
    model,
    tokenizer,
    train_records: Sequence[dict],
    policy: Policy,
    task: str | None,
    label_words: tuple[str, ...],
    label_tokens: analysis.LabelTokens,
    config: FinetuneConfig,
) -> _Prepared:
    """The run at step 0: the policy set up (it may analyse the model) and its wrapper applied
    (LoRA), the train records encoded."""
    device = next(model.parameters()).device
    ctx = PolicyContext(
        model,
        tokenizer,
        list(train_records),
        task,
        label_words,
        config.template,
        config.max_length,
        config.seed,
        config.batch_size,
        config.analysis_batch_size,
        config.epochs,
    )
    state = policy.setup(ctx)
    model = policy.wrap_model(model)
    model.eval()  # no dropout: a cached prefix must equal a recomputed one
    enc = encode_classification(
        tokenizer,
        train_records,
        label_tokens,
        task,
        config.template,
        config.max_length,
        with_answer=config.loss == "lm",
    )
    label_ids = torch.tensor(label_tokens.first, device=device)
    return _Prepared(model, state, enc, analysis.pad_token_id(tokenizer), label_ids, device)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model,
    tokenizer,
    records: Sequence[dict],
    label_tokens: analysis.LabelTokens,
    task: str | None = None,
    template: str | None = None,
    max_length: int | None = 64,
    batch_size: int = 16,
) -> list[int]:
    """Argmax over the label words' (first-token) logits at the last prompt position."""
    unembed = surgery.Unembed(model)
    enc = encode_classification(tokenizer, records, label_tokens, task, template, max_length)
    device = next(model.parameters()).device
    pad = analysis.pad_token_id(tokenizer)
    ids = torch.tensor(label_tokens.first, device=device)
    preds: list[int] = []
    for s in range(0, len(enc), batch_size):
        batch = _batch(enc, range(s, min(s + batch_size, len(enc))), pad, device)
        replay = BlockReplay(model, batch["input_ids"], batch["attention_mask"])
        hidden = replay.run(replay.embedding_output)
        logits = unembed(analysis.gather_last(hidden, batch["last_index"]))[:, ids]
        preds += logits.argmax(-1).tolist()
    return preds


def evaluate(
    model, tokenizer, records, label_tokens, task=None, config: FinetuneConfig | None = None
) -> dict:
    """Accuracy and macro-F1 of :func:`predict` on ``records``, with the n behind them and every
    item (its position in ``records``, gold, prediction, 0/1 accuracy), so intervals and paired
    comparisons can be recomputed from the record."""
    config = config or FinetuneConfig()
    preds = predict(
        model,
        tokenizer,
        records,
        label_tokens,
        task,
        config.template,
        config.max_length,
        config.eval_batch_size,
    )
    gold = [int(r["label"]) for r in records]
    acc = float(np.mean([p == g for p, g in zip(preds, gold)])) if gold else math.nan
    items = [
        {"doc_id": i, "gold": g, "prediction": p, "accuracy": float(p == g)}
        for i, (g, p) in enumerate(zip(gold, preds))
    ]
    return {
        "accuracy": acc,
        "macro_f1": macro_f1(gold, preds),
        "n": len(gold),
        "metric": "accuracy",
        "items": items,
    }


def measured_saving(
    result: FinetuneResult, reference: FinetuneResult, key: str = "wall_s"
) -> float:
    """1 − measured cost / the reference run's (full fine-tuning on the same data)."""
    return costs.saving_rate(result.cost[key], reference.cost[key])
