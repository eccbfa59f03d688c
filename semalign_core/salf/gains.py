"""Gains of each block from a deviation trace, the eof choice, budgets and padding strategies.

Spec, Method 4–5. A deviation trace is D_0..D_L (space 0 = embedding output, space k = after
block k). A gain function maps (D, block parameter counts n_1..n_L) to gains g_1..g_L, one per
block. The paper's "derived formula of scaling law" is not public; every formula here is a
reconstruction, registered by name in :data:`GAINS` (docs/decisions.md says why each):

``drop``            g_k = D_{k−1} − D_k.
``scaling_kaplan``  fit Kaplan's L(N) = (N_c/N)^α to (N_k, D_k), k = 1..L, with N_k the cumulative
                    block parameters (least squares of log D on log N); g_k = observed drop −
                    law-predicted drop, i.e. (D_{k−1} − D_k) − (D̂_{k−1} − D̂_k) with D̂_0 := D_0
                    (the law is undefined at N = 0): the block that reduces the deviation most
                    *beyond what its share of capacity explains*.
``scaling_kaplan_ratio``  the same fit; g_k = observed drop / predicted drop (ratio form).
``scaling_fit``     the same fit; g_k = D̂_{k−1} − D̂_k, each block's predicted contribution (a
                    smoothed drop; monotone in k for equal-size blocks, so eof lands at an end).
``zhang_finetune``  Zhang et al. 2024's L(X, D_f) = A·X^−α·D_f^−β + E with D_f fixed within one
                    dataset (D_f^−β folds into A) and X = N_k: fit D_k = A·N_k^−α + E; g_k =
                    (D_{k−1} − D_k)/(D_{k−1} − E), the fraction of the still *reducible*
                    deviation that block k removes.

eof = argmax gain ∈ 1..L−1 (eof = L would leave nothing to train), eof = e meaning embeddings and
blocks 1..e frozen; SALF's policies start the argmax at block 2 (:data:`FIRST_BLOCK`: block 1's
gain rests on space 0, which carries no per-example information). Budgets raise eof; padding
strategies form batches whose examples disagree on (per-example) eof.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from semalign_core.errors import InvalidParameterError

EPS = 1e-8
GainFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
GAINS: dict[str, GainFn] = {}


def register_gain(name: str):
    def deco(fn: GainFn) -> GainFn:
        GAINS[name] = fn
        return fn

    return deco


def _as_arrays(dev, params) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(dev, dtype=np.float64).reshape(-1)
    n = np.asarray(params, dtype=np.float64).reshape(-1)
    if d.shape[0] != n.shape[0] + 1:
        raise InvalidParameterError(
            f"a trace of {d.shape[0]} spaces needs {d.shape[0] - 1} block sizes, got {n.shape[0]}"
        )
    if d.shape[0] < 2:
        raise InvalidParameterError("a deviation trace needs at least 2 spaces (1 block)")
    if np.any(n <= 0):
        raise InvalidParameterError("block parameter counts must be positive")
    return d, n


@dataclass(frozen=True)
class PowerLawFit:
    """log D = log_c − α log N (+ E offset for the Zhang form): D̂(N) = E + c·N^−α."""

    alpha: float
    log_c: float
    offset: float = 0.0

    def predict(self, n: np.ndarray) -> np.ndarray:
        return self.offset + np.exp(self.log_c - self.alpha * np.log(n))


def fit_power_law(dev: np.ndarray, cum_params: np.ndarray, offset: float = 0.0) -> PowerLawFit:
    """Least squares of log(D_k − offset) on log N_k (k = 1..L)."""
    y = np.log(np.clip(dev - offset, EPS, None))
    x = np.log(cum_params)
    if len(x) < 2 or np.ptp(x) == 0:
        return PowerLawFit(alpha=0.0, log_c=float(y.mean()), offset=offset)
    slope, intercept = np.polyfit(x, y, 1)
    return PowerLawFit(alpha=float(-slope), log_c=float(intercept), offset=offset)


def _kaplan(dev, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, n = _as_arrays(dev, params)
    cum = np.cumsum(n)
    fit = fit_power_law(d[1:], cum)
    pred = np.concatenate([[d[0]], fit.predict(cum)])
    return d, pred, -np.diff(pred)


@register_gain("drop")
def gain_drop(dev, params) -> np.ndarray:
    d, _ = _as_arrays(dev, params)
    return d[:-1] - d[1:]


@register_gain("scaling_kaplan")
def gain_scaling_kaplan(dev, params) -> np.ndarray:
    d, _, predicted_drop = _kaplan(dev, params)
    return (d[:-1] - d[1:]) - predicted_drop


@register_gain("scaling_kaplan_ratio")
def gain_scaling_kaplan_ratio(dev, params) -> np.ndarray:
    d, _, predicted_drop = _kaplan(dev, params)
    denom = np.where(
        np.abs(predicted_drop) < EPS, np.copysign(EPS, predicted_drop + 0.0), predicted_drop
    )
    return (d[:-1] - d[1:]) / denom


@register_gain("scaling_fit")
def gain_scaling_fit(dev, params) -> np.ndarray:
    return _kaplan(dev, params)[2]


def fit_zhang(dev, params, grid: int = 64, rounds: int = 3) -> PowerLawFit:
    """Fit D_k = A·N_k^−α + E (k = 1..L): E by a grid over [0, min D) refined ``rounds`` times
    around the best value, A and α by least squares of log(D − E) on log N for each E."""
    d, n = _as_arrays(dev, params)
    cum, y = np.cumsum(n), d[1:]
    top = float(y.min())
    if top <= 0:
        return fit_power_law(y, cum)
    lo, hi = 0.0, top
    best, best_err = fit_power_law(y, cum), math.inf
    for _ in range(rounds):
        values = np.linspace(lo, hi, grid, endpoint=False)
        for e in values:
            fit = fit_power_law(y, cum, offset=float(e))
            err = float(np.mean((fit.predict(cum) - y) ** 2))
            if err < best_err:
                best, best_err = fit, err
        step = (hi - lo) / grid
        lo, hi = max(0.0, best.offset - step), min(top, best.offset + step)
    return best


@register_gain("zhang_finetune")
def gain_zhang_finetune(dev, params) -> np.ndarray:
    d, _ = _as_arrays(dev, params)
    e = fit_zhang(dev, params).offset
    return (d[:-1] - d[1:]) / np.clip(d[:-1] - e, EPS, None)


def compute_gains(dev, params, gain: str = "drop") -> np.ndarray:
    """Gains g_1..g_L (array of length L; index k−1 is block k)."""
    if gain not in GAINS:
        raise InvalidParameterError(f"unknown gain {gain!r}; choose from {', '.join(GAINS)}")
    return GAINS[gain](dev, params)


def choose_eof(
    gains: Sequence[float], allow_full_freeze: bool = False, first_block: int = 1
) -> int:
    """eof = argmax gain over blocks ``first_block``..L−1 (1-based), L too when
    ``allow_full_freeze``.

    Ties go to the shallowest block (more layers trained: the safe side). ``first_block=2``
    leaves block 1 out: its gain D_0 − D_1 rests on space 0, which carries no per-example
    information when every prompt ends in the same token (see :data:`FIRST_BLOCK`)."""
    g = np.asarray(gains, dtype=np.float64)
    L = g.shape[0]
    last = L if allow_full_freeze or L == 1 else L - 1
    first = min(max(int(first_block), 1), last)
    candidates = np.where(np.isnan(g[first - 1 : last]), -np.inf, g[first - 1 : last])
    return int(np.argmax(candidates)) + first


# The first block whose gain may win: 2 leaves out block 1's gain D_0 − D_1. Space 0 is the
# embedding of the prompt's last token, which SALF's template makes the same ":" for every example,
# so D_0 depends on the label alone (docs/decisions.md, "Space 0"). It is not in the SALF records'
# config: changing it needs a new `experiments.salf_cells.VERSION` (and salf_analysis's version).
FIRST_BLOCK = 2


def check_eof(eof: int, num_layers: int) -> int:
    if not isinstance(eof, (int, np.integer)) or not 0 <= int(eof) <= num_layers:
        raise InvalidParameterError(
            f"eof must be an integer in 0..{num_layers} (0 = only embeddings frozen), got {eof!r}"
        )
    return int(eof)


def eof_per_example(
    dev_matrix,
    params,
    gain: str = "drop",
    allow_full_freeze: bool = False,
    first_block: int = 1,
) -> np.ndarray:
    """eof of each example from its own trace (rows of an (n, L+1) deviation matrix)."""
    m = np.asarray(dev_matrix, dtype=np.float64)
    return np.array(
        [choose_eof(compute_gains(row, params, gain), allow_full_freeze, first_block) for row in m],
        dtype=int,
    )


def eof_by_gain(mean_dev, params, first_block: int = 1) -> dict[str, int]:
    """The eof every registered gain formula chooses from one (mean) deviation trace."""
    return {
        name: choose_eof(compute_gains(mean_dev, params, name), first_block=first_block)
        for name in GAINS
    }


def eof_stability(
    dev_matrix,
    params,
    gain: str,
    first_block: int = 1,
    resamples: int = 200,
    seed: int = 0,
) -> dict:
    """How stable the dataset eof is under resampling the analysed examples: the eof of the mean
    trace of each of ``resamples`` bootstrap resamples (rows drawn with replacement), the share
    of resamples that agree with the full data's eof, and the count of each eof chosen."""
    m = np.asarray(dev_matrix, dtype=np.float64)
    if m.ndim != 2 or len(m) < 2:
        raise InvalidParameterError("eof stability needs a deviation matrix of ≥ 2 examples")
    chosen = choose_eof(compute_gains(m.mean(0), params, gain), first_block=first_block)
    rng = np.random.default_rng(seed)
    eofs = [
        choose_eof(
            compute_gains(m[rng.integers(0, len(m), len(m))].mean(0), params, gain),
            first_block=first_block,
        )
        for _ in range(resamples)
    ]
    values, counts = np.unique(eofs, return_counts=True)
    return {
        "eof": chosen,
        "share": float(np.mean(np.asarray(eofs) == chosen)),
        "resamples": resamples,
        "seed": seed,
        "counts": {str(int(v)): int(c) for v, c in zip(values, counts)},
    }


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """At most ``max_trainable`` blocks, a ``fraction`` of L, or a ``flops_fraction`` of full FT.

    ``flops_fraction`` needs ``flops_of_eof`` at apply time: a function eof → analytic training
    FLOPs (e.g. from :func:`semalign_core.costs.step_flops`), and the full-FT reference.
    """

    max_trainable: int | None = None
    fraction: float | None = None
    flops_fraction: float | None = None

    def is_empty(self) -> bool:
        return self.max_trainable is None and self.fraction is None and self.flops_fraction is None


def apply_budget(
    eof: int,
    num_layers: int,
    budget: Budget | None,
    flops_of_eof: Callable[[int], float] | None = None,
    full_flops: float | None = None,
) -> int:
    """Raise eof until every budget holds; a budget that leaves no block trainable is an error."""
    eof = check_eof(eof, num_layers)
    if budget is None or budget.is_empty():
        return eof
    L = num_layers
    if budget.max_trainable is not None:
        if budget.max_trainable < 1:
            raise InvalidParameterError(
                f"max_trainable={budget.max_trainable} leaves no layer to train (need ≥ 1)"
            )
        eof = max(eof, L - int(budget.max_trainable))
    if budget.fraction is not None:
        allowed = int(math.floor(budget.fraction * L + 1e-9))
        if not 0 < budget.fraction <= 1 or allowed < 1:
            raise InvalidParameterError(
                f"budget fraction {budget.fraction} of {L} layers leaves no layer to train "
                f"(need ≥ {1 / L:.3g})"
            )
        eof = max(eof, L - allowed)
    if budget.flops_fraction is not None:
        if flops_of_eof is None or full_flops is None:
            raise InvalidParameterError("a FLOPs budget needs flops_of_eof and full_flops")
        target = budget.flops_fraction * full_flops
        if not 0 < budget.flops_fraction or flops_of_eof(L - 1) > target:
            raise InvalidParameterError(
                f"FLOPs budget {budget.flops_fraction} of full fine-tuning is below the cost of "
                f"training "
                f"one layer ({flops_of_eof(L - 1) / full_flops:.3f})"
            )
        while eof < L - 1 and flops_of_eof(eof) > target:
            eof += 1
    return eof


# --------------------------------------------------------------------------- padding strategies

PADDING_STRATEGIES = ("min", "bucket")


@dataclass(frozen=True)
class BatchPlan:
    indices: tuple[int, ...]
    eof: int


def plan_batches(
    eofs: Sequence[int], batch_size: int, strategy: str = "min", seed: int = 0
) -> list[BatchPlan]:
    """Group examples into batches with one eof each.

    ``min``: shuffle, chunk, batch eof = min of its examples' eof (safe: trains more).
    ``bucket``: sort by eof (ties shuffled), chunk within each eof value, so every example
    trains exactly from its own eof (the last batch of a bucket may be smaller).
    """
    if strategy not in PADDING_STRATEGIES:
        raise InvalidParameterError(
            f"padding strategy must be one of {', '.join(PADDING_STRATEGIES)}, got {strategy!r}"
        )
    if batch_size < 1:
        raise InvalidParameterError(f"batch_size must be ≥ 1, got {batch_size}")
    order = list(range(len(eofs)))
    random.Random(seed).shuffle(order)
    plans = []
    if strategy == "min":
        for s in range(0, len(order), batch_size):
            idx = tuple(order[s : s + batch_size])
            plans.append(BatchPlan(idx, int(min(eofs[i] for i in idx))))
        return plans
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(int(eofs[i]), []).append(i)
    for e in sorted(buckets):
        b = buckets[e]
        plans += [BatchPlan(tuple(b[s : s + batch_size]), e) for s in range(0, len(b), batch_size)]
    return plans


__all__ = [
    "BatchPlan",
    "Budget",
    "GAINS",
    "PADDING_STRATEGIES",
    "PowerLawFit",
    "apply_budget",
    "check_eof",
    "FIRST_BLOCK",
    "choose_eof",
    "compute_gains",
    "eof_by_gain",
    "eof_per_example",
    "eof_stability",
    "fit_power_law",
    "fit_zhang",
    "plan_batches",
    "register_gain",
]
