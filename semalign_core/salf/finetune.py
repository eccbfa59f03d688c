"""Fine-tuning with layer freezing: suffix runner, prefix cache, one loop for every policy.

The saving of freezing comes from not back-propagating through the frozen prefix (embeddings and
blocks 1..eof): it runs under ``torch.no_grad`` and stores no activations. With a static frozen
set its output — the hidden state entering block eof+1 — is computed once per training batch and
cached, so later epochs run only blocks eof+1..L, the final norm and the head.

:class:`SuffixRunner` reproduces the model's own forward from any block: the same embedding
(Gemma 2 scales it in the backbone), the same causal / sliding-window masks per layer type
(``transformers.masking_utils``), the same rotary position embeddings (Gemma 3 has a global and a
local one) and the same final norm, head and soft-capping (``surgery.logit_lens``). Llama-like
families only (llama, mistral, qwen2, gemma2, gemma3).

Batches are right-padded (the last real position is gathered), which keeps the model's default
position ids correct for every real token. Batch *composition* is fixed once per run (seeded) and
only the batch order is reshuffled each epoch: that is what lets a per-batch prefix cache be
reused, and an uncached run uses the same batches, so the two give the same losses.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from semalign_core import costs
from semalign_core.lm import surgery
from semalign_core.errors import InvalidParameterError
from semalign_core.salf import analysis, gains, policies
from semalign_core.salf.policies import Policy, PolicyContext, Trainable, apply_trainable

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma2", "gemma3")
LOSSES = ("label_token", "label_words", "lm")


# --------------------------------------------------------------------------- suffix runner


@dataclass
class _Context:
    masks: dict[str, Any]
    position_ids: torch.Tensor
    cache_position: torch.Tensor
    position_embeddings: dict[str, Any]


class SuffixRunner:
    """Run a llama-like causal LM from the embedding, or from any block, as its forward does."""

    def __init__(self, model):
        self.model = model
        self.arch = surgery.architecture(model)
        if self.arch not in LLAMA_LIKE:
            raise surgery.UnsupportedArchitectureError(
                f"SuffixRunner supports {', '.join(LLAMA_LIKE)}, not {self.arch!r}")
        self.base = surgery.unwrap(model)
        self.backbone = surgery._backbone(model)  # base_model is the CausalLM itself for Gemma 3
        self.config = self.base.config
        if getattr(self.config, "use_bidirectional_attention", False):
            raise InvalidParameterError("SuffixRunner does not support bidirectional attention")
        self.layers = surgery.decoder_layers(model)
        self.num_layers = len(self.layers)
        self.types = [self._layer_type(layer) for layer in self.layers]

    def _layer_type(self, layer) -> str:
        t = getattr(layer, "attention_type", None)
        if t:
            return t
        if self.arch == "mistral" and getattr(self.config, "sliding_window", None) is not None:
            return "sliding_attention"
        return "full_attention"

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = surgery.input_embeddings(self.model)(input_ids)
        if self.arch == "gemma2":  # Gemma 2 scales in the backbone, Gemma 3 inside the embedding module
            h = h * torch.tensor(self.config.hidden_size ** 0.5, dtype=h.dtype)
        return h

    def context(self, batch: int, seq: int, attention_mask: torch.Tensor | None) -> _Context:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        p = next(self.model.parameters())
        probe = torch.empty(batch, seq, self.config.hidden_size, dtype=p.dtype, device=p.device)
        cache_position = torch.arange(seq, device=p.device)
        position_ids = cache_position.unsqueeze(0)
        kw = dict(config=self.config, input_embeds=probe, attention_mask=attention_mask,
                  cache_position=cache_position, past_key_values=None, position_ids=position_ids)
        makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        masks = {t: makers[t](**kw) for t in set(self.types)}
        if self.arch == "gemma3":
            pos = {"position_embeddings_global": self.backbone.rotary_emb(probe, position_ids),
                   "position_embeddings_local": self.backbone.rotary_emb_local(probe, position_ids)}
        else:
            pos = {"position_embeddings": self.backbone.rotary_emb(probe, position_ids)}
        return _Context(masks, position_ids, cache_position, pos)

    def run_blocks(self, hidden, ctx: _Context, start: int, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start..stop−1`` (0-based) applied to ``hidden`` (the state entering ``start``)."""
        stop = self.num_layers if stop is None else stop
        for k in range(start, stop):
            out = self.layers[k](hidden, attention_mask=ctx.masks[self.types[k]], position_ids=ctx.position_ids,
                                 cache_position=ctx.cache_position, past_key_values=None, use_cache=False,
                                 **ctx.position_embeddings)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return surgery.logit_lens(self.model, hidden)

    def forward(self, input_ids, attention_mask=None, start: int = 0, hidden=None) -> torch.Tensor:
        """Logits at every position, from the embedding (``start=0``) or from ``hidden`` entering
        block ``start``."""
        b, t = input_ids.shape if hidden is None else hidden.shape[:2]
        ctx = self.context(b, t, attention_mask)
        h = self.embed(input_ids) if hidden is None else hidden
        return self.head(self.run_blocks(h, ctx, start))


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


def encode_classification(tokenizer, records: Sequence[dict], label_tokens: analysis.LabelTokens,
                          task: str | None = None, template: str | None = None,
                          max_length: int | None = 64, with_answer: bool = False) -> Encoded:
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


# --------------------------------------------------------------------------- loop


def _optimizer(params, config: FinetuneConfig):
    if not params:
        raise InvalidParameterError("the policy leaves nothing trainable")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    raise InvalidParameterError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")


def _loss(runner: SuffixRunner, hidden, batch, config: FinetuneConfig, label_ids: torch.Tensor) -> torch.Tensor:
    if config.loss == "lm":
        logits = runner.head(hidden)[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["lm_labels"][:, 1:].reshape(-1),
                               ignore_index=-100)
    logits = runner.head(analysis.gather_last(hidden, batch["last_index"])).float()
    if config.loss == "label_words":
        return F.cross_entropy(logits[:, label_ids], batch["labels"])
    return F.cross_entropy(logits, batch["targets"])


def _spec(model, state: Trainable, boundary: int, cached: bool, L: int) -> costs.TrainableSpec:
    live = frozenset(k for k in state.blocks if k >= max(boundary, 0))
    return costs.TrainableSpec(
        trained_blocks=frozenset() if state.lora else live,
        lora_params=policies.block_lora_params(model, live) if state.lora else {},
        embeddings=state.embeddings, head=state.head,
        cached_prefix=min(max(boundary, 0), L) if cached else 0)


def _plans(state: Trainable, n: int, batch_size: int, seed: int) -> tuple[list[gains.BatchPlan], bool]:
    if state.example_eofs is not None:
        return gains.plan_batches(state.example_eofs, batch_size, state.padding, seed), True
    return gains.plan_batches([0] * n, batch_size, "min", seed), False


def finetune(model, tokenizer, train_records: Sequence[dict], eval_records: Sequence[dict] | None,
             policy: Policy, config: FinetuneConfig | None = None, task: str | None = None,
             label_words: Sequence[str] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` on classification records under ``policy``; evaluate on ``eval_records``.

    The model is trained in place (LoRA policies wrap it; the wrapped model is ``result.model``).
    """
    config = config or FinetuneConfig()
    if config.loss not in LOSSES:
        raise InvalidParameterError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if label_words is None:
        from semalign_core.data import CLASSIFICATION_TASKS

        if task not in CLASSIFICATION_TASKS:
            raise InvalidParameterError("finetune needs label_words or a known classification task")
        label_words = CLASSIFICATION_TASKS[task].label_words
    torch.manual_seed(config.seed)
    if config.device is not None:
        model = model.to(config.device)
    device = next(model.parameters()).device
    label_tokens = analysis.label_token_ids(tokenizer, label_words, config.label_token_mode,
                                            config.require_single_token)
    ctx = PolicyContext(model, tokenizer, list(train_records), task, tuple(label_words), config.template,
                        config.max_length, config.seed, config.batch_size, config.analysis_batch_size)
    state = policy.setup(ctx)
    model = policy.wrap_model(model)
    model.eval()  # no dropout: a cached prefix must equal a recomputed one (these models use none)
    runner = SuffixRunner(model)
    L = runner.num_layers
    shape = costs.model_shape(model)
    enc = encode_classification(tokenizer, train_records, label_tokens, task, config.template,
                                config.max_length, with_answer=config.loss == "lm")
    pad = analysis.pad_token_id(tokenizer)
    label_ids = torch.tensor(label_tokens.first, device=device)

    params = apply_trainable(model, state)
    optimizer = _optimizer(params, config)
    history = [{"step": 0, "blocks": sorted(state.blocks), "embeddings": state.embeddings,
                "head": state.head, **costs.parameter_counts(model)}]
    plans, per_example = _plans(state, len(enc), config.batch_size, config.seed)
    cacheable = policy.static and config.cache_prefix
    cache: dict[tuple[int, int], torch.Tensor] = {}
    full_spec = costs.TrainableSpec(trained_blocks=frozenset(range(L)), embeddings=True, head=True)
    rng = random.Random(config.seed + 1)
    sw = costs.Stopwatch(device)
    losses, epoch_losses, epoch_s, grad_names = [], [], [], set()
    flops = full_flops = 0.0
    tokens = real_tokens = 0
    cache_hits = 0
    names = {id(p): n for n, p in model.named_parameters()}
    step = 0
    t_start = time.perf_counter()
    with costs.PeakMemory(device) as peak:
        for epoch in range(config.epochs):
            order = list(range(len(plans)))
            rng.shuffle(order)
            t_epoch, epoch_loss = time.perf_counter(), []
            for bi in order:
                new = policy.on_step_start(step)
                if new is not None and new != state:
                    state, params = new, apply_trainable(model, new)
                    optimizer = _optimizer(params, config)
                    history.append({"step": step, "blocks": sorted(state.blocks), "embeddings": state.embeddings,
                                    "head": state.head, **costs.parameter_counts(model)})
                plan = plans[bi]
                boundary = max(state.boundary, plan.eof) if per_example else state.boundary
                boundary = min(boundary, L)
                with sw.step():
                    batch = _batch(enc, plan.indices, pad, device)
                    b, t = batch["input_ids"].shape
                    rc = runner.context(b, t, batch["attention_mask"])
                    key, cached = (bi, boundary), False
                    if boundary < 0:
                        h, start = runner.embed(batch["input_ids"]), 0
                    elif cacheable and key in cache:
                        h, start, cached = cache[key], boundary, True
                        cache_hits += 1
                    else:
                        with torch.no_grad():
                            h = runner.run_blocks(runner.embed(batch["input_ids"]), rc, 0, boundary)
                        start = boundary
                        if cacheable and boundary > 0:
                            cache[key] = h
                    h = runner.run_blocks(h, rc, start)
                    loss = _loss(runner, h, batch, config, label_ids)
                    loss.backward()
                    grad_names |= {names[id(p)] for p in model.parameters() if p.grad is not None}
                    changed = policy.after_backward(step, model)
                    if config.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                positions = b * t if config.loss == "lm" else b
                flops += costs.step_flops(shape, _spec(model, state, boundary, cached, L), b * t, t, positions)["total"]
                full_flops += costs.step_flops(shape, full_spec, b * t, t, positions)["total"]
                tokens += b * t
                real_tokens += int(batch["attention_mask"].sum())
                losses.append(loss.item())
                epoch_loss.append(loss.item())
                step += 1
                if changed is not None and changed != state:
                    state, params = changed, apply_trainable(model, changed)
                    optimizer = _optimizer(params, config)
                    history.append({"step": step, "blocks": sorted(state.blocks), "embeddings": state.embeddings,
                                    "head": state.head, **costs.parameter_counts(model)})
            epoch_s.append(time.perf_counter() - t_epoch)
            epoch_losses.append(float(np.mean(epoch_loss)))
    wall = time.perf_counter() - t_start
    metrics = evaluate(model, tokenizer, eval_records, label_tokens, task, config) if eval_records else {}
    counts = history[0]
    cost = {
        "flops_analytic": flops, "flops_full_analytic": full_flops,
        "saving_analytic": costs.saving_rate(flops, full_flops),
        "wall_s": wall, "epoch_s": epoch_s, "step_s": sw.steps, **sw.summary(),
        **peak.as_dict(), "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
        "tokens": tokens, "real_tokens": real_tokens, "cache_hits": cache_hits,
        "cached_batches": len(cache), "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    return FinetuneResult(policy=policy.describe(), config=asdict(config), metrics=metrics, cost=cost,
                          losses=losses, epoch_losses=epoch_losses, history=history,
                          grad_params=sorted(grad_names), model=model)


# --------------------------------------------------------------------------- evaluation


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Macro-F1 over the labels present in gold or predictions (scikit-learn's default set)."""
    labels = sorted(set(gold) | set(pred))
    scores = []
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


@torch.no_grad()
def predict(model, tokenizer, records: Sequence[dict], label_tokens: analysis.LabelTokens,
            task: str | None = None, template: str | None = None, max_length: int | None = 64,
            batch_size: int = 16) -> list[int]:
    """Argmax over the label words' (first-token) logits at the last prompt position."""
    runner = SuffixRunner(model)
    enc = encode_classification(tokenizer, records, label_tokens, task, template, max_length)
    device = next(model.parameters()).device
    pad = analysis.pad_token_id(tokenizer)
    ids = torch.tensor(label_tokens.first, device=device)
    preds: list[int] = []
    for s in range(0, len(enc), batch_size):
        batch = _batch(enc, range(s, min(s + batch_size, len(enc))), pad, device)
        b, t = batch["input_ids"].shape
        h = runner.run_blocks(runner.embed(batch["input_ids"]), runner.context(b, t, batch["attention_mask"]), 0)
        logits = runner.head(analysis.gather_last(h, batch["last_index"]))[:, ids]
        preds += logits.argmax(-1).tolist()
    return preds


def evaluate(model, tokenizer, records, label_tokens, task=None, config: FinetuneConfig | None = None) -> dict:
    config = config or FinetuneConfig()
    preds = predict(model, tokenizer, records, label_tokens, task, config.template, config.max_length,
                    config.eval_batch_size)
    gold = [int(r["label"]) for r in records]
    acc = float(np.mean([p == g for p, g in zip(preds, gold)])) if gold else math.nan
    return {"accuracy": acc, "macro_f1": macro_f1(gold, preds), "n": len(gold)}


def measured_saving(result: FinetuneResult, reference: FinetuneResult, key: str = "wall_s") -> float:
    """1 − measured cost / the reference run's (full fine-tuning on the same data)."""
    return costs.saving_rate(result.cost[key], reference.cost[key])
