"""Notebook 06: SALF's main table, every freezing policy against full fine-tuning.

Per model × task × seed: zero-shot once, then ``full``, ``salf`` and the other policies of
:data:`~semalign_core.experiments.catalog.MAIN_POLICIES`, each a run of
:mod:`~semalign_core.experiments.salf_cells` recorded in ``results/salf_main/<profile>/``.
"""

from __future__ import annotations

from collections.abc import Sequence

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.budgets import SalfRunBudget
from semalign_core.experiments.catalog import MAIN_POLICIES, SALF_MAIN
from semalign_core.experiments.notebook import check_seeds
from semalign_core.experiments.salf_cells import SalfGrid, check_label, check_models_tasks
from semalign_core.profiles import Profile


def check_parameters(
    prof: Profile,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    *,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    salf_kw: dict | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(models, tasks, policies, seeds), checked (one-line InvalidParameterError; ``salf_kw``
    too). None means the profile's models and tasks, every main-table policy, and the profile's
    default seeds counted from ``seed``."""
    models, tasks = check_models_tasks(prof, models, tasks, salf_kw)
    if policies is None:
        policies = MAIN_POLICIES
    elif isinstance(policies, str) or not isinstance(policies, (list, tuple)) or not policies:
        raise InvalidParameterError(
            f"parameter policies={policies!r} must be None or a non-empty list"
        )
    policies = tuple(dict.fromkeys(check_label(p) for p in policies))
    return models, tasks, policies, check_seeds(seeds, seed, SALF_MAIN, prof.name)


def run_main_table(
    prof: Profile,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    budget: SalfRunBudget | None = None,
    salf_kw: dict | None = None,
    verbose: bool = True,
) -> list[dict]:
    """The main table's runs (reused when valid; None: see :func:`check_parameters`)."""
    models, tasks, policies, seeds = check_parameters(
        prof, 0, seeds, models=models, tasks=tasks, policies=policies, salf_kw=salf_kw
    )
    grid = SalfGrid(prof, budget, SALF_MAIN, salf_kw, force=force, verbose=verbose)
    return grid.run_all(lambda _: policies, models, tasks, seeds)


__all__ = ["check_parameters", "run_main_table"]
