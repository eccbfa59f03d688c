"""LaTen, Locate-then-Align (Tan et al., ACL 2025): pre-hoc parametric knowledge transfer (PrePKT).

1. **Locate.** Logit-lens neuron attribution on the extract records, in both models. An FFN
   neuron i of layer l writes ``a_i · down_proj[:, i]`` into the residual stream; an attention
   neuron c writes ``a_c · o_proj[:, c]`` (a_c: the c-th input channel of o_proj, i.e. one head
   dimension of the attention output). Its score is the direct-path log-prob gain of the target
   token y: the first-order change of ``log p(y | final_norm(h) → LM head)`` when the vector is
   added to the final residual h, ``a_i · (w_iᵀ ∇_h log p(y|h))``. The gradient u = ∇_h is one
   d-vector per supervised position (one head pass per position, never per neuron), so all
   neurons of a layer score at once as ``a ⊙ (u W_out)``; ``score="logit"`` uses the target
   token's logit instead (only the target tokens' rows of the LM head are gathered). Scores are
   means over the supervised positions; the top ``top_fraction`` per layer per group are kept.
2. **Pair.** Target layer j ↔ source layer ``uniform_pairing`` (rounded j·L_S/L_T); within a
   layer pair the r-th ranked source neuron ↔ the r-th ranked target neuron
   (k = min of the two top-fraction counts).
3. **Align.** One two-layer MLP hypernetwork per parameter kind (``up`` rows and ``down``
   columns for FFN neurons, ``v`` rows and ``o`` columns for attention neurons), shared by all
   layer pairs: ``Linear(d_S → hidden) → ReLU → Linear(hidden → d_T)``, hidden = d_S by default
   (the spec's d_T→d_T→d_S in teacher/student subscripts), weights N(0, init_std), biases 0. It maps
   each selected source neuron's weight vector (width d_S) to a delta (width d_T) added to the
   paired target neuron's weight vector. Deltas are injected with forward hooks (no weight copy,
   no model file copy); after training they are added into the target's weights.
4. **Train.** One step per extract record: LM loss on 16 examples (that extract record + 15
   align records) + ``mse_weight · mean(delta²)``; AdamW (lr 1e-5, wd 0.05). Only the
   hypernetworks train; every model parameter is frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from semalign_core import costs
from semalign_core.baselines.controls import (
    begin,
    cap_steps,
    ce_per_example,
    freeze,
    pad_id,
    requires_grad_flags,
    restore_flags,
    summarize,
    tokenize,
    train,
    train_flops,
)
from semalign_core.data.batching import collate
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.pairing import Pairing, uniform_pairing
from semalign_core.semalign.result import TransferResult

GROUPS = ("ffn", "attn")
KINDS = {"ffn": ("up", "down"), "attn": ("v", "o")}


@dataclass
class LatenConfig:
    """LaTen's settings (defaults: the spec's).

    Attributes:
        groups: neuron groups to transfer: "ffn" (up rows + down columns) and/or "attn"
            (v rows + o columns).
        top_fraction: share of each layer's neurons kept per group (0.1).
        score: "logprob" (first-order log-prob gain of the target token) or "logit" (its logit
            gain; gathers only the target tokens' LM-head rows).
        hidden: hypernetwork hidden width (None: the source width d_S).
        init_std: std of the hypernetworks' weight init (biases 0).
        align_per_step: align records added to each extract record in a step (15 → 16 examples).
        lm_weight, mse_weight: weights of the LM loss and of ``mean(delta²)``.
        lr, weight_decay, grad_clip: AdamW settings (grad_clip None: no clipping).
        micro_batch_size: examples per forward/backward within a step (gradients accumulate).
        attribution_batch_size: examples per attribution forward.
        max_steps: cap on the steps (None: one per extract record).
        max_length, prompt_style, loss_on, seed, progress: as in the other methods.
    """

    groups: tuple[str, ...] = GROUPS
    top_fraction: float = 0.1
    score: Literal["logprob", "logit"] = "logprob"
    hidden: int | None = None
    init_std: float = 1e-5
    align_per_step: int = 15
    lm_weight: float = 1.0
    mse_weight: float = 1000.0
    lr: float = 1e-5
    weight_decay: float = 0.05
    grad_clip: float | None = None
    micro_batch_size: int = 4
    attribution_batch_size: int = 4
    max_steps: int | None = None
    max_length: int = 256
    prompt_style: str = "transfer"
    loss_on: str = "response"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.groups = tuple(self.groups)
        bad = [g for g in self.groups if g not in GROUPS]
        if bad or not self.groups:
            raise InvalidParameterError(
                f"groups must be a non-empty subset of {GROUPS}, got {self.groups}"
            )
        if not 0 < self.top_fraction <= 1:
            raise InvalidParameterError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.score not in ("logprob", "logit"):
            raise InvalidParameterError(f"score must be logprob or logit, got {self.score!r}")
        if (
            self.lr <= 0
            or self.micro_batch_size < 1
            or self.attribution_batch_size < 1
            or self.align_per_step < 0
        ):
            raise InvalidParameterError(
                "lr must be positive; batch sizes >= 1; align_per_step >= 0"
            )


# --------------------------------------------------------------------------- model parts


@dataclass(frozen=True)
class NeuronParts:
    """The modules of one decoder block that a neuron group reads and writes.

    ``act``: the module whose *input* holds the neurons' activations and whose weight columns are
    their output vectors (down_proj / o_proj); ``row``: the module whose weight rows are the
    neurons' input vectors (up_proj / v_proj); ``row_index``: neuron → row of ``row`` (GQA maps
    several attention channels to one v row)."""

    act: nn.Linear
    row: nn.Linear
    row_index: Tensor


def neuron_parts(model: nn.Module, layer0: int, group: str) -> NeuronParts:
    block = surgery.decoder_layers(model)[layer0]
    try:
        if group == "ffn":
            mlp = surgery.mlp_module(block)
            act, row = mlp.down_proj, mlp.up_proj
            return NeuronParts(act, row, torch.arange(act.in_features, device=act.weight.device))
        attn = surgery.attention_module(block)
        act, row = attn.o_proj, attn.v_proj
    except AttributeError as err:
        raise InvalidParameterError(
            "LaTen needs llama-style up/down and v/o projections; "
            f"{type(block).__name__} has none ({err})"
        ) from None
    config = surgery.unwrap(model).config
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = act.in_features // heads
    c = torch.arange(act.in_features, device=act.weight.device)  # indices live beside the weights
    return NeuronParts(act, row, (c // head_dim) // (heads // kv) * head_dim + c % head_dim)


def param_vectors(parts: NeuronParts, kind: str, neurons: Tensor) -> Tensor:
    """The weight vectors (k, d) of ``neurons`` for one kind: rows of up/v, columns of down/o."""
    if kind in ("up", "v"):
        return parts.row.weight.detach()[parts.row_index[neurons]].float()
    return parts.act.weight.detach()[:, neurons].T.float()


# --------------------------------------------------------------------------- attribution


def direct_gradient(model: nn.Module, resid: Tensor, targets: Tensor, score: str) -> Tensor:
    """``∇_h`` of log p(y|h) (or of the logit of y) through final norm + LM head, per position.

    ``resid`` (n, d): residual states entering the final norm; ``targets`` (n,). "logit" gathers
    only the target tokens' rows of the head; "logprob" needs the normaliser, one head pass over
    the n positions (never over neurons).
    """
    unembed = surgery.Unembed(model)
    head = unembed.head
    with torch.enable_grad():
        h = resid.detach().to(head.weight.dtype).requires_grad_(True)
        normed = unembed.norm(h)
        if score == "logit":
            z = (normed * head.weight[targets]).sum(-1).float()
            if head.bias is not None:
                z = z + head.bias[targets].float()
            objective = unembed.softcap(z).sum()
        else:
            z = unembed.softcap(head(normed).float())
            objective = torch.log_softmax(z, dim=-1).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(objective, h)
    return grad.float()


def neuron_scores(
    model: nn.Module,
    batches: Sequence[dict],
    layers0: Sequence[int],
    groups: Sequence[str],
    score: str = "logprob",
) -> dict[tuple[str, int], Tensor]:
    """Mean direct-path gain of every neuron: ``{(group, layer0): (n_neurons,)}``.

    One no-grad forward per batch captures, at the supervised positions only, the neurons'
    activations (inputs of down_proj / o_proj, by pre-hooks) and the residual entering the final
    norm; then ``gain = a ⊙ (u W_out)`` per layer with u from :func:`direct_gradient`.
    """
    device = next(model.parameters()).device
    parts = {(g, layer): neuron_parts(model, layer, g) for g in groups for layer in layers0}
    totals = {key: torch.zeros(p.act.in_features, dtype=torch.float64) for key, p in parts.items()}
    count = 0
    for batch in batches:
        mask, tgt = supervised_positions(batch["labels"].to(device))
        rows, cols = mask.nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        store = _captured_inputs(model, parts, batch, rows, cols)
        u = direct_gradient(model, store["resid"], tgt[rows, cols], score)
        with torch.no_grad():
            for key, p in parts.items():
                gain = store[key].float() * (u @ p.act.weight.detach().float())  # (n, N)
                totals[key] += gain.sum(0).double().cpu()  # totals stay on the CPU
        count += rows.numel()
    if count == 0:
        raise InvalidParameterError("no supervised tokens in the attribution records")
    return {key: (t / count).float() for key, t in totals.items()}


def _captured_inputs(
    model: nn.Module, parts: dict, batch: dict, rows: Tensor, cols: Tensor
) -> dict[object, Tensor]:
    """One no-grad forward of ``batch``: the input of every ``parts`` act module (the neurons'
    activations) and of the final norm (key "resid"), at positions (rows, cols) only."""
    device = next(model.parameters()).device
    store: dict = {}

    def grab(key):
        return lambda mod, args: store.__setitem__(key, args[0][rows, cols].detach())

    handles = [p.act.register_forward_pre_hook(grab(key)) for key, p in parts.items()]
    handles.append(surgery.final_norm(model).register_forward_pre_hook(grab("resid")))
    try:
        with torch.no_grad():
            model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                logits_to_keep=1,
                use_cache=False,
            )
    finally:
        for h in handles:
            h.remove()
    return store


def top_neurons(scores: Tensor, fraction: float) -> Tensor:
    """Indices of the ceil(fraction·N) highest scores, best first (ties: lower index)."""
    k = max(1, math.ceil(fraction * scores.numel()))
    return torch.sort(scores, descending=True, stable=True).indices[:k]


# --------------------------------------------------------------------------- plan and hypernetworks


@dataclass
class Plan:
    """Per group: target layers (0-based), source inputs per kind (L, k, d_S), target indices
    (L, k)."""

    target_layers: list[int]
    source_layers: list[int]
    target_neurons: dict[str, Tensor]  # group → (L, k)
    source_neurons: dict[str, Tensor]  # group → (L, k)
    inputs: dict[str, Tensor]  # kind → (L, k, d_S)


def build_plan(
    source: nn.Module,
    target: nn.Module,
    pairing: Pairing,
    src_scores: dict,
    tgt_scores: dict,
    config: LatenConfig,
) -> Plan:
    t_layers = list(range(pairing.n_target))
    s_layers = [pairing.target_to_source[j + 1] - 1 for j in t_layers]
    tgt_idx, src_idx, inputs = {}, {}, {}
    for g in config.groups:
        t_sel, s_sel = [], []
        for j, s in zip(t_layers, s_layers):
            t_top = top_neurons(tgt_scores[(g, j)], config.top_fraction)
            s_top = top_neurons(src_scores[(g, s)], config.top_fraction)
            k = min(len(t_top), len(s_top))
            t_sel.append(t_top[:k]), s_sel.append(s_top[:k])
        k = min(len(t) for t in t_sel)
        tgt_idx[g] = torch.stack([t[:k] for t in t_sel])
        src_idx[g] = torch.stack([s[:k] for s in s_sel])
        for kind in KINDS[g]:
            inputs[kind] = torch.stack(
                [
                    param_vectors(neuron_parts(source, s, g), kind, src_idx[g][i])
                    for i, s in enumerate(s_layers)
                ]
            )
    return Plan(t_layers, s_layers, tgt_idx, src_idx, inputs)


class Hypernetworks(nn.Module):
    """One ``Linear(d_S, hidden) → ReLU → Linear(hidden, d_T)`` per parameter kind."""

    def __init__(
        self,
        kinds: Sequence[str],
        d_source: int,
        d_target: int,
        hidden: int | None,
        init_std: float,
        seed: int,
    ):
        super().__init__()
        hidden = hidden or d_source
        gen = torch.Generator().manual_seed(seed)
        self.nets = nn.ModuleDict()
        for kind in kinds:
            net = nn.Sequential(nn.Linear(d_source, hidden), nn.ReLU(), nn.Linear(hidden, d_target))
            with torch.no_grad():
                for lin in (net[0], net[2]):
                    lin.weight.normal_(0.0, init_std, generator=gen)
                    lin.bias.zero_()
            self.nets[kind] = net

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Source vectors (L, k, d_S) per kind → deltas (L, k, d_T) per kind."""
        return {kind: net(inputs[kind]) for kind, net in self.nets.items()}

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _group(kind: str) -> str:
    return "ffn" if kind in KINDS["ffn"] else "attn"


def _delta_hook(kind: str, index: Tensor, delta: Tensor):
    """Forward hook adding the effect of ``delta`` at ``index`` without touching the weight.

    Rows (up/v): ``W[i] += δ_i`` ⇒ ``out[..., i] += x · δ_i``; columns (down/o): ``W[:, i] += δ_i``
    ⇒ ``out += x[..., index] @ δ``. Repeated indices (GQA v rows) add up, as in the weights.
    """

    def hook(module, args, out):
        x = args[0]
        d = delta.to(x.dtype)
        if kind in ("up", "v"):
            return out.index_add(-1, index, x @ d.T)
        return out + x[..., index] @ d

    return hook


class LatenObjective:
    """The trainable state of a LaTen run and its two loss terms (tests drive it directly)."""

    def __init__(self, target: nn.Module, plan: Plan, hyper: Hypernetworks, config: LatenConfig):
        self.target, self.plan, self.hyper, self.config = target, plan, hyper, config
        self.parts = {
            g: [neuron_parts(target, layer, g) for layer in plan.target_layers]
            for g in config.groups
        }

    def deltas(self) -> dict[str, Tensor]:
        return self.hyper(self.plan.inputs)

    def _indices(self, kind: str, i: int) -> tuple[nn.Linear, Tensor]:
        g = _group(kind)
        p, neurons = self.parts[g][i], self.plan.target_neurons[g][i]
        if kind in ("up", "v"):
            return p.row, p.row_index[neurons.to(p.row_index.device)]
        return p.act, neurons.to(p.act.weight.device)  # neurons are chosen on the CPU

    @contextmanager
    def injected(self, deltas: dict[str, Tensor]):
        """The target with ``deltas`` added at the selected neurons (hooks always removed)."""
        handles = []
        try:
            for kind, d in deltas.items():
                for i in range(len(self.plan.target_layers)):
                    module, index = self._indices(kind, i)
                    handles.append(module.register_forward_hook(_delta_hook(kind, index, d[i])))
            yield self.target
        finally:
            for h in handles:
                h.remove()

    def lm_loss(self, batch: dict) -> Tensor:
        """Per-example response cross-entropy of the target with the current deltas, (b,)."""
        with self.injected(self.deltas()):
            return ce_per_example(self.target, batch)

    def penalty(self) -> Tensor:
        """``mean(delta²)`` over every delta entry (the spec's MSE(delta, 0))."""
        return torch.cat([d.reshape(-1) for d in self.deltas().values()]).square().mean()

    def loss(self, batch: dict) -> Tensor:
        """A full one-batch objective (tests): ``lm_weight · mean CE + mse_weight · penalty``."""
        return (
            self.config.lm_weight * self.lm_loss(batch).mean()
            + self.config.mse_weight * self.penalty()
        )

    @torch.no_grad()
    def bake(self) -> None:
        """Add the final deltas into the target's weights (in place)."""
        for kind, d in self.deltas().items():
            for i in range(len(self.plan.target_layers)):
                module, index = self._indices(kind, i)
                w = module.weight
                if kind in ("up", "v"):
                    w.index_add_(0, index, d[i].to(w.dtype))
                else:
                    w.index_add_(1, index, d[i].T.to(w.dtype))

    def delta_params_per_block(self) -> dict[int, int]:
        n = {}
        for inp in self.plan.inputs.values():
            for layer in self.plan.target_layers:
                n[layer] = n.get(layer, 0) + inp.shape[1] * surgery.hidden_size(self.target)
        return n

    def hypernetwork_flops(self, passes: int = 1) -> float:
        """Forward + backward FLOPs of ``passes`` runs of the hypernetworks over the source
        vectors (6 per parameter and row; each kind's network sees only its own rows)."""
        first = next(iter(self.hyper.nets))
        rows = self.plan.inputs[first].shape[0] * self.plan.inputs[first].shape[1]
        return passes * 6.0 * self.hyper.param_count() * rows / len(self.hyper.nets)


# --------------------------------------------------------------------------- entry point


def step_schedule(n_extract: int, n_align: int, config: LatenConfig) -> list[list[int]]:
    """Step t: extract example t (index t) + ``align_per_step`` align examples (indices offset by
    n_extract), drawn without repetition within a step from a seeded stream of permutations."""
    gen = torch.Generator().manual_seed(config.seed)
    per_step = min(config.align_per_step, n_align)
    stream: list[int] = []
    steps = []
    for t in range(n_extract):
        while len(stream) < per_step:
            stream += torch.randperm(n_align, generator=gen).tolist()
        chosen, rest = [], []
        for i in stream:  # keep the stream order; defer repeats of this step to the next step
            (chosen if len(chosen) < per_step and i not in chosen else rest).append(i)
        stream = rest
        steps.append([t] + [n_extract + i for i in chosen])
    return steps[: config.max_steps] if config.max_steps else steps


def transfer(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: LatenConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """LaTen from ``source`` into ``target`` (deltas added into ``target`` in place).

    ``attribution_records`` are the extract records (attribution data and one per step);
    ``train_records`` the align records. ``stop_after_stage`` caps the steps.
    """
    begin("laten", source, target, config, LatenConfig, resume)
    t_start = time.perf_counter()
    pairing = uniform_pairing(surgery.num_layers(source), surgery.num_layers(target))
    pad = pad_id(tokenizer)
    src_flags, tgt_flags = requires_grad_flags(source), requires_grad_flags(target)
    with costs.PeakMemory() as peak:
        try:
            freeze(source), freeze(target)
            t_locate = time.perf_counter()
            extract = tokenize(attribution_records, tokenizer, config)
            align = tokenize(train_records, tokenizer, config)
            plan, located = _locate_stage(source, target, pairing, extract, pad, config, t_locate)
            objective = LatenObjective(target, plan, _hypernetworks(source, target, config), config)
            schedule = cap_steps(step_schedule(len(extract), len(align), config), stop_after_stage)
            record = _align_stage(objective, schedule, extract + align, pad)
        finally:
            restore_flags(source, src_flags), restore_flags(target, tgt_flags)
    stages = [located, record]
    hyper = objective.hyper
    cost = summarize(
        stages,
        time.perf_counter() - t_start,
        peak,
        train_steps=len(schedule),
        hypernetwork_params=hyper.param_count(),
        **costs.parameter_counts(target),
    )
    record["hypernetworks"] = {k: v.detach().clone() for k, v in hyper.state_dict().items()}
    return TransferResult(
        model=target,
        pairing=pairing,
        scores=None,
        stages=stages,
        cost=cost,
        config={"method": "laten", **asdict(config)},
    )


def _locate_stage(
    source: nn.Module,
    target: nn.Module,
    pairing: Pairing,
    extract: list[dict],
    pad: int,
    config: LatenConfig,
    t0: float,
) -> tuple[Plan, dict]:
    """Step 1: neuron scores of both models on the extract examples and the paired neurons; the
    plan and the stage record (its wall time counted from ``t0``, before tokenisation)."""
    ab = config.attribution_batch_size
    attr_batches = [collate(extract[i : i + ab], pad) for i in range(0, len(extract), ab)]
    src_layers = sorted(set(s - 1 for s in pairing.source_layers))
    tgt_layers = list(range(surgery.num_layers(target)))
    src_scores = neuron_scores(source, attr_batches, src_layers, config.groups, config.score)
    tgt_scores = neuron_scores(target, attr_batches, tgt_layers, config.groups, config.score)
    plan = build_plan(source, target, pairing, src_scores, tgt_scores, config)
    record = {
        "stage": "locate",
        "wall_s": time.perf_counter() - t0,
        "flops": _locate_flops((source, target), attr_batches),
        "tokens": 2 * sum(b["input_ids"].numel() for b in attr_batches),
        "real_tokens": 2 * sum(int(b["attention_mask"].sum()) for b in attr_batches),
        "neurons_per_layer": {g: int(plan.target_neurons[g].shape[1]) for g in config.groups},
        "target_neurons": {g: t.tolist() for g, t in plan.target_neurons.items()},
        "source_neurons": {g: t.tolist() for g, t in plan.source_neurons.items()},
    }
    return plan, record


def _locate_flops(models: Sequence[nn.Module], batches: Sequence[dict]) -> float:
    """Analytic FLOPs of the attribution: a forward of each model over every batch, plus the
    LM-head pass and its backward at the supervised positions."""
    flops = 0.0
    for model in models:
        shape = costs.model_shape(model)
        for b in batches:
            n_sup = int(supervised_positions(b["labels"])[0].sum())
            tokens, seq = b["input_ids"].numel(), b["input_ids"].shape[1]
            flops += costs.prefix_forward_flops(shape, shape.num_layers, tokens, seq)
            flops += 3 * 2.0 * shape.hidden * shape.vocab * n_sup  # head pass + its backward
    return flops


def _hypernetworks(source: nn.Module, target: nn.Module, config: LatenConfig) -> Hypernetworks:
    kinds = [k for g in config.groups for k in KINDS[g]]
    d_s, d_t = surgery.hidden_size(source), surgery.hidden_size(target)
    hyper = Hypernetworks(kinds, d_s, d_t, config.hidden, config.init_std, config.seed)
    # seeded on the CPU (same numbers on every device), trained where the target is
    return hyper.to(next(target.parameters()).device)


def _align_stage(
    objective: LatenObjective, schedule: list[list[int]], examples: list[dict], pad: int
) -> dict:
    """Steps 2-4: train the hypernetworks over ``schedule``, then add their final deltas into
    the target's weights; the stage record of :func:`train` (plus the deltas' RMS per kind)."""
    config, hyper = objective.config, objective.hyper
    shape = costs.model_shape(objective.target)
    spec = costs.TrainableSpec(lora_params=objective.delta_params_per_block())
    hyper_pass = objective.hypernetwork_flops()

    def loss(batch):
        ce = objective.lm_loss(batch)
        return config.lm_weight * ce, {"lm": ce}

    def extra():
        pen = objective.penalty()
        return config.mse_weight * pen, {"mse": float(pen.detach())}

    def flops(batch):  # target pass with delta "adapters" + the hypernetworks (per micro-batch)
        return train_flops(shape, spec, batch) + hyper_pass

    params = [{"params": list(hyper.parameters())}]
    record = train(
        params, schedule, examples, pad, loss, config, flops, extra_fn=extra, desc="laten"
    )
    record["flops"] += objective.hypernetwork_flops(len(schedule))  # the penalty's pass
    objective.bake()
    with torch.no_grad():
        final = objective.deltas()
    record["delta_rms"] = {k: float(d.square().mean().sqrt()) for k, d in final.items()}
    return record


__all__ = [
    "Hypernetworks",
    "LatenConfig",
    "LatenObjective",
    "build_plan",
    "direct_gradient",
    "neuron_scores",
    "step_schedule",
    "top_neurons",
    "transfer",
]
