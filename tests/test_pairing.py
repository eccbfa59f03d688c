"""Depth pairing tables, interpolation, the critical-layer rule and attribution-based selection."""

import itertools
import random

import pytest

from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.semalign.pairing import (
    Pairing,
    critical_layer_rule,
    floor_grid,
    floor_pairing,
    grid_windows,
    interpolation_weights,
    select_one_per_target,
    uniform_pairing,
)

# Expected floor tables, target layer j (1-based, list position) → source layer.
FLOOR_40_32 = [
    1,
    2,
    3,
    5,
    6,
    7,
    8,
    10,
    11,
    12,
    13,
    15,
    16,
    17,
    18,
    20,
    21,
    22,
    23,
    25,
    26,
    27,
    28,
    30,
    31,
    32,
    33,
    35,
    36,
    37,
    38,
    40,
]
FLOOR_30_24 = [
    1,
    2,
    3,
    5,
    6,
    7,
    8,
    10,
    11,
    12,
    13,
    15,
    16,
    17,
    18,
    20,
    21,
    22,
    23,
    25,
    26,
    27,
    28,
    30,
]
FLOOR_7_5 = [1, 2, 4, 5, 7]  # ⌊1.4⌋, ⌊2.8⌋, ⌊4.2⌋, ⌊5.6⌋, ⌊7.0⌋
FLOOR_10_10 = list(range(1, 11))


@pytest.mark.parametrize(
    "n_source, n_target, expected, unpaired",
    [
        (40, 32, FLOOR_40_32, [4, 9, 14, 19, 24, 29, 34, 39]),
        (30, 24, FLOOR_30_24, [4, 9, 14, 19, 24, 29]),
        (7, 5, FLOOR_7_5, [3, 6]),
        (10, 10, FLOOR_10_10, []),
    ],
)
def test_floor_tables(n_source, n_target, expected, unpaired):
    assert floor_grid(n_source, n_target) == expected
    p = floor_pairing(n_source, n_target)
    assert p.target_to_source == {j: s for j, s in enumerate(expected, start=1)}
    assert p.unpaired_source_layers == unpaired
    assert p.is_monotone and p.strategy == "floor"
    table = p.as_table()
    assert len(table) == n_target
    assert table[0] == {"target_layer": 1, "source_layer": expected[0], "strategy": "floor"}


def test_uniform_tables():
    # round half up of j·L_S/L_T: 2.5 → 3, 7.5 → 8
    assert uniform_pairing(40, 32).source_layers[:8] == [1, 3, 4, 5, 6, 8, 9, 10]
    assert uniform_pairing(40, 32).source_layers[-1] == 40
    assert uniform_pairing(7, 5).source_layers == [1, 3, 4, 6, 7]  # 1.4, 2.8, 4.2, 5.6, 7
    assert uniform_pairing(10, 10).source_layers == FLOOR_10_10
    assert uniform_pairing(40, 32).is_monotone


def test_interpolation_weights():
    w = interpolation_weights(40, 32)
    assert len(w) == 32
    assert w[:5] == [(1, 2, 0.25), (2, 3, 0.5), (3, 4, 0.75), (5, 6, 0.0), (6, 7, 0.25)]
    assert w[-1] == (39, 40, 1.0)  # u = 40 → a clamped to L−1, λ = 1: the last source layer
    assert interpolation_weights(7, 5) == [
        (1, 2, 0.4),
        (2, 3, 0.8),
        (4, 5, 0.2),
        (5, 6, 0.6),
        (6, 7, 1.0),
    ]
    identity = interpolation_weights(10, 10)
    assert [(a + lam) for a, _, lam in identity] == [float(j) for j in range(1, 11)]
    # where λ is 0 or 1 the interpolation agrees with the floor grid
    for j, (a, b, lam) in enumerate(w, start=1):
        if lam == 0.0:
            assert a == FLOOR_40_32[j - 1]
        if lam == 1.0:
            assert b == FLOOR_40_32[j - 1]


def test_critical_layer_rule():
    p = critical_layer_rule([4, 9, 10], 40, 32)  # 10 is on the grid: no change
    expected = list(FLOOR_40_32)
    expected[3] = 4  # first j with grid ≥ 4 is j=4 (grid 5)
    expected[7] = 9  # first j with grid ≥ 9 is j=8 (grid 10)
    # 10 was on the grid at j=8, now taken by 9: still exactly one source per target
    assert p.source_layers == expected and p.is_monotone
    # two critical layers competing for one target layer: the first listed wins
    q = critical_layer_rule([5, 4], 30, 10)  # grid 3, 6, 9, ...; both go to j=2
    assert q.target_to_source[2] == 5 and any("4 dropped" in n for n in q.notes)
    with pytest.raises(InvalidParameterError):
        critical_layer_rule([41], 40, 32)


def test_select_one_per_target_argmax_in_windows():
    n_source, n_target = 7, 5
    assert [list(r) for r in grid_windows(n_source, n_target)] == [[1], [2], [3, 4], [5], [6, 7]]
    scores = [0.1, 0.2, 5.0, 0.3, 0.4, 9.0, 0.5]  # argmax of window {3,4} is 3, of {6,7} is 6
    p = select_one_per_target(scores, n_target)
    assert p.source_layers == [1, 2, 3, 5, 6]
    assert p.is_monotone and sorted(p.target_to_source) == [1, 2, 3, 4, 5]
    assert p.strategy == "attribution"


def brute_force(scores, n_target, window):
    """Best increasing choice in the windows: max total score, then min distance to the grid."""
    n_source = len(scores)
    grid, windows = floor_grid(n_source, n_target), grid_windows(n_source, n_target, window)
    best = None
    for combo in itertools.combinations(range(1, n_source + 1), n_target):
        if all(k in w for k, w in zip(combo, windows)):
            key = (sum(scores[k - 1] for k in combo), -sum(abs(k - g) for k, g in zip(combo, grid)))
            if best is None or key > best[0]:
                best = (key, list(combo))
    return best[1]


def test_select_one_per_target_widened_window_uses_dp():
    # 7→5, window=1: targets 3 ({2..5}) and 4 ({4,5,6}) both have layer 5 as their argmax, so a
    # greedy pick would pair layer 5 twice; the DP gives it to one and the other its best
    # feasible alternative (layer 3 for target 3).
    scores = [0.0, 0.0, 8.0, 0.0, 10.0, 0.0, 0.0]
    windows = grid_windows(7, 5, window=1)
    assert [list(w) for w in windows] == [[1, 2], [1, 2, 3], [2, 3, 4, 5], [4, 5, 6], [5, 6, 7]]
    p = select_one_per_target(scores, 5, window=1)
    assert p.source_layers == [1, 2, 3, 5, 7] == brute_force(scores, 5, 1)
    assert p.is_monotone and len(p.target_to_source) == 5


@pytest.mark.parametrize("seed", range(5))
def test_select_one_per_target_matches_brute_force(seed):
    rng = random.Random(seed)
    for n_source, n_target, window in [(9, 6, 1), (10, 7, 2), (8, 8, 1)]:
        scores = [round(rng.uniform(-1, 1), 1) for _ in range(n_source)]  # ties are likely
        p = select_one_per_target(scores, n_target, window=window)
        assert p.source_layers == brute_force(scores, n_target, window)


def test_select_one_per_target_ties_and_identity():
    # equal scores: ties go to the floor grid point
    assert select_one_per_target([1.0] * 40, 32).source_layers == FLOOR_40_32
    assert select_one_per_target([1.0] * 40, 32, window=2).source_layers == FLOOR_40_32
    assert select_one_per_target(list(range(10)), 10).source_layers == FLOOR_10_10
    # windows never leave 1..n_source and every target keeps a feasible choice
    p = select_one_per_target([float(-k) for k in range(40)], 32, window=5)
    assert p.is_monotone and len(set(p.source_layers)) == 32


@pytest.mark.parametrize("fn", [floor_grid, uniform_pairing, interpolation_weights, floor_pairing])
def test_target_deeper_or_nonpositive_is_an_error(fn):
    with pytest.raises(IncompatibleModelsError) as err:
        fn(24, 32)
    assert "32" in str(err.value) and "24" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IncompatibleModelsError):
        fn(0, 0)
    with pytest.raises(IncompatibleModelsError):
        fn(10, -1)


def test_select_errors_and_pairing_validation():
    with pytest.raises(IncompatibleModelsError):
        select_one_per_target([1.0, 2.0], 3)
    with pytest.raises(InvalidParameterError):
        select_one_per_target([1.0, float("nan"), 2.0], 2)
    with pytest.raises(InvalidParameterError):
        Pairing({1: 1, 3: 2}, "manual", 4, 2)  # target 2 missing
    with pytest.raises(InvalidParameterError):
        Pairing({1: 1, 2: 5}, "manual", 4, 2)  # source out of range
