"""Pairing a target deeper than its source (issue 19, item 4), and every pairing of a target no
deeper than its source unchanged by that option (record hashes depend on them)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from semalign_core.errors import IncompatibleModelsError
from semalign_core.semalign import pairing as P

# sha256 of every grid, window and selection below for 1 <= n_target <= n_source <= 40, taken
# from the code before many_to_one existed
UNCHANGED_SHA256 = "f3d517e0ca99c74359098d49711c3da76f6600b1a4b6cf4172767a8830c69be0"


def _snapshot() -> str:
    out = []
    rng = random.Random(0)
    for n_s in range(1, 41):
        for n_t in range(1, n_s + 1):
            scores = [rng.random() for _ in range(n_s)]
            sel = P.select_one_per_target(scores, n_t)
            sel2 = P.select_one_per_target(scores, n_t, window=2)
            crit = P.critical_layer_rule([n_s, max(1, n_s // 2), 1], n_s, n_t)
            out.append(
                [
                    n_s,
                    n_t,
                    P.floor_grid(n_s, n_t),
                    P.uniform_pairing(n_s, n_t).as_table(),
                    [list(w) for w in P.interpolation_weights(n_s, n_t)],
                    [[r.start, r.stop] for r in P.grid_windows(n_s, n_t, 1)],
                    sel.source_layers,
                    list(sel.notes),
                    sel2.source_layers,
                    crit.source_layers,
                    list(crit.notes),
                    P.floor_pairing(n_s, n_t).strategy,
                ]
            )
    return hashlib.sha256(json.dumps(out).encode()).hexdigest()


def test_pairings_of_a_shallower_target_are_unchanged():
    assert _snapshot() == UNCHANGED_SHA256
    # and a few by hand, with the flag on: it changes nothing when n_target <= n_source
    for flag in (False, True):
        assert P.floor_grid(5, 3, many_to_one=flag) == [1, 3, 5]
        assert P.uniform_pairing(5, 3, many_to_one=flag).source_layers == [2, 3, 5]
        assert P.interpolation_weights(4, 3, many_to_one=flag) == [
            (1, 2, 1 / 3),
            (2, 3, 2 / 3),
            (3, 4, 1.0),
        ]


def test_deeper_target_is_refused_without_the_option():
    with pytest.raises(IncompatibleModelsError, match="many_to_one"):
        P.floor_grid(2, 5)
    with pytest.raises(IncompatibleModelsError):
        P.Pairing({1: 1, 2: 1}, "manual", 1, 2)


def test_many_to_one_grids_by_hand():
    # floor: max(1, ⌊2j/5⌋) = 1,1,1,1,2; uniform: round-half-up(2j/5) clamped = 1,1,1,2,2
    assert P.floor_grid(2, 5, many_to_one=True) == [1, 1, 1, 1, 2]
    p = P.floor_pairing(2, 5, many_to_one=True)
    assert p.source_layers == [1, 1, 1, 1, 2] and p.many_to_one and not p.is_monotone
    assert P.uniform_pairing(2, 5, many_to_one=True).source_layers == [1, 1, 1, 2, 2]
    # interpolation: u = 0.4, 0.8, 1.2, 1.6, 2.0 → a = 1, λ = clip(u − 1, 0, 1)
    got = P.interpolation_weights(2, 5, many_to_one=True)
    assert [(a, b) for a, b, _ in got] == [(1, 2)] * 5
    assert [lam for _, _, lam in got] == pytest.approx([0.0, 0.0, 0.2, 0.6, 1.0])
    assert P.interpolation_weights(1, 3, many_to_one=True) == [(1, 1, 0.0)] * 3


def test_gemma_to_smollm2_depths():
    # Gemma-3-270M (18 blocks) → SmolLM2-135M (30): every source layer supervises 1-3 targets
    grid = P.floor_grid(18, 30, many_to_one=True)
    assert grid[:6] == [1, 1, 1, 2, 3, 3] and grid[-2:] == [17, 18]
    assert sorted(set(grid)) == list(range(1, 19))
    assert all(a <= b for a, b in zip(grid, grid[1:]))
    sel = P.select_one_per_target([float(k) for k in range(18)], 30, many_to_one=True)
    assert sel.source_layers == grid and sel.many_to_one and "deeper" in sel.notes[0]
