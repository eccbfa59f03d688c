"""Layer attribution of the source model and the pairing built from it (spec, Method 3-4).

Layer Gradient × Activation (captum's ``LayerGradientXActivation``) of the supervised loss with
respect to every decoder block's output, from ONE forward and ONE backward pass per batch for all
layers at once: captum is given the whole list of blocks, and the ``"hooks"`` method captures the
same block outputs with :func:`semalign_core.lm.nethook.capture_hidden` and asks autograd for all of
their gradients together. The backward only reaches the block outputs (``torch.autograd.grad``
with those tensors as inputs), so no parameter gradient is ever computed or stored.

Loss: per example, the mean next-token cross-entropy over its supervised tokens (labels != -100,
the response under ``loss_on="response"``). captum needs one scalar per example; the gradient it
takes is that of the sum over the batch, which the hooks method takes as well.

Aggregation (the spec leaves it open; ``granularity`` is the named ablation "attribution
granularity"). With ``A[b,t,c] = grad · act`` of block k, the absolute value is taken at the
granularity's unit before summing:

* ``granularity="channel"`` (default): ``u[b,t] = Σ_c |A[b,t,c]|`` per non-pad token (for
  signed aggregates the same as "token");
* ``granularity="token"``: ``u[b,t] = |Σ_c A[b,t,c]|`` per non-pad token (the first-order change
  of the loss if that token's state were zeroed);
* ``granularity="example"``: ``u[b] = |Σ_{t non-pad} Σ_c A[b,t,c]|`` per example.

``aggregate`` reduces the units over all batches: ``sum_abs`` Σ|u|, ``mean_abs`` mean |u| (per
token, or per example), ``sum_signed`` Σu, ``mean_signed`` mean u (signed: no |·| anywhere, so
"channel" and "token" coincide and sums agree at every granularity).

Why "channel" is the default: when a block's output reaches the loss only through a
scale-invariant map (the final RMSNorm/LayerNorm after the last block), ``f(c·h) = f(h)`` so
``∇f · h = 0`` (Euler): the last layer's per-token grad·act sums to zero and "token"/"example"
score it ≈ 0, which would keep the pairing from ever choosing it. Per-channel magnitudes do not
cancel that way.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semalign_core.data.formatting import IGNORE_INDEX
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.semalign.frontier import frozen_parameters
from semalign_core.semalign.pairing import (
    Pairing,
    floor_grid,
    floor_pairing,
    interpolation_weights,
    select_one_per_target,
    uniform_pairing,
)

AGGREGATES = ("sum_abs", "mean_abs", "sum_signed", "mean_signed")
METHODS = ("captum", "hooks")
GRANULARITIES = ("channel", "token", "example")
STRATEGIES = ("attributed", "floor", "uniform", "interpolate")


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------- the loss


def supervised_positions(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mask over positions that predict a supervised token, the token they predict).

    Position t predicts token t+1; the last position predicts nothing.
    """
    target = torch.full_like(labels, IGNORE_INDEX)
    target[:, :-1] = labels[:, 1:]
    return target != IGNORE_INDEX, target


def response_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """Per-example mean next-token cross-entropy on supervised tokens: shape (batch,).

    The LM head runs only at the supervised positions (``logits_to_keep=1`` keeps the model from
    computing full logits; ``hidden_states[-1]`` is the final-normed last state). An example
    without supervised tokens has loss 0.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    final = out.hidden_states[-1]
    mask, target = supervised_positions(labels.to(final.device))
    rows, cols = mask.nonzero(as_tuple=True)
    logits = surgery.Unembed(model).decode_normed(final[rows, cols])
    per_token = F.cross_entropy(logits.float(), target[rows, cols], reduction="none")
    n = input_ids.shape[0]
    total = per_token.new_zeros(n).index_add(0, rows, per_token)
    count = per_token.new_zeros(n).index_add(0, rows, torch.ones_like(per_token))
    return total / count.clamp_min(1.0)


@contextmanager
def _inputs_require_grad(model: nn.Module):
    """Make the embedding output require grad, so block outputs carry a graph even when every
    parameter of the model is frozen (the gradient is taken w.r.t. activations only)."""

    def hook(module, args, output):
        if not output.requires_grad:
            output.requires_grad_(True)
        return output

    handle = surgery.input_embeddings(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- grad x act


def _grad_x_act_hooks(model: nn.Module, batch: dict) -> list[Tensor]:
    n_layers = surgery.num_layers(model)
    with capture_hidden(model, layers=None, points=("block_out",), detach=False) as trace:
        loss = response_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        ).sum()
    acts = [trace["block_out"][k] for k in range(n_layers)]
    grads = torch.autograd.grad(loss, acts)
    return [g.detach() * a.detach() for g, a in zip(grads, acts)]


def _grad_x_act_captum(model: nn.Module, batch: dict) -> list[Tensor]:
    from captum.attr import LayerGradientXActivation  # slow to import; only method='captum' uses it

    def forward_func(input_ids, attention_mask, labels):
        return response_loss(model, input_ids, attention_mask, labels)

    layers = list(surgery.decoder_layers(model))
    method = LayerGradientXActivation(forward_func, layers)
    attrs = method.attribute(
        batch["input_ids"], additional_forward_args=(batch["attention_mask"], batch["labels"])
    )
    # A block returning a tuple gives a tuple of attributions: the residual stream is the first.
    return [(a[0] if isinstance(a, (tuple, list)) else a).detach() for a in attrs]


def grad_x_activation(model: nn.Module, batch: dict, method: str = "captum") -> list[Tensor]:
    """Per-layer ``grad · act`` tensors (batch, seq, d) of one batch: one forward, one backward."""
    _check("method", method, METHODS)
    device = next(model.parameters()).device
    batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
    # Frozen weights: autograd keeps nothing for weight gradients, which no attribution needs.
    with torch.enable_grad(), _inputs_require_grad(model), frozen_parameters(model):
        return (_grad_x_act_captum if method == "captum" else _grad_x_act_hooks)(model, batch)


def _reduce(a: Tensor, keep: Tensor, aggregate: str, granularity: str) -> Tensor:
    """Sum over one batch of the units of one layer's grad·act (see the module docstring)."""
    absolute = aggregate.endswith("abs")
    a = a.double()
    if absolute and granularity == "channel":
        per_token = a.abs().sum(dim=-1) * keep
    else:
        per_token = a.sum(dim=-1) * keep  # (batch, seq), pads zeroed
    units = per_token.sum(dim=-1) if granularity == "example" else per_token[keep]
    if absolute and granularity != "channel":
        units = units.abs()
    return units.sum().cpu()


def layer_attribution(
    model: nn.Module,
    batches: Iterable[dict],
    aggregate: Literal["sum_abs", "mean_abs", "sum_signed", "mean_signed"] = "sum_abs",
    method: Literal["captum", "hooks"] = "captum",
    granularity: Literal["channel", "token", "example"] = "channel",
) -> Tensor:
    """One attribution score per decoder layer (L,), float64, from padded SFT ``batches``.

    Each batch is a dict with ``input_ids``, ``attention_mask``, ``labels`` (see
    :func:`semalign_core.data.batching.collate`). See the module docstring for the aggregation.
    """
    _check("aggregate", aggregate, AGGREGATES)
    _check("method", method, METHODS)
    _check("granularity", granularity, GRANULARITIES)
    n_layers = surgery.num_layers(model)
    total = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()  # no dropout: attribution is deterministic
    try:
        for batch in batches:
            attrs = grad_x_activation(model, batch, method)
            keep = batch["attention_mask"].to(attrs[0].device).bool()
            for k, a in enumerate(attrs):
                total[k] += _reduce(a, keep, aggregate, granularity)
            count += int(keep.sum()) if granularity != "example" else int(keep.shape[0])
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidParameterError("layer_attribution got no tokens (empty batches)")
    return total / count if aggregate.startswith("mean") else total


# --------------------------------------------------------------------------- pairing


def pair_layers(
    scores: Tensor | list[float] | None,
    n_target: int,
    strategy: Literal["attributed", "floor", "uniform", "interpolate"] = "attributed",
    window: int | None = None,
    n_source: int | None = None,
    many_to_one: bool = False,
) -> Pairing:
    """One source layer per target layer (1-based), dispatching to :mod:`.pairing`.

    ``attributed``: highest score within each target layer's depth window
    (``select_one_per_target``); ``floor``: the spec's floor grid; ``uniform``: rounded grid;
    ``interpolate``: the floor grid's layers as ``target_to_source`` and, in ``notes``, the spec's
    interpolation ``(a, b, λ)`` per target layer (see :func:`interpolation_plan`). The grid
    strategies ignore the scores (pass ``n_source`` when ``scores`` is None). ``many_to_one``
    allows a target deeper than the source (see :mod:`.pairing`).
    """
    _check("strategy", strategy, STRATEGIES)
    if scores is not None:
        scores = [float(s) for s in (scores.tolist() if isinstance(scores, Tensor) else scores)]
        n_source = len(scores)
    if n_source is None:
        raise InvalidParameterError("pair_layers needs scores or n_source")
    if strategy == "attributed":
        if scores is None:
            raise InvalidParameterError("strategy='attributed' needs attribution scores")
        return select_one_per_target(scores, n_target, window, many_to_one=many_to_one)
    if strategy == "floor":
        return floor_pairing(n_source, n_target, many_to_one=many_to_one)
    if strategy == "uniform":
        return uniform_pairing(n_source, n_target, many_to_one=many_to_one)
    weights = interpolation_weights(n_source, n_target, many_to_one=many_to_one)
    grid = floor_grid(n_source, n_target, many_to_one=many_to_one)
    notes = tuple(
        f"target {j}: (1-{lam:.6g})*source {a} + {lam:.6g}*source {b}"
        for j, (a, b, lam) in enumerate(weights, start=1)
    )
    t2s = dict(enumerate(grid, start=1))
    return Pairing(t2s, "interpolate", n_source, n_target, notes, many_to_one)


def interpolation_plan(pairing: Pairing) -> dict[int, list[tuple[int, float]]]:
    """Per target layer, the source layers and weights whose states are mixed (1-based).

    ``interpolate`` pairings mix two source layers; every other pairing uses one with weight 1.
    """
    if pairing.strategy != "interpolate":
        return {j: [(s, 1.0)] for j, s in pairing.target_to_source.items()}
    plan = {}
    weights = interpolation_weights(
        pairing.n_source, pairing.n_target, many_to_one=pairing.many_to_one
    )
    for j, (a, b, lam) in enumerate(weights, start=1):
        mix = [(a, 1.0 - lam), (b, lam)]
        plan[j] = [(s, w) for s, w in mix if w > 0.0] or [(a, 1.0)]
    return plan
