"""Notebook 05: SemAlign ablations on the informative setting of Table 2 (fine-tuned teacher →
target), on every informative task of the profile
(:data:`~semalign_core.experiments.budgets.INFORMATIVE_TASKS`: SST-2 and TREC at ``cpu``).

The paper names ablations without publishing their results (attribution granularity, pairing
strategy, strength of semantic decomposition; v2/ACL add the objective and the frontier schedule).
Each axis of :data:`~semalign_core.experiments.catalog.AXES` changes one
:class:`~semalign_core.semalign.config.SemAlignConfig` field around the default run of Table 2
(the ``semalign`` row of ``notebooks/04``), one axis at a time
(:mod:`~semalign_core.experiments.ablation_variants`):

=============  ===========================  ==============================================
axis           field                        variants (default first)
=============  ===========================  ==============================================
objective      ``objective``                acl, v2, v1
pairing        ``pairing``                  attributed, floor, uniform, interpolate
granularity    ``attribution_granularity``  channel, token, example
strength       ``layer_weight``             1 (default), 0 (no latent alignment: output KL
                                            at the last stage only), 2
frontier       ``steps_per_stage``          the budget's, half of it, twice it
decomposition  ``decomposition``            cosine (the paper's), dual (exact minimum-norm
                                            coefficients), gain_folded (bases of the head
                                            with the final-norm gain folded in)
=============  ===========================  ==============================================

"Strength of semantic decomposition" is read as the weight of the layer term (the supervision
that goes through decomposition and recomposition) against the output KL; 0 removes it.

Each variant is one record per task and seed, ``results/semalign_ablations/<profile>/<axis>-
<value>__<task>__seed<seed>.json`` (the default is Table 2's own record of the task, reused when
notebook 04 made it).
Variants that only change how the source layers are chosen (pairing, granularity) first compute
their pairing; when it equals the default run's, training would be identical, so the default's
result is recorded for them (marked ``same_plan``) instead of training again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoConfig

from semalign_core.data.batching import sft_batches
from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import transfer_tables as transfer_table
from semalign_core.experiments.ablation_variants import (
    PAIRING_ONLY,
    Variant,
    default_config,
    value_label,
    variants,
)
from semalign_core.experiments.budgets import informative_tasks, transfer_budget
from semalign_core.experiments.catalog import (
    ABLATION_SETTING,
    AXES,
    SEMALIGN_ABLATIONS,
    get_setting,
)
from semalign_core.experiments.model_pool import record_models
from semalign_core.experiments.notebook import check_list, check_seeds
from semalign_core.experiments.teachers import load_profile_teacher
from semalign_core.lm import surgery
from semalign_core.models.registry import REGISTRY, cached_dir, load_tokenizer, model_shape
from semalign_core.profiles import Profile
from semalign_core.records import Measure, RecordParts, get_or_compute, measured, provenance
from semalign_core.semalign.attribution import interpolation_plan, layer_attribution, pair_layers
from semalign_core.transfer.registry import make_config

EXPERIMENT, SETTING = SEMALIGN_ABLATIONS, ABLATION_SETTING


def check_parameters(
    prof: Profile,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    *,
    axes: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(axes, tasks, seeds), checked (one-line InvalidParameterError); None means every axis,
    every informative task of the profile
    (:func:`~semalign_core.experiments.budgets.informative_tasks`) and the profile's default seeds
    counted from ``seed``."""
    axes = check_list("axes", axes, AXES)
    allowed = informative_tasks(prof)
    if isinstance(tasks, (list, tuple)):
        stray = [t for t in tasks if t not in allowed]
        if stray:
            raise InvalidParameterError(
                f"parameter tasks: {stray} not informative at profile {prof.name!r} "
                f"(budgets.INFORMATIVE_TASKS); choose from: {', '.join(allowed)}"
            )
    tasks = check_list("tasks", tasks, allowed)
    return axes, tasks, check_seeds(seeds, seed, EXPERIMENT, prof.name)


# --------------------------------------------------------------------------- a variant's plan


def _target_layers(prof: Profile) -> int:
    """Depth of the profile's target from its registry entry (no weights are loaded)."""
    spec = REGISTRY[prof.semalign_target]
    if spec.kind == "tiny":
        return int(spec.tiny["num_layers"])
    if spec.kind == "derived":
        return int(spec.derive["num_layers"])
    if spec.kind == "wheel":
        return int(AutoConfig.from_pretrained(cached_dir(spec.name)).num_hidden_layers)
    return model_shape(spec.name)["layers"]  # a hub model's recorded (and its stand-in's) depth


def preview_plan(
    prof: Profile, overrides: dict[str, Any], seed: int, task: str
) -> dict[str, list[list[float]]]:
    """The interpolation plan a variant would train with on ``task`` (attribution only, no
    training)."""
    cfg = make_config("semalign", default_config(prof, seed, task), **overrides)
    budget = transfer_budget(prof, task)
    source, _ = load_profile_teacher(prof.name, task, dtype=prof.dtype)
    scores = None
    if cfg.pairing == "attributed":
        _, extract = transfer_table.transfer_data(task, budget, seed)
        tok = load_tokenizer(prof.semalign_target)
        batches = sft_batches(
            extract.records, tok, cfg.batch_size, cfg.max_length, cfg.prompt_style, cfg.loss_on
        )
        torch.manual_seed(cfg.seed)
        scores = layer_attribution(
            source.model,
            batches,
            cfg.attribution_aggregate,
            cfg.attribution_method,
            cfg.attribution_granularity,
        ).tolist()
    pairing = pair_layers(
        scores,
        _target_layers(prof),
        cfg.pairing,
        cfg.window,
        n_source=surgery.num_layers(source.model),
    )
    return transfer_table.plan_json(interpolation_plan(pairing))


# --------------------------------------------------------------------------- running


def _same_plan_parts(
    prof: Profile, variant: Variant, seed: int, task: str, default: dict
) -> RecordParts:
    """The default's result, recorded for a variant that trains with the same plan (identical
    training): not retrained."""
    metrics = {
        **default["metrics"],
        "same_plan": True,
        "reused_from": f"{default['experiment']}/{default['run']}",
    }
    cost = {"transfer": None, "eval_wall_s": 0.0, "note": "same plan as the default: not retrained"}
    prov = provenance(
        seed=seed, data_sources=default["provenance"].get("data_sha256", {}), dtype=prof.dtype
    )
    return RecordParts(
        metrics,
        cost,
        prov,
        {
            "method": "semalign",
            "task": task,
            "seed": seed,
            "setting": SETTING,
            "teacher": default.get("teacher"),
            "ablation": variant.label(),
        },
    )


def run_variant(
    prof: Profile,
    variant: Variant,
    seed: int,
    task: str,
    force: bool = False,
    measure: Measure | None = None,
    *,
    default: dict | None = None,
) -> dict:
    """The record of one variant, task and seed. The default is Table 2's ``semalign`` cell of
    ``task`` (``default``: its record, when the caller already has it; a forced non-default
    variant reuses a valid one). ``measure`` (the cell runner's own-process peak memory) runs a
    variant's computation and may add to its cost."""
    if default is None:
        default = transfer_table.run_cell(
            prof, "semalign", task, seed, force and variant.is_default, setting=SETTING
        )
    if variant.is_default:
        return default
    cell = transfer_table.make_cell(
        prof,
        "semalign",
        task,
        seed,
        setting=SETTING,
        teacher=default.get("teacher"),
        method_config=variant.overrides,
    )
    config = {**transfer_table.cell_config(cell), "ablation": variant.label()}

    def compute() -> RecordParts:
        if set(variant.overrides) <= set(PAIRING_ONLY):
            plan = preview_plan(prof, variant.overrides, seed, task)
            if plan == (default["metrics"].get("transfer") or {}).get("plan"):
                return _same_plan_parts(prof, variant, seed, task, default)
        parts = transfer_table.compute_cell(cell)
        parts.extra["ablation"] = variant.label()
        return parts

    models = record_models(**transfer_table.cell_models(cell))
    run = measured(compute, measure)
    run_name = variant.run(seed, task)
    return get_or_compute(EXPERIMENT, prof.name, run_name, config, run, force, models)


def run_ablations(
    prof: Profile,
    axes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    verbose: bool = True,
    tasks: Sequence[str] | None = None,
) -> list[dict]:
    """Per task, Table 2's teacher and target rows, then every variant × seed (records reused
    when valid); ``axes``/``seeds``/``tasks`` None: see :func:`check_parameters`."""
    axes, tasks, seeds = check_parameters(prof, 0, seeds, axes=axes, tasks=tasks)
    out = []
    for task in tasks:
        out += [
            transfer_table.run_cell(prof, row, task, seeds[0], force, setting=SETTING)
            for row in get_setting(SETTING).reference_rows
        ]
        defaults: dict[int, dict] = {}
        for variant in variants(prof, axes, task):  # the default first: once per task and seed
            for seed in seeds:
                t0 = time.perf_counter()
                record = run_variant(prof, variant, seed, task, force, default=defaults.get(seed))
                defaults.setdefault(seed, record)
                if verbose:
                    m = record["metrics"]
                    same = " (same plan as default: not retrained)" if m.get("same_plan") else ""
                    print(
                        f"{task:>5} {variant.axis:>13} {variant.value:>11} seed {seed}: acc = "
                        f"{100 * m['value']:.1f} (n={m['n']}){same} "
                        f"[{time.perf_counter() - t0:.1f} s]",
                        flush=True,
                    )
                out.append(record)
    return out


__all__ = [
    "AXES",
    "EXPERIMENT",
    "SETTING",
    "Variant",
    "check_parameters",
    "default_config",
    "preview_plan",
    "run_ablations",
    "run_variant",
    "value_label",
    "variants",
]
