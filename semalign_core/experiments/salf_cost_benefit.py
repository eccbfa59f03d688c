"""Notebook 07: SALF's cost–benefit sweeps (trainable depth, budgets, padding, prefix cache, LoRA).

Per model × task × seed, the runs of :func:`sweep_labels` (each a run of
:mod:`~semalign_core.experiments.salf_cells`) recorded in ``results/salf_cost_benefit/<profile>/``;
a run whose config is identical to a main-table record is copied from it, not recomputed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import partial

from semalign_core.experiments.budgets import TIMING, SalfRunBudget
from semalign_core.experiments.catalog import (
    SALF_COST_BENEFIT,
    SALF_MAIN,
    SALF_TIMING,
    SWEEP_GROUPS,
)
from semalign_core.experiments.notebook import check_list, check_seeds
from semalign_core.experiments.salf_cells import (
    NEEDS_SALF,
    SalfGrid,
    check_label,
    check_models_tasks,
)
from semalign_core.profiles import Profile
from semalign_core.records import Measure


def check_parameters(
    prof: Profile,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    *,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    salf_kw: dict | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(models, tasks, groups, seeds), checked (one-line InvalidParameterError; ``salf_kw`` too).
    None means the profile's models and tasks, every group of
    :data:`~semalign_core.experiments.catalog.SWEEP_GROUPS`, and the profile's default seeds
    counted from ``seed``."""
    models, tasks = check_models_tasks(prof, models, tasks, salf_kw, sweep=True)
    groups = check_list("groups", groups, SWEEP_GROUPS, what="group(s)")
    return models, tasks, groups, check_seeds(seeds, seed, SALF_COST_BENEFIT, prof.name)


def sweep_labels(salf_record: dict) -> dict[str, list[str]]:
    """The cost–benefit runs of one (model, task, seed), grouped by the question they answer,
    from SALF's record there (its eof, the model's depth L and analytic FLOPs per eof).

    depth: full (+ embeddings), full (every block, eof 0), fixed eof ¼L, ½L, ¾L, ⅞L, L−1 (the
    main table's fractions reused) beside SALF.
    budget: SALF under a budget of one block and of half its trainable depth d (only budgets that
    bind: one that does not leaves SALF unchanged), and under a FLOPs budget halfway between SALF's
    analytic cost per step and the cheapest possible (eof = L−1). A ``salf_frac<p>`` budget is not
    run: floor(p·L) blocks is the same eof floor as ``salf_max``. padding: per-example eof under
    both strategies. cache: SALF without the prefix cache. lora: LoRA on all layers and on SALF's
    suffix.
    """
    info = salf_record["model_info"]
    n, eof = info["layers"], salf_record["policy"]["eof"]
    depth = [
        "full_embeddings",
        "full",  # every block trained: eof 0
        "freeze_1_4",
        "freeze_1_2",
        "freeze_3_4",
        f"eof_{round(7 * n / 8)}",
        f"eof_{n - 1}",
        "salf",
    ]
    d = n - eof
    budget = [f"salf_max{b}" for b in sorted({1, max(1, d // 2)}) if b < d]
    curve = info["flops_fraction_of_eof"]
    pct = math.ceil(50 * (curve[eof] + curve[n - 1]))
    if curve[n - 1] <= pct / 100 < curve[eof]:
        budget.append(f"salf_flops{pct}")
    return {
        "depth": list(dict.fromkeys(depth)),
        "budget": budget,
        "padding": ["salf_per_example_min", "salf_per_example_bucket"],
        "cache": ["salf_nocache"],
        "lora": ["lora_all", "lora_salf_suffix"],
    }


def run_labels(salf_record: dict, groups: Sequence[str] = SWEEP_GROUPS) -> list[str]:
    """The labels of :func:`sweep_labels` in ``groups`` (checked names), in order, once each."""
    labels = sweep_labels(salf_record)
    return list(dict.fromkeys(label for g in groups for label in labels[g]))


def make_grid(
    prof: Profile,
    budget: SalfRunBudget | None = None,
    salf_kw: dict | None = None,
    force: bool = False,
    verbose: bool = True,
    measure: Measure | None = None,
) -> SalfGrid:
    """The grid of the sweeps: records in ``salf_cost_benefit``, identical main-table runs copied
    (``measure``: see :class:`~semalign_core.experiments.salf_cells.SalfGrid`)."""
    return SalfGrid(
        prof,
        budget,
        SALF_COST_BENEFIT,
        salf_kw,
        reuse_from=(SALF_MAIN,),
        force=force,
        verbose=verbose,
        measure=measure,
    )


def run_cost_benefit(
    prof: Profile,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
    force: bool = False,
    budget: SalfRunBudget | None = None,
    salf_kw: dict | None = None,
    verbose: bool = True,
) -> list[dict]:
    """The sweeps of ``groups`` per model × task × seed (reused when valid, or copied from an
    identical main-table run; None: see :func:`check_parameters`)."""
    models, tasks, groups, seeds = check_parameters(
        prof, 0, seeds, models=models, tasks=tasks, groups=groups, salf_kw=salf_kw
    )
    grid = make_grid(prof, budget, salf_kw, force, verbose)
    return grid.run_all(partial(run_labels, groups=groups), models, tasks, seeds)


# --------------------------------------------------------------------------- timing repeats


def timing_grid(
    prof: Profile,
    repeat: int,
    budget: SalfRunBudget | None = None,
    salf_kw: dict | None = None,
    force: bool = False,
    measure: Measure | None = None,
    verbose: bool = False,
) -> SalfGrid:
    """The grid of timing repeat ``repeat``: records in ``salf_timing``, not scored."""
    return SalfGrid(
        prof,
        budget,
        SALF_TIMING,
        salf_kw,
        force=force,
        verbose=verbose,
        measure=measure,
        repeat=repeat,
        evaluate=False,
    )


def timing_plan(
    prof: Profile, models: Sequence[str], tasks: Sequence[str], seed: int = 0
) -> list[tuple[str, str, str, int, int]]:
    """Every timing run (model, task, policy, seed, repeat) of ``budgets.TIMING[profile]``,
    interleaved in a seeded random order (so no policy always runs first, or on a warm or a cold
    machine). A policy that reads SALF's eof (``NEEDS_SALF``) is held back until SALF's run of
    its model, task and repeat has gone, so it never computes SALF inside its own timed process."""
    timing = TIMING[prof.name]
    for label in timing["policies"]:
        check_label(label)
    plan = [
        (m, t, label, seed, r)
        for m in models
        for t in tasks
        for label in timing["policies"]
        for r in range(timing["repeats"])
    ]
    random.Random(timing["order_seed"]).shuffle(plan)
    return _after_salf(plan)


def _after_salf(plan: list[tuple[str, str, str, int, int]]) -> list[tuple[str, str, str, int, int]]:
    """``plan`` in its order, except that each ``NEEDS_SALF`` run goes right after the SALF run of
    its model, task, seed and repeat when that comes later (unchanged when SALF is not timed)."""
    salf_runs = {(m, t, s, r) for m, t, label, s, r in plan if label == "salf"}
    ordered, held, done = [], {}, set()
    for m, t, label, s, r in plan:
        key = (m, t, s, r)
        if label in NEEDS_SALF and key in salf_runs and key not in done:
            held.setdefault(key, []).append((m, t, label, s, r))
            continue
        ordered.append((m, t, label, s, r))
        if label == "salf":
            done.add(key)
            ordered.extend(held.pop(key, []))
    return ordered


__all__ = [
    "check_parameters",
    "make_grid",
    "run_cost_benefit",
    "run_labels",
    "sweep_labels",
    "timing_grid",
    "timing_plan",
]
