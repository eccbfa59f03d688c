"""Notebook 02: SALF's analysis per model and task: deviations, gains and the end of freezing.

:func:`salf_deviation_gain` traces one model on one classification task (deviation per latent
space, gain per block, eof; and the eof under every registered gain formula) and writes one record
``results/salf_analysis/<profile>/<model>__<task>.json``, reused while valid. A model is loaded
only when one of its records must be computed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from semalign_core import salf
from semalign_core.data import CLASSIFICATION_TASKS, load_classification, select_subset
from semalign_core.devices import default_device
from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.budgets import SALF_ANALYSIS_EXAMPLES
from semalign_core.experiments.catalog import SALF_ANALYSIS
from semalign_core.experiments.model_pool import ModelPool, record_models
from semalign_core.experiments.notebook import check_list, check_optional_int
from semalign_core.profiles import Profile
from semalign_core.records import RecordParts, get_or_compute, json_rounded, provenance

DEFAULT_TASKS = ("sst2", "agnews", "trec")


def check_parameters(
    tasks: Sequence[str], n_examples: int | None = None, max_length: int = 128
) -> tuple[str, ...]:
    """One-line InvalidParameterError unless ``tasks`` is a non-empty list of known tasks (and
    ``n_examples``, ``max_length`` are valid); returns the tasks, duplicates dropped. (One seed:
    the analysis has no ``seeds``.)"""
    tasks = check_list(
        "tasks", tasks, CLASSIFICATION_TASKS, none_means_all=False, what="classification task(s)"
    )
    check_optional_int("n_examples", n_examples)
    check_optional_int("max_length", max_length, minimum=2)
    if max_length is None:
        raise InvalidParameterError("parameter max_length=None must be an integer >= 2")
    return tasks


def salf_split(task: str) -> str:
    """The split SALF traces: ``train`` where it exists, else ``dev``, else ``dev_subsample``
    (never a test split, which evaluation keeps)."""
    labeled = CLASSIFICATION_TASKS[task].labeled_splits
    return next(s for s in ("train", "dev", "dev_subsample") if s in labeled)


def run_name(model: str, task: str) -> str:
    return f"{model}__{task}"


def _config(
    prof: Profile,
    model: str,
    task: str,
    n: int | None,
    seed: int,
    deviation: str,
    gain: str,
    max_length: int,
) -> dict:
    return {
        "profile": prof.name,
        "model": model,
        "task": task,
        "split": salf_split(task),
        "n_examples": n,
        "seed": seed,
        "deviation": deviation,
        "gain": gain,
        "max_length": max_length,
        "dtype": prof.dtype,
        "version": 2,  # 2: eof from block 2 (space 0 out), eof stability
    }


def _metrics(model, out: dict) -> dict:
    """The record's metrics from :func:`salf.analyse`'s output, with the eof under every gain."""
    params = salf.block_params(model)
    per_example = np.asarray(out["per_example_deviation"], dtype=np.float64)
    mean = np.asarray(out["deviation"], dtype=np.float64)
    by_formula = {g: salf.compute_gains(mean, params, g) for g in sorted(salf.GAINS)}
    return {
        "layers": len(params),
        "deviation_kind": out["deviation_kind"],
        "gain_kind": out["gain_kind"],
        "deviation": json_rounded(mean),
        "deviation_std": json_rounded(per_example.std(0)),
        "gains": json_rounded(out["gains"]),
        "eof": int(out["eof"]),
        "first_block": out["first_block"],
        "eof_stability": out["eof_stability"],
        "eof_by_gain": salf.eof_by_gain(mean, params, out["first_block"]),
        "gains_by_formula": {g: json_rounded(v) for g, v in by_formula.items()},
        "example_eof_counts": {str(k): v for k, v in sorted(Counter(out["example_eofs"]).items())},
        "block_params": params,
        "n": int(out["n"]),
        "prompt": out["meta"],
    }


def _check_formulas(deviation: str, gain: str) -> None:
    if deviation not in salf.DEVIATIONS:
        raise InvalidParameterError(
            f"deviation must be one of {', '.join(salf.DEVIATIONS)}, got {deviation!r}"
        )
    if gain not in salf.GAINS:
        raise InvalidParameterError(f"gain must be one of {', '.join(salf.GAINS)}, got {gain!r}")


def _analysis_parts(
    prof: Profile,
    pool: ModelPool,
    name: str,
    task: str,
    n: int | None,
    seed: int,
    analyse_kw: dict[str, Any],
) -> RecordParts:
    """Trace model ``name`` on ``n`` examples of ``task``'s SALF split: the record's parts."""
    full = load_classification(task, salf_split(task))
    limit = None if n is None else min(n, len(full))
    records = select_subset(full.records, limit, seed, f"{task}/{full.split}")
    loaded = pool.on_device(name)  # read only: on an accelerator, a copy of the CPU original
    t0 = time.perf_counter()
    res = salf.analyse(loaded.model, loaded.tokenizer, records, task, **analyse_kw)
    cost = {"wall_s": round(time.perf_counter() - t0, 2)}
    prov = provenance(
        seed=seed, data_sources=full.sources, device=default_device(), dtype=prof.dtype
    )
    return RecordParts(_metrics(loaded.model, res), cost, prov, {"model": name, "task": task})


def salf_deviation_gain(
    prof: Profile,
    tasks: Sequence[str] = DEFAULT_TASKS,
    seed: int = 0,
    force: bool = False,
    n_examples: int | None = None,
    deviation: str = "cos_normed",
    gain: str = "scaling_kaplan",
    max_length: int = 128,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """SALF's analysis for every model of ``prof.salf_models`` × ``tasks``: one record each.

    ``n_examples`` (None: the profile's, :data:`~semalign_core.experiments.budgets.
    SALF_ANALYSIS_EXAMPLES`) are drawn with ``seed`` from the task's training split
    (:func:`salf_split`). Records: ``results/salf_analysis/<profile>/<model>__<task>.json``.
    """
    tasks = check_parameters(tasks, n_examples, max_length)
    _check_formulas(deviation, gain)
    n = n_examples if n_examples is not None else SALF_ANALYSIS_EXAMPLES[prof.name]
    analyse_kw = {
        "deviation": deviation,
        "gain": gain,
        "max_length": max_length,
        "batch_size": batch_size,
    }
    out: list[dict] = []
    for name in prof.salf_models:
        pool = ModelPool(prof)  # one per model: it is freed before the next one loads
        for task in tasks:
            config = _config(prof, name, task, n, seed, deviation, gain, max_length)
            compute = partial(_analysis_parts, prof, pool, name, task, n, seed, analyse_kw)
            run, models = run_name(name, task), record_models(model=name)
            record = get_or_compute(SALF_ANALYSIS, prof.name, run, config, compute, force, models)
            out.append(record)
    return out


__all__ = ["DEFAULT_TASKS", "check_parameters", "run_name", "salf_deviation_gain", "salf_split"]
