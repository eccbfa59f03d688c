"""Depth pairing: which source (teacher) layer supervises each target (student) layer (Method 3-4).

Reading of the spec's formula. The spec writes ``ℓ_T(k) = max(1, ⌊(L_T/L_S)·k⌋)`` "for target layer
k = 1..L_S" and lists the 40→32 result as source layers 1,2,3,5,6,7,8,10,…,38,40 (4,9,…,39 never
paired). Those subscripts are the paper's T = *teacher* (our source) and S = *student* (our
target): for student layer k, ⌊(40/32)·k⌋ gives exactly 1,2,3,5,…,38,40. Read the other way (k a
source layer mapped to a target layer, then one source per target, first or last of each group)
neither choice reproduces the list, so this module uses

    source(j) = max(1, ⌊(n_source / n_target) · j⌋)    for target layer j = 1..n_target.

All layers are 1-based (layer 1 = the first decoder block). The same reading makes the spec's
interpolation (``u = L_T·k/L_S``, interpolating teacher states a and a+1) and its critical-layer
rule consistent; see each function.

A target deeper than the source (another family, issue 19) is refused unless a grid function is
called with ``many_to_one=True``: the same formulas then give a non-decreasing grid in which
consecutive target layers share a source layer (floor, uniform) or get distinct mixtures of two
neighbouring source layers (interpolation). Pairings of a target no deeper than its source are
the same with or without the flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from semalign_core.errors import IncompatibleModelsError, InvalidParameterError


def _check_sizes(n_source: int, n_target: int, many_to_one: bool = False) -> None:
    if (
        not (isinstance(n_source, int) and isinstance(n_target, int))
        or n_source <= 0
        or n_target <= 0
    ):
        raise IncompatibleModelsError(
            f"layer counts must be positive integers, got source {n_source}, target {n_target}"
        )
    if n_target > n_source and not many_to_one:
        raise IncompatibleModelsError(
            f"target is deeper than source ({n_target} > {n_source} layers): "
            "SemAlign pairs one source layer per target layer (many_to_one=True shares them)"
        )


@dataclass(frozen=True)
class Pairing:
    """One source layer per target layer (1-based). ``notes`` records choices made on the way;
    ``many_to_one`` allows a target deeper than the source (source layers then repeat)."""

    target_to_source: dict[int, int]
    strategy: str
    n_source: int
    n_target: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    many_to_one: bool = False

    def __post_init__(self) -> None:
        _check_sizes(self.n_source, self.n_target, self.many_to_one)
        if sorted(self.target_to_source) != list(range(1, self.n_target + 1)):
            raise InvalidParameterError(
                f"a pairing needs exactly one source layer for each target layer 1..{self.n_target}"
            )
        bad = [s for s in self.target_to_source.values() if not 1 <= s <= self.n_source]
        if bad:
            raise InvalidParameterError(f"source layers {bad} are outside 1..{self.n_source}")

    @property
    def source_layers(self) -> list[int]:
        """Paired source layers in target order."""
        return [self.target_to_source[j] for j in range(1, self.n_target + 1)]

    @property
    def unpaired_source_layers(self) -> list[int]:
        used = set(self.target_to_source.values())
        return [k for k in range(1, self.n_source + 1) if k not in used]

    @property
    def is_monotone(self) -> bool:
        """Strictly increasing source layer with target depth."""
        s = self.source_layers
        return all(a < b for a, b in zip(s, s[1:]))

    def as_table(self) -> list[dict]:
        return [
            {"target_layer": j, "source_layer": self.target_to_source[j], "strategy": self.strategy}
            for j in range(1, self.n_target + 1)
        ]


# --------------------------------------------------------------------------- grids


def floor_grid(n_source: int, n_target: int, *, many_to_one: bool = False) -> list[int]:
    """Source layer for each target layer j = 1..n_target: ``max(1, ⌊(n_source/n_target)·j⌋)``.

    Integer arithmetic (``n_source*j // n_target``), so no float rounding at exact multiples.
    Strictly increasing because n_source >= n_target, and the last target layer always gets the
    last source layer. A deeper target (``many_to_one``) gets a non-decreasing grid that uses
    every source layer, each for one or more consecutive target layers.
    """
    _check_sizes(n_source, n_target, many_to_one)
    return [max(1, (n_source * j) // n_target) for j in range(1, n_target + 1)]


def floor_pairing(n_source: int, n_target: int, *, many_to_one: bool = False) -> Pairing:
    grid = floor_grid(n_source, n_target, many_to_one=many_to_one)
    t2s = dict(enumerate(grid, start=1))
    return Pairing(t2s, "floor", n_source, n_target, many_to_one=many_to_one)


def uniform_pairing(n_source: int, n_target: int, *, many_to_one: bool = False) -> Pairing:
    """Baseline: source = round(j·n_source/n_target), rounding halves up (not Python's banker's
    rounding, which would make the grid depend on parity), clamped to 1..n_source."""
    _check_sizes(n_source, n_target, many_to_one)
    t2s = {
        j: min(n_source, max(1, (2 * n_source * j + n_target) // (2 * n_target)))
        for j in range(1, n_target + 1)
    }
    return Pairing(t2s, "uniform", n_source, n_target, many_to_one=many_to_one)


def interpolation_weights(
    n_source: int, n_target: int, *, many_to_one: bool = False
) -> list[tuple[int, int, float]]:
    """Spec's optional interpolation: per target layer j, ``(a, b, λ)`` over *source* layers.

    ``u = n_source·j/n_target``, ``a = clamp(⌊u⌋, 1, n_source−1)``, ``b = a+1``,
    ``λ = clip(u−a, 0, 1)``; the supervision is ``(1−λ)·h_src^(a) + λ·h_src^(b)``. With one source
    layer (n_source = 1) the pair degenerates to (1, 1, 0.0). A deeper target (``many_to_one``)
    takes the same formula, u now advancing by less than one source layer per target layer, so
    consecutive target layers get distinct mixtures of the same two source layers.
    """
    _check_sizes(n_source, n_target, many_to_one)
    if n_source == 1:
        return [(1, 1, 0.0)] * n_target
    out = []
    for j in range(1, n_target + 1):
        u_times_t = n_source * j  # u = u_times_t / n_target, kept exact in integers
        a = min(max(u_times_t // n_target, 1), n_source - 1)
        lam = min(max((u_times_t - a * n_target) / n_target, 0.0), 1.0)
        out.append((a, a + 1, lam))
    return out


def critical_layer_rule(
    critical_source_layers: Sequence[int], n_source: int, n_target: int
) -> Pairing:
    """Floor grid, with each critical source layer that is off the grid moved onto it.

    Spec: "a critical source layer off this grid goes to the first k whose ℓ_T(k) ≥ it (else
    k = L_S)". Read with k a target layer: critical source layer c replaces the grid's source at
    the first target layer j with ``grid[j] >= c`` (else the last target layer). Since grid[j−1] <
    c < grid[j], the pairing stays strictly monotone. The else branch cannot fire for a valid c
    (the grid's last entry is n_source). When several critical layers compete for the same target
    layer, the one listed first wins (pass them in priority order); the others are recorded in
    ``notes`` as dropped.
    """
    grid = floor_grid(n_source, n_target)
    t2s = dict(enumerate(grid, start=1))
    on_grid = set(grid)
    claimed: dict[int, int] = {}
    notes = []
    for c in critical_source_layers:
        if not 1 <= int(c) <= n_source:
            raise InvalidParameterError(f"critical source layer {c} is outside 1..{n_source}")
        c = int(c)
        if c in on_grid:
            continue
        j = next((j for j, s in enumerate(grid, start=1) if s >= c), n_target)
        if j in claimed:
            notes.append(
                f"critical source layer {c} dropped: target layer {j} already took {claimed[j]}"
            )
            continue
        claimed[j] = c
        t2s[j] = c
    return Pairing(t2s, "floor+critical", n_source, n_target, tuple(notes))


# --------------------------------------------------------------------------- attribution-based


def grid_windows(n_source: int, n_target: int, window: int | None = None) -> list[range]:
    """Candidate source layers per target layer j [reconstruction].

    Base window of j: the source layers after the previous grid point up to and including its
    own, ``(grid[j−1], grid[j]]`` (grid[0] = 0). These blocks partition 1..n_source, so every
    source layer is a candidate for exactly one target layer and the grid point is the deepest
    candidate. ``window = w`` widens each block by w layers on both sides (clamped).
    """
    grid = floor_grid(n_source, n_target)
    if window is not None and window < 0:
        raise InvalidParameterError(f"window must be >= 0, got {window}")
    w = window or 0
    prev = [0] + grid[:-1]
    return [range(max(1, lo + 1 - w), min(n_source, hi + w) + 1) for lo, hi in zip(prev, grid)]


def select_one_per_target(
    scores: Sequence[float], n_target: int, window: int | None = None, *, many_to_one: bool = False
) -> Pairing:
    """One source layer per target layer from per-source-layer attribution scores [reconstruction].

    ``scores[k-1]`` is source layer k's score (higher = more task-relevant); n_source = len(scores).
    Maximises the total score over strictly increasing choices ``k_1 < … < k_{n_target}`` with
    ``k_j`` in target j's window (``grid_windows``). Without widening the windows are disjoint and
    ordered, so this is the argmax inside each window; with ``window > 0`` a dynamic programme over
    (target layer, source layer) resolves overlaps. Ties go to the layer nearest the floor grid
    point, then to the shallower one. Always feasible: the floor grid itself is a valid choice.
    A target deeper than the source (``many_to_one``) needs every source layer, so attribution
    has nothing to choose: the many-to-one floor grid, with a note.
    """
    n_source = len(scores)
    _check_sizes(n_source, n_target, many_to_one)
    if n_target > n_source:
        grid = dict(enumerate(floor_grid(n_source, n_target, many_to_one=True), start=1))
        note = "target deeper than source: many-to-one floor grid, attribution not used"
        return Pairing(grid, "attribution", n_source, n_target, (note,), many_to_one=True)
    vals = [float(s) for s in scores]
    if any(math.isnan(v) for v in vals):
        raise InvalidParameterError("attribution scores contain NaN")
    grid = floor_grid(n_source, n_target)
    windows = grid_windows(n_source, n_target, window)

    # best[j][k]: best (total score, -total distance to grid) for targets 1..j with target j on
    # source k; back[j][k]: the source layer chosen for target j-1.
    neg_inf = (-math.inf, -math.inf)
    best: list[dict[int, tuple[float, float]]] = []
    back: list[dict[int, int | None]] = []
    for j, cands in enumerate(windows):
        row, ptr = {}, {}
        for k in cands:
            gain = (vals[k - 1], -abs(k - grid[j]))
            if j == 0:
                row[k], ptr[k] = gain, None
                continue
            prev_best, prev_k = neg_inf, None
            for kp, v in best[j - 1].items():  # iterate shallow→deep: ties keep the shallower
                if kp < k and v > prev_best:
                    prev_best, prev_k = v, kp
            if prev_k is None:
                continue
            row[k] = (prev_best[0] + gain[0], prev_best[1] + gain[1])
            ptr[k] = prev_k
        best.append(row)
        back.append(ptr)
    last = max(best[-1], key=lambda k: (best[-1][k], -k))
    chosen = [last]
    for j in range(n_target - 1, 0, -1):
        chosen.append(back[j][chosen[-1]])
    chosen.reverse()
    note = f"window={window or 0}"
    return Pairing(dict(enumerate(chosen, start=1)), "attribution", n_source, n_target, (note,))
