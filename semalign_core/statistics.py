"""Uncertainty on every number, and baselines that expose degenerate models.

Per-item scores of a model on a fixed set of evaluation items (0/1 correctness, or continuous, e.g.
per-item NLL) become a score with a 95 % interval (:func:`score_interval`), and two methods scored
on the same items become a paired comparison (:func:`paired_difference`, :func:`mcnemar`). Beside a
classification score: the majority-label rate of that exact subset (:func:`majority_rate`), the
distribution of predicted labels (:func:`label_distribution`) and a one-label flag
(:func:`one_label_flag`). Macro-F1 lives in ``semalign_core.evaluation.metrics.macro_f1``.

Scores are ``scores[item]`` for one model, or ``scores[seed, item]`` for several training seeds of
the same method evaluated on the SAME items in the same order. The quantity an interval is about is
the method's expected score over the population the items were drawn from (and over training
seeds, where there are several), not the score on these exact items.

Every resampling draws from a ``numpy.random.Generator`` seeded by the ``seed`` argument: the same
inputs and seed give the same numbers. numpy only (the foundation layer: nothing of the package but
``errors``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from semalign_core.errors import InvalidParameterError

DEFAULT_N_BOOT = 10_000
_CHUNK_CELLS = 1 << 22  # bootstrap indices drawn per block (32 MiB of int64), whatever n_boot is


@dataclass(frozen=True)
class ScoreInterval:
    """A mean score with its interval: ``mean`` over all seeds and items, ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int  # items
    n_seeds: int
    method: str
    level: float = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B on the same items (and seeds).

    ``p_value`` is the two-sided paired-bootstrap p-value, computed from the same replicates as the
    interval, so ``p_value < 1 - level`` and ``significant`` agree up to Monte Carlo resolution.
    ``mcnemar_p`` is the exact McNemar p-value, filled for 0/1 scores with one seed (the
    convention of lm-eval's paired-significance module), None otherwise.
    """

    difference: float
    low: float
    high: float
    p_value: float
    significant: bool  # the interval excludes zero
    n: int
    n_seeds: int
    method: str
    level: float = 0.95
    mcnemar_p: float | None = None


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of paired 0/1 scores: only the discordant items count."""

    only_a: int  # items A gets right and B wrong
    only_b: int  # items B gets right and A wrong
    n: int  # all items
    p_value: float  # two-sided exact binomial test of only_a ~ Bin(only_a + only_b, 1/2)


@dataclass(frozen=True)
class LabelDistribution:
    """How often each label occurs; ``counts`` and ``shares`` most frequent first."""

    counts: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)
    n: int = 0

    @property
    def top_label(self) -> Hashable:
        return next(iter(self.counts))

    @property
    def top_share(self) -> float:
        return next(iter(self.shares.values()))


# ---------------------------------------------------------------------------------------- checks


def _scores(values, name: str) -> np.ndarray:
    """``values`` as a float matrix ``[seed, item]`` (a 1-D input is one seed); one-line errors."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name}: scores must be numbers (0/1 or continuous)") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InvalidParameterError(
            f"{name}: scores must be 1-D [item] or 2-D [seed, item], got shape {array.shape}"
        )
    if array.size == 0:
        raise InvalidParameterError(
            f"{name}: no scores (shape {array.shape}); need at least 1 item"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        seed, item = np.argwhere(bad)[0]
        raise InvalidParameterError(
            f"{name}: {int(bad.sum())} score(s) are NaN or infinite (first at seed {seed}, "
            f"item {item}); drop or score those items for every method"
        )
    return array


def _check_options(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise InvalidParameterError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise InvalidParameterError(f"level must lie strictly between 0 and 1, got {level!r}")


def _align(a: np.ndarray, b: np.ndarray, ids_a, ids_b) -> np.ndarray:
    """``b`` with its items in the order of ``a``'s ids; error unless both cover the same items."""
    if (ids_a is None) != (ids_b is None):
        raise InvalidParameterError(
            "give item ids for both a and b (ids_a and ids_b) or for neither"
        )
    if ids_a is None:
        if a.shape[1] != b.shape[1]:
            raise InvalidParameterError(
                f"a and b have different numbers of items ({a.shape[1]} vs {b.shape[1]}); "
                "a paired comparison needs the same items"
            )
        return b
    ids_a, ids_b = list(ids_a), list(ids_b)
    for ids, scores, name in ((ids_a, a, "a"), (ids_b, b, "b")):
        if len(ids) != scores.shape[1]:
            raise InvalidParameterError(
                f"ids_{name} has {len(ids)} ids for {scores.shape[1]} items of {name}"
            )
        if len(set(ids)) != len(ids):
            raise InvalidParameterError(f"ids_{name} repeats an item id")
    if set(ids_a) != set(ids_b):
        only_a, only_b = set(ids_a) - set(ids_b), set(ids_b) - set(ids_a)
        example = sorted(map(repr, only_a or only_b))[0]
        raise InvalidParameterError(
            f"paired test on different item sets: {len(only_a)} item(s) only in a, "
            f"{len(only_b)} only in b (e.g. {example}); score both methods on the same items"
        )
    position = {item: j for j, item in enumerate(ids_b)}
    return b[:, [position[item] for item in ids_a]]


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The difference matrix ``a - b``; one seed of ``b`` (a model trained once) broadcasts."""
    if a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0]):
        return a - b
    raise InvalidParameterError(
        f"a has {a.shape[0]} seeds and b {b.shape[0]}: pair the same training seeds "
        "(or give one of them a single row, e.g. the untrained target)"
    )


# ------------------------------------------------------------------------------------- bootstrap


def _item_bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the 1-D ``values``; vectorised in blocks
    whose size depends only on ``len(values)``, so the output depends only on the seed."""
    n = values.shape[0]
    rows = max(1, _CHUNK_CELLS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[index].mean(axis=1)
    return means


def _mean_squares(scores: np.ndarray) -> tuple[float, float, float]:
    """For ``scores[seed, item]`` with at least 2 seeds and 2 items: the variance of the seed
    means, the variance of the item means (over seeds), and the residual mean square of the
    two-way table (the seed x item noise)."""
    n_seeds, n_items = scores.shape
    seed_means, item_means = scores.mean(axis=1), scores.mean(axis=0)
    residual = scores - seed_means[:, None] - item_means[None, :] + scores.mean()
    ms_residual = float((residual**2).sum()) / ((n_seeds - 1) * (n_items - 1))
    return float(seed_means.var(ddof=1)), float(item_means.var(ddof=1)), ms_residual


def between_seed_variance(scores) -> float:
    """Estimated variance of a training seed's effect on the mean score, σ²_seed (a diagnostic).

    Model: ``y[s, i] = mu + seed[s] + item[i] + e[s, i]``. The seed means vary by
    ``σ²_seed + σ²_e / n_items`` (the item effects are shared by every seed and cancel); the
    residual mean square of the two-way table estimates ``σ²_e``. Their difference, clipped at 0,
    is the usual ANOVA (method-of-moments) estimate. 0 with one seed.
    """
    scores = _scores(scores, "scores")
    n_seeds, n_items = scores.shape
    if n_seeds < 2:
        return 0.0
    if n_items < 2:
        return float(scores.mean(axis=1).var(ddof=1))
    var_seed_means, _, ms_residual = _mean_squares(scores)
    return max(0.0, var_seed_means - ms_residual / n_items)


def _replicates(scores: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, str]:
    """Bootstrap replicates of the grand mean of ``scores[seed, item]``; see score_interval."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = scores.shape
    item_means = scores.mean(axis=0)
    if n_seeds == 1:
        return _item_bootstrap(item_means, n_boot, rng), "percentile bootstrap over items"
    if n_items == 1:
        shrink = 0.0
        var_seed_means = float(scores[:, 0].var(ddof=1))
    else:
        var_seed_means, var_item_means, ms_residual = _mean_squares(scores)
        item_part = max(0.0, var_item_means - ms_residual / n_seeds)
        shrink = math.sqrt(item_part / var_item_means) if var_item_means > 0 else 0.0
    centre = item_means.mean()
    reps = _item_bootstrap(centre + shrink * (item_means - centre), n_boot, rng)
    reps += math.sqrt(var_seed_means / n_seeds) * rng.standard_t(n_seeds - 1, size=n_boot)
    return reps, f"percentile bootstrap over items + t({n_seeds - 1}) on seed means"


def _bounds(reps: np.ndarray, level: float) -> tuple[float, float]:
    alpha = 1.0 - level
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------- public API


def score_interval(
    scores, seed: int = 0, n_boot: int = DEFAULT_N_BOOT, level: float = 0.95
) -> ScoreInterval:
    """Mean score with a ``level`` interval, for ``scores[item]`` or ``scores[seed, item]``.

    One seed: the percentile bootstrap over items (resample items with replacement, take the
    mean, report the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the replicates).

    Several seeds on the same items: with ``y[s, i] = mu + seed[s] + item[i] + e[s, i]`` the
    grand mean's error has variance ``σ²_item / I + (σ²_seed + σ²_e / I) / S``: an item part
    (which items were drawn, shared by every seed) and a seed part (which training seeds were
    drawn, plus each seed's own per-item noise). With 3 seeds there is nothing to bootstrap seeds
    from (3 seeds give 10 distinct resamples, and a bootstrap's variance is (S-1)/S = 2/3 of the
    true one), so each part is estimated the way its data allow:

    - seeds: the variance of the S seed means estimates ``σ²_seed + σ²_e / I`` without bias, on
      S - 1 degrees of freedom; each replicate adds ``t * sqrt(var(seed means) / S)`` with ``t``
      drawn from Student's t on S - 1 degrees of freedom, the textbook t interval for a mean of S
      values (t_{2, 0.975} = 4.30: honest, and wide, with 3 seeds);
    - items: each replicate resamples items (the same items for every seed) and averages the
      seed-averaged item scores, their spread first shrunk about the mean so that its variance is
      the item part alone, ``σ²_item`` (the variance of the item means minus the residual mean
      square / S, clipped at 0): the noise ``e`` is already in the seed part and is not counted
      twice. This correction is estimated on many degrees of freedom and is small when items
      dominate.

    The interval is the percentile interval of the sum. With no item variation it is the t
    interval on the seed means; with items dominating it approaches the item bootstrap plus the
    seed term. Rejected alternative: an ANOVA estimate of σ²_seed alone for the seed term
    (:func:`between_seed_variance`) gives narrower intervals when seeds barely matter, but covered
    only about 90 % in simulation when σ²_seed is comparable to σ²_e / I, because that estimate
    is a difference of two mean squares and is clipped at 0 on 2 degrees of freedom.
    """
    _check_options(n_boot, level)
    scores = _scores(scores, "scores")
    reps, method = _replicates(scores, n_boot, seed)
    low, high = _bounds(reps, level)
    return ScoreInterval(
        mean=float(scores.mean()),
        low=low,
        high=high,
        n=scores.shape[1],
        n_seeds=scores.shape[0],
        method=method,
        level=level,
    )


def paired_difference(
    a,
    b,
    seed: int = 0,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = 0.95,
    ids_a: Sequence[Hashable] | None = None,
    ids_b: Sequence[Hashable] | None = None,
) -> PairedDifference:
    """Method A minus method B, scored on the same items (and the same training seeds).

    ``a`` and ``b`` are ``[item]`` or ``[seed, item]``; a single-seed ``b`` (e.g. the untrained
    target) is compared with every seed of ``a``, and vice versa. With ``ids_a``/``ids_b`` the items
    are matched by id (``b`` reordered to ``a``'s order); different item sets are an error.

    The interval is :func:`score_interval`'s on the per-item differences ``a - b`` (a paired
    bootstrap over items; with several seeds, the between-seed term on the per-seed differences).
    The p-value is two-sided from the same replicates, ``2 * min(P*(d <= 0), P*(d >= 0))`` with
    the (count + 1) / (n_boot + 1) Monte Carlo correction, capped at 1. Identical scores give
    difference 0, interval [0, 0], p = 1 and never ``significant``.
    """
    _check_options(n_boot, level)
    a, b = _scores(a, "a"), _scores(b, "b")
    b = _align(a, b, ids_a, ids_b)
    diff = _paired(a, b)
    reps, method = _replicates(diff, n_boot, seed)
    low, high = _bounds(reps, level)
    tail = min(int((reps <= 0).sum()), int((reps >= 0).sum()))
    p_value = min(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    binary = diff.shape[0] == 1 and _is_binary(a) and _is_binary(b)
    return PairedDifference(
        difference=float(diff.mean()),
        low=low,
        high=high,
        p_value=p_value,
        significant=bool(low > 0.0 or high < 0.0),
        n=diff.shape[1],
        n_seeds=diff.shape[0],
        method="paired " + method,
        level=level,
        mcnemar_p=_mcnemar(a[0], b[0]).p_value if binary else None,
    )


def _is_binary(scores: np.ndarray) -> bool:
    return bool(np.isin(scores, (0.0, 1.0)).all())


def _binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` trials at probability 1/2: twice the
    smaller tail, capped at 1 (for p = 1/2 the same as summing every outcome no likelier than k)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_pmf = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) - n * math.log(2.0)
        for j in range(k + 1)
    ]
    top = max(log_pmf)
    tail = math.exp(top) * sum(math.exp(x - top) for x in log_pmf)
    return min(1.0, 2.0 * tail)


def _mcnemar(a: np.ndarray, b: np.ndarray) -> McNemar:
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    return McNemar(only_a, only_b, int(a.shape[0]), _binomial_two_sided(only_a, only_a + only_b))


def mcnemar(
    a, b, ids_a: Sequence[Hashable] | None = None, ids_b: Sequence[Hashable] | None = None
) -> McNemar:
    """Exact McNemar test for 0/1 scores of two methods on the same items (one seed each).

    Under no difference, each discordant item (one method right, the other wrong) is equally likely
    to go either way, so ``only_a ~ Binomial(only_a + only_b, 1/2)``; the p-value is the exact
    two-sided binomial one (``scipy.stats.binomtest(only_a, only_a + only_b)``). No discordant
    items: p = 1.
    """
    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise InvalidParameterError(
            "mcnemar takes one seed per method; use paired_difference for [seed, item] scores"
        )
    if not (_is_binary(a) and _is_binary(b)):
        raise InvalidParameterError("mcnemar needs 0/1 scores; use paired_difference otherwise")
    b = _align(a, b, ids_a, ids_b)
    return _mcnemar(a[0], b[0])


# ------------------------------------------------------------------------- degenerate baselines


def _labels(values: Iterable[Hashable], name: str) -> list:
    values = list(values.tolist() if isinstance(values, np.ndarray) else values)
    if not values:
        raise InvalidParameterError(f"{name}: no labels; need at least one item")
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise InvalidParameterError(f"{name}: a label is NaN; map missing answers to a label first")
    return values


def label_distribution(
    predictions: Iterable[Hashable], labels: Iterable[Hashable] | None = None
) -> LabelDistribution:
    """Counts and shares of each label (e.g. MMLU answer letters), most frequent first, ties in
    label order (``str``). ``labels`` lists labels to show even at zero count (e.g. ``"ABCD"``);
    a prediction outside them (an unparsed answer) still counts under its own value."""
    values = _labels(predictions, "predictions")
    counts = Counter(values)
    for label in labels or ():
        counts.setdefault(label, 0)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    n = len(values)
    return LabelDistribution(
        counts=dict(ordered), shares={label: c / n for label, c in ordered}, n=n
    )


def majority_rate(labels: Iterable[Hashable]) -> float:
    """Share of the most frequent gold label among exactly these items: the accuracy of always
    answering that label, the floor a classifier must beat on this subset (not 1/#classes)."""
    return label_distribution(_labels(labels, "labels")).top_share


def one_label_flag(predictions: Iterable[Hashable], threshold: float = 0.9) -> bool:
    """True when one label receives at least ``threshold`` of the predictions (a model that
    answers (almost) always the same, whatever its accuracy)."""
    if not 0.0 < threshold <= 1.0:
        raise InvalidParameterError(f"threshold must lie in (0, 1], got {threshold!r}")
    return label_distribution(predictions).top_share >= threshold
