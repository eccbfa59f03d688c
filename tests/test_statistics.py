"""Intervals, paired tests and degenerate-model baselines (semalign_core.statistics).

Calibration is measured on synthetic data whose truth is planted: the population mean is known
by construction, and "no difference" means both methods are drawn from the same per-item
distribution. References are computed here by hand or with scipy, never with the module's helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from semalign_core.errors import InvalidParameterError
from semalign_core.statistics import (
    between_seed_variance,
    label_distribution,
    majority_rate,
    mcnemar,
    one_label_flag,
    paired_difference,
    score_interval,
)

N_BOOT = 500  # per simulated dataset; the calibration loops run hundreds of datasets


def rate_within(hits: int, trials: int, low: float, high: float) -> float:
    rate = hits / trials
    assert low <= rate <= high, f"rate {rate:.3f} outside [{low}, {high}] over {trials} trials"
    return rate


# ---------------------------------------------------------------------------- score intervals


def test_one_seed_interval_covers_the_population_mean():
    """Items drawn from a population of mean 0.4 (0/1 scores) or 2.0 (continuous, skewed)."""
    rng = np.random.default_rng(11)
    sims = 300
    hits_binary = hits_continuous = 0
    for k in range(sims):
        binary = rng.binomial(1, rng.beta(2, 3, size=200))  # item difficulty, mean 2/5
        nll = rng.gamma(2.0, 1.0, size=150)  # per-item NLL-like, mean 2
        r = score_interval(binary, seed=k, n_boot=N_BOOT)
        hits_binary += r.low <= 0.4 <= r.high
        r = score_interval(nll, seed=k, n_boot=N_BOOT)
        hits_continuous += r.low <= 2.0 <= r.high
    rate_within(hits_binary, sims, 0.88, 0.99)
    rate_within(hits_continuous, sims, 0.88, 0.99)


def test_seeds_by_items_interval_covers_with_planted_seed_variance():
    """y[s, i] = mu + seed[s] + item[i] + noise: 3 seeds, 200 shared items. The seed effect
    (sd 0.15) dwarfs the item standard error (~0.05), so an items-only interval must under-cover
    while the hierarchical one covers."""
    rng = np.random.default_rng(12)
    sims, mu = 300, 1.0
    hits = naive_hits = 0
    for k in range(sims):
        scores = (
            mu
            + rng.normal(0, 0.15, size=(3, 1))
            + rng.normal(0, 0.5, size=(1, 200))
            + rng.normal(0, 0.5, size=(3, 200))
        )
        r = score_interval(scores, seed=k, n_boot=N_BOOT)
        assert r.n_seeds == 3 and r.n == 200
        hits += r.low <= mu <= r.high
        naive = score_interval(scores.mean(axis=0), seed=k, n_boot=N_BOOT)  # seeds ignored
        naive_hits += naive.low <= mu <= naive.high
    rate_within(hits, sims, 0.88, 0.99)
    rate_within(naive_hits, sims, 0.0, 0.75)


def test_seeds_by_items_binary_scores_cover():
    """0/1 scores, item difficulty shared by the seeds, a small planted seed shift."""
    rng = np.random.default_rng(13)
    sims = 300
    hits = 0
    for k in range(sims):
        p = rng.beta(2, 3, size=(1, 200)) + rng.normal(0, 0.03, size=(3, 1))
        r = score_interval(rng.binomial(1, np.clip(p, 0, 1)), seed=k, n_boot=N_BOOT)
        hits += r.low <= 0.4 <= r.high  # clipping moves the mean by < 1e-3
    rate_within(hits, sims, 0.88, 0.99)


def test_one_seed_interval_matches_the_normal_approximation():
    x = np.random.default_rng(3).normal(5.0, 2.0, size=400)
    r = score_interval(x, seed=0, n_boot=20_000)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert r.mean == pytest.approx(x.mean())
    assert r.low == pytest.approx(x.mean() - half, abs=0.05 * half)
    assert r.high == pytest.approx(x.mean() + half, abs=0.05 * half)
    assert (r.n, r.n_seeds, r.level) == (400, 1, 0.95)


def test_without_item_variation_the_interval_is_the_t_interval_on_seed_means():
    seed_means = np.array([0.50, 0.56, 0.47])
    scores = np.repeat(seed_means[:, None], 50, axis=1)  # every item scores its seed's mean
    r = score_interval(scores, seed=0, n_boot=40_000)
    half = stats.t.ppf(0.975, df=2) * seed_means.std(ddof=1) / math.sqrt(3)
    assert r.mean == pytest.approx(seed_means.mean())
    assert r.low == pytest.approx(seed_means.mean() - half, rel=0.06)
    assert r.high == pytest.approx(seed_means.mean() + half, rel=0.06)


def test_between_seed_variance_recovers_an_exact_planted_structure():
    seed_effect = np.array([-0.1, 0.0, 0.25])
    item_effect = np.random.default_rng(4).normal(size=30)
    scores = 2.0 + seed_effect[:, None] + item_effect[None, :]  # no noise: the ANOVA is exact
    assert between_seed_variance(scores) == pytest.approx(seed_effect.var(ddof=1))
    assert between_seed_variance(scores[:1]) == 0.0
    # pure noise and no seed effect: the estimate is clipped at or near zero, never negative
    noise = np.random.default_rng(5).normal(size=(3, 500))
    assert 0.0 <= between_seed_variance(noise) < 0.01


def test_same_seed_same_numbers_and_another_seed_other_numbers():
    x = np.random.default_rng(6).binomial(1, 0.6, size=(3, 80))
    assert score_interval(x, seed=7, n_boot=1000) == score_interval(x, seed=7, n_boot=1000)
    assert score_interval(x, seed=7, n_boot=1000) != score_interval(x, seed=8, n_boot=1000)
    y = np.random.default_rng(7).binomial(1, 0.5, size=(3, 80))
    assert paired_difference(x, y, seed=1, n_boot=1000) == paired_difference(
        x, y, seed=1, n_boot=1000
    )


def test_large_item_sets_are_bootstrapped_in_blocks():
    x = np.random.default_rng(8).binomial(1, 0.3, size=5000)
    r = score_interval(x, seed=0, n_boot=2000)  # 2000 x 5000 indices: three blocks
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert r.high - r.low == pytest.approx(2 * half, rel=0.1)


# ---------------------------------------------------------------------------- paired tests


def test_no_true_difference_rejects_about_five_percent():
    """Both methods draw each item's 0/1 score from the same item-specific probability."""
    rng = np.random.default_rng(21)
    sims = 400
    rejected = rejected_mcnemar = p_small = 0
    for k in range(sims):
        p = rng.beta(2, 2, size=200)
        r = paired_difference(rng.binomial(1, p), rng.binomial(1, p), seed=k, n_boot=N_BOOT)
        rejected += r.significant
        rejected_mcnemar += r.mcnemar_p < 0.05
        p_small += r.p_value < 0.05
        assert (r.p_value < 0.05) == r.significant or abs(r.p_value - 0.05) < 0.02
    rate_within(rejected, sims, 0.02, 0.09)
    rate_within(p_small, sims, 0.02, 0.09)
    rate_within(rejected_mcnemar, sims, 0.005, 0.09)  # exact test: at or under its level


def test_no_true_difference_with_seeds_rejects_about_five_percent():
    """Continuous scores, 3 seeds each, shared item effects and independent seed effects."""
    rng = np.random.default_rng(22)
    sims = 400
    rejected = 0
    for k in range(sims):
        item = rng.normal(0, 0.5, size=(1, 150))

        a, b = (
            1.0 + item + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.5, (3, 150))
            for _ in range(2)
        )
        rejected += paired_difference(a, b, seed=k, n_boot=N_BOOT).significant
    rate_within(rejected, sims, 0.02, 0.09)


def test_a_planted_fifteen_point_gain_is_found():
    rng = np.random.default_rng(23)
    sims = 100
    found = 0
    for k in range(sims):
        p = 0.1 + 0.65 * rng.beta(2, 2, size=200)  # B's per-item accuracy in [0.1, 0.75]
        a, b = rng.binomial(1, p + 0.15), rng.binomial(1, p)  # A: +15 points on every item
        r = paired_difference(a, b, seed=k, n_boot=N_BOOT)
        found += r.significant and r.difference > 0
    rate_within(found, sims, 0.8, 1.0)


@pytest.mark.parametrize("shape", [(200,), (3, 200)])
def test_identical_predictions_are_never_significant(shape):
    rng = np.random.default_rng(24)
    for k in range(20):
        a = rng.binomial(1, 0.5, size=shape)
        r = paired_difference(a, a.copy(), seed=k, n_boot=N_BOOT)
        assert (r.difference, r.low, r.high, r.p_value, r.significant) == (0, 0, 0, 1, False)
        if len(shape) == 1:
            assert r.mcnemar_p == 1.0


def test_one_seed_baseline_is_compared_with_every_seed():
    rng = np.random.default_rng(25)
    target = rng.binomial(1, 0.3, size=120)
    trained = rng.binomial(1, 0.6, size=(3, 120))
    r = paired_difference(trained, target, seed=0, n_boot=1000)
    assert r.n_seeds == 3 and r.mcnemar_p is None
    assert r.difference == pytest.approx(trained.mean() - target.mean())
    back = paired_difference(target, trained, seed=0, n_boot=1000)
    assert back.difference == pytest.approx(-r.difference)


def test_items_are_matched_by_id():
    a, b = np.array([1, 1, 0, 1]), np.array([0, 1, 1, 0])
    ids = ["q1", "q2", "q3", "q4"]
    order = [3, 0, 2, 1]
    shuffled = paired_difference(a, b[order], ids_a=ids, ids_b=[ids[j] for j in order], n_boot=200)
    assert shuffled == paired_difference(a, b, ids_a=ids, ids_b=ids, n_boot=200)


# ---------------------------------------------------------------------------- McNemar


def test_mcnemar_matches_a_hand_computed_exact_binomial():
    # 10 items: A alone right on 1, B alone right on 7, both right on 2 -> n = 8 discordant.
    a = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    b = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b, r.n) == (1, 7, 10)
    # P(X <= 1) for X ~ Bin(8, 1/2) is (1 + 8) / 256; two-sided doubles it.
    assert r.p_value == pytest.approx(18 / 256, abs=1e-12)
    assert r.p_value == pytest.approx(stats.binomtest(1, 8).pvalue, abs=1e-12)
    assert mcnemar(b, a).p_value == pytest.approx(r.p_value, abs=1e-12)


@pytest.mark.parametrize("k, n", [(0, 1), (3, 6), (40, 100), (480, 1000), (0, 0)])
def test_mcnemar_agrees_with_scipy_binomtest(k, n):
    a = [1] * k + [0] * (n - k) + [1, 0]  # plus one concordant pair of each kind
    b = [0] * k + [1] * (n - k) + [1, 0]
    expected = stats.binomtest(k, n).pvalue if n else 1.0
    assert mcnemar(a, b).p_value == pytest.approx(expected, rel=1e-9, abs=1e-15)


# ---------------------------------------------------------------------------- degenerate models


def test_constant_predictor_is_flagged_and_balanced_one_is_not():
    assert one_label_flag(["B"] * 100)
    assert one_label_flag(["A"] * 9 + ["C"])  # 90 % is at the threshold
    assert not one_label_flag(["A"] * 8 + ["C", "D"])
    assert not one_label_flag(list("ABCD") * 25)
    assert one_label_flag(list("ABCD") * 25 + ["A"] * 100, threshold=0.6)


def test_majority_rate_of_a_known_subset():
    assert majority_rate([0, 0, 1, 2]) == 0.5
    assert majority_rate(np.array([1, 1, 1, 0, 0])) == pytest.approx(0.6)
    assert majority_rate(["pos"]) == 1.0


def test_label_distribution_counts_shares_and_zero_count_letters():
    d = label_distribution(["B", "A", "B", "C", "B", None], labels="ABCD")
    assert d.n == 6
    assert d.counts == {"B": 3, "A": 1, "C": 1, None: 1, "D": 0}
    assert list(d.counts) == ["B", "A", "C", None, "D"]
    assert d.shares["B"] == 0.5 and d.shares["D"] == 0.0
    assert (d.top_label, d.top_share) == ("B", 0.5)


# ---------------------------------------------------------------------------- errors


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: score_interval([]), "no scores"),
        (lambda: score_interval(np.zeros((3, 0))), "no scores"),
        (lambda: score_interval([0.1, float("nan"), 0.3]), "NaN"),
        (lambda: score_interval([0.1, float("inf")]), "NaN or infinite"),
        (lambda: score_interval(["a", "b"]), "must be numbers"),
        (lambda: score_interval(np.zeros((2, 2, 2))), "1-D [item] or 2-D"),
        (lambda: score_interval([1, 0], n_boot=10), "n_boot"),
        (lambda: score_interval([1, 0], level=95), "level"),
        (lambda: paired_difference([1, 0, 1], [1, 0]), "different numbers of items"),
        (lambda: paired_difference([1, 0], [1, float("nan")]), "b: 1 score(s) are NaN"),
        (lambda: paired_difference(np.ones((3, 4)), np.ones((2, 4))), "same training seeds"),
        (
            lambda: paired_difference([1, 0], [1, 0], ids_a=["x", "y"], ids_b=["x", "z"]),
            "different item sets",
        ),
        (lambda: paired_difference([1, 0], [1, 0], ids_a=["x", "y"]), "for both a and b"),
        (
            lambda: paired_difference([1, 0], [1, 0], ids_a=["x", "x"], ids_b=["x", "y"]),
            "repeats",
        ),
        (
            lambda: paired_difference([1, 0], [1, 0], ids_a=["x"], ids_b=["x", "y"]),
            "1 ids for 2 items",
        ),
        (lambda: mcnemar([1, 0, 1], [1, 0]), "different numbers of items"),
        (lambda: mcnemar([1, 0.5], [1, 0]), "0/1 scores"),
        (lambda: mcnemar(np.ones((3, 2)), np.ones((3, 2))), "one seed per method"),
        (lambda: mcnemar([1, 0], [1, 0], ids_a=["x", "y"], ids_b=["y", "w"]), "item sets"),
        (lambda: majority_rate([]), "no labels"),
        (lambda: label_distribution(["A", float("nan")]), "NaN"),
        (lambda: one_label_flag(["A"], threshold=0), "threshold"),
    ],
)
def test_bad_input_is_one_clear_line(call, fragment):
    with pytest.raises(InvalidParameterError) as excinfo:
        call()
    assert fragment in one_line(excinfo)
