"""The SALF runs behind notebooks 06 (main table) and 07 (cost–benefit): one run per cell.

A *run* is (model, task, policy label, seed): a fresh copy of the model is fine-tuned on
``n_train`` examples of the task under one policy (:func:`semalign_core.salf.run_finetune`) and
scored on a fixed held-out subset (accuracy, macro-F1). One record per run,
``results/<experiment>/<profile>/<model>__<task>__<label>__seed<seed>.json``, holding the score,
the costs (analytic FLOPs and their saving against full fine-tuning of the same batches, training
wall time, policy set-up time, peak memory), the policy's description, the config and provenance.
A valid record with the same config is reused unless forced (that is how a notebook resumes); a
:class:`SalfGrid` may also copy an identical record of another experiment instead of recomputing
it (the cost–benefit notebook copies main-table runs).

Policy labels (:func:`policy_spec` turns one into the JSON spec that the config holds):

* the main table (:data:`~semalign_core.experiments.catalog.MAIN_POLICIES`): ``full``, ``salf``,
  ``freeze_1_4`` / ``freeze_1_2`` / ``freeze_3_4``, ``random_matched`` (SALF's trainable depth,
  seeded random blocks), ``logit_lens_ce``, ``block_influence``, ``autofreeze``, ``lisa``,
  ``lora_all``, ``lora_salf_suffix`` (LoRA on SALF's suffix), and ``zero_shot`` (the untrained
  model, once per model × task: does fine-tuning move the score at all?);
* sweeps: ``eof_<k>`` (freeze embeddings + blocks 1..k), ``salf_max<b>`` / ``salf_frac<p>`` /
  ``salf_flops<p>`` (SALF under a budget of b blocks, p % of the blocks, p % of full FT's analytic
  FLOPs), ``salf_per_example_min`` / ``salf_per_example_bucket`` (per-example eof and the padding
  strategy that batches them), ``salf_nocache`` (SALF without the frozen-prefix cache).

Measured savings (wall time, memory) are computed from the records when a table is built, against
the ``full`` record of the same model, task and seed (:mod:`semalign_core.report.salf`), so a
recomputed reference never leaves stale savings behind.

The data: ``n_train`` examples drawn with the seed from the task's training split, and a fixed
(:data:`EVAL_SEED`) subset of ``n_eval`` examples of its labelled test split; a task without a
training split (SST-2: GLUE's test labels are hidden) has both carved, disjoint, from its
evaluation split. Evaluation examples are scored in order of length (less padding; the score does
not depend on the order).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from semalign_core import costs, salf
from semalign_core.data import CLASSIFICATION_TASKS, load_classification, select_subset
from semalign_core.devices import default_device
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments import cell_process
from semalign_core.experiments.budgets import (
    AUTOFREEZE,
    LISA,
    LORA,
    SALF_DEFAULTS,
    SalfRunBudget,
)
from semalign_core.experiments.budgets import salf_run_budget as run_budget
from semalign_core.experiments.catalog import MAIN_POLICIES, SALF_MAIN, ZERO_SHOT
from semalign_core.experiments.model_pool import ModelPool, record_models, release_memory
from semalign_core.experiments.notebook import check_list
from semalign_core.lm import sharding
from semalign_core.models.registry import REGISTRY
from semalign_core.profiles import Profile
from semalign_core.records import (
    Measure,
    RecordParts,
    get_or_compute,
    load_valid_record,
    measured,
    provenance,
    torch_threads,
)

# 2: like-for-like full, per-item scores, space 0 out, cost components, cache fix;
# 3: first_block in the spec, bases costed once per model, AutoFreeze checkpoints, scored runs'
#    config without the thread count (their times are not the timing study's)
VERSION = 3
EVAL_SEED = 1234  # one held-out subset for every seed and policy: seeds vary the training only
FRACTIONS = {"freeze_1_4": 0.25, "freeze_1_2": 0.5, "freeze_3_4": 0.75}
NEEDS_SALF = ("random_matched", "lora_salf_suffix")  # their spec holds SALF's eof (from its record)
# What FSDP does not train (salf/finetune.py): nothing trained, a trainable set that changes during
# training, LoRA adapters. Every other policy trains in one process per GPU where the profile
# trains with FSDP and several GPUs are visible.
ONE_PROCESS_LABELS = (ZERO_SHOT, "autofreeze", "lisa", "lora_all", "lora_salf_suffix")
SALF_OPTIONS = {
    "deviation": "cos_normed",
    "gain": "scaling_kaplan",
    "first_block": salf.FIRST_BLOCK,
}  # SALF's analysis, unless told otherwise
PATTERNS = (
    "eof_<k>",
    "salf_max<b>",
    "salf_frac<p>",
    "salf_flops<p>",
    "salf_per_example_min",
    "salf_per_example_bucket",
    "salf_nocache",
)
# the record keys that identify a run (the rest of a copied record is kept as it is)
_IDENTITY_KEYS = (
    "experiment",
    "profile",
    "run",
    "config",
    "config_hash",
    "metrics",
    "cost",
    "provenance",
)


# --------------------------------------------------------------------------- parameters


def check_label(label: str) -> str:
    """``label`` itself, or a one-line InvalidParameterError naming the valid labels."""
    fixed = (
        ZERO_SHOT,
        *MAIN_POLICIES,
        "salf_per_example_min",
        "salf_per_example_bucket",
        "salf_nocache",
    )
    if isinstance(label, str) and (
        label in fixed or re.fullmatch(r"eof_\d+|salf_(max|frac|flops)\d+", label)
    ):
        return label
    raise InvalidParameterError(
        f"unknown policy {label!r}; choose from "
        f"{', '.join(MAIN_POLICIES)}, {ZERO_SHOT} or a pattern "
        f"{', '.join(PATTERNS)}"
    )


def check_salf_kw(salf_kw: dict | None) -> dict:
    """SALF's options (:data:`SALF_OPTIONS` with ``salf_kw``), checked."""
    kw = {**SALF_OPTIONS, **(salf_kw or {})}
    unknown = sorted(set(kw) - set(SALF_OPTIONS))
    if unknown:
        raise InvalidParameterError(
            f"SALF options are {', '.join(SALF_OPTIONS)}; got {', '.join(unknown)}"
        )
    if kw["deviation"] not in salf.DEVIATIONS:
        raise InvalidParameterError(
            f"deviation must be one of {', '.join(salf.DEVIATIONS)}, got {kw['deviation']!r}"
        )
    if kw["gain"] not in salf.GAINS:
        raise InvalidParameterError(
            f"gain must be one of {', '.join(salf.GAINS)}, got {kw['gain']!r}"
        )
    first = kw["first_block"]
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise InvalidParameterError(f"first_block must be an integer ≥ 1, got {first!r}")
    return kw


def check_models_tasks(
    prof: Profile,
    models: Sequence[str] | None,
    tasks: Sequence[str] | None,
    salf_kw: dict | None,
    sweep: bool = False,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(models, tasks) of a SALF notebook, checked with its SALF options; None: the profile's
    defaults (:data:`~semalign_core.experiments.budgets.SALF_DEFAULTS`), those of the sweeps
    when ``sweep``."""
    defaults = SALF_DEFAULTS[prof.name]
    if models is None:
        models = (sweep and defaults.sweep_models) or defaults.models or prof.salf_models
    else:
        models = check_list("models", models, REGISTRY, what="model(s)")
    if tasks is None:
        tasks = (sweep and defaults.sweep_tasks) or defaults.tasks
    else:
        tasks = check_list("tasks", tasks, CLASSIFICATION_TASKS, what="task(s)")
    check_salf_kw(salf_kw)
    return tuple(models), tuple(tasks)


def overridden_settings(salf_kw: dict | None = None, **settings) -> list[str]:
    """The notebook settings that differ from the profile's defaults (``settings``: models, tasks,
    budget fields; None = default). A cell run in a fresh process is rebuilt from its name at
    the defaults, so a notebook with overrides computes its runs itself."""
    changed = [name for name, value in settings.items() if value is not None]
    if {**SALF_OPTIONS, **(salf_kw or {})} != SALF_OPTIONS:
        changed.append("salf_kw")
    return changed


# --------------------------------------------------------------------------- policies


def policy_spec(
    label: str,
    num_layers: int | None = None,
    seed: int = 0,
    salf_eof: int | None = None,
    salf_kw: dict | None = None,
) -> dict[str, Any]:
    """The JSON description of policy ``label`` (what the run's config holds and its hash covers).

    ``random_matched`` and ``lora_salf_suffix`` need ``num_layers`` and SALF's eof of the same
    model, task and seed.
    """
    check_label(label)
    salf_spec = {"kind": "salf", **check_salf_kw(salf_kw)}
    if label in NEEDS_SALF and (salf_eof is None or num_layers is None):
        raise InvalidParameterError(f"policy {label!r} needs SALF's eof and the number of layers")
    simple = {
        ZERO_SHOT: {"kind": "none"},
        "full": {"kind": "full", "embeddings": False},
        "full_embeddings": {"kind": "full", "embeddings": True},
        "salf": salf_spec,
        "logit_lens_ce": {"kind": "logit_lens_ce", "first_block": salf_spec["first_block"]},
        "block_influence": {"kind": "block_influence", "first_block": salf_spec["first_block"]},
        "autofreeze": {"kind": "autofreeze", **AUTOFREEZE},
        "lisa": {"kind": "lisa", **LISA, "seed": seed, "embeddings": False},
        "lora_all": {"kind": "lora", "eof": 0, **LORA},
        "salf_per_example_min": {**salf_spec, "per_example": True, "padding": "min"},
        "salf_per_example_bucket": {**salf_spec, "per_example": True, "padding": "bucket"},
        "salf_nocache": {**salf_spec, "cache_prefix": False},
    }
    if label in simple:
        return simple[label]
    if label in FRACTIONS:
        return {"kind": "fixed", "fraction": FRACTIONS[label]}
    if label == "random_matched":
        return {"kind": "random", "depth": num_layers - salf_eof, "seed": seed}
    if label == "lora_salf_suffix":
        return {"kind": "lora", "eof": salf_eof, **LORA, "eof_from": "salf"}
    kind, value = re.fullmatch(r"(eof|salf_max|salf_frac|salf_flops)_?(\d+)", label).groups()
    if kind == "eof":
        return {"kind": "fixed", "eof": int(value)}
    budget = {
        "salf_max": {"max_trainable": int(value)},
        "salf_frac": {"fraction": int(value) / 100},
        "salf_flops": {"flops_fraction": int(value) / 100},
    }[kind]
    return {**salf_spec, "budget": budget}


def build_policy(label: str, spec: dict, model, max_length: int):
    """The :class:`~semalign_core.salf.policies.Policy` of ``spec`` (named ``label``)."""
    not_policy_fields = ("kind", "eof_from", "cache_prefix", "lr_scale")
    kw = {k: v for k, v in spec.items() if k not in not_policy_fields}
    if "budget" in kw:
        kw["budget"] = salf.Budget(**kw["budget"])
        if kw["budget"].flops_fraction is not None:
            kw["flops_of_eof"], kw["full_flops"] = flops_of_eof(model, max_length)
    policy = salf.make_policy(spec["kind"], **kw)
    policy.name = label
    return policy


def flops_of_eof(model, seq_len: int):
    """(eof → analytic FLOPs of one training step on one ``seq_len`` sequence, the same with every
    block trained), the reference a FLOPs budget compares with (no prefix cache: the first
    epoch's cost)."""
    shape = costs.model_shape(model)
    n = shape.num_layers

    def step(eof: int) -> float:
        spec = costs.TrainableSpec(trained_blocks=frozenset(range(eof, n)))
        return costs.step_flops(shape, spec, seq_len, seq_len, 1)["total"]

    return step, step(0)  # the like-for-like reference: every block trained


# What every timing repeat runs, untimed, before its policy's set-up: block influence's analysis
# pass (a forward pass over the training examples keeping every block's state). Measured (stop 28,
# SmolLM2 x TREC, fresh processes, idle machine, 3 alternating rounds): `full` trained in 14.2 s
# (13.9-14.9) cold and in 12.75 s (12.6-13.5) after this pass; block influence, whose own set-up
# is this pass, in 12.1 s (11.8-12.8). Cold, `full` was charged ~10 % that the policies with an
# analysis pass never pay, which made their measured savings exceed the analytic ones.
TIMING_WARM_UP = "block_influence_analysis"


def _warmed_up(policy, model, max_length: int) -> None:
    """Run :data:`TIMING_WARM_UP` before ``policy``'s own set-up (both untimed by the training
    clock; the warm-up's seconds go to ``warm_up_s``), so every timing repeat starts its timed
    training in a process that has run the same forward pass."""
    setup = policy.setup
    warm = build_policy("warm_up", policy_spec("block_influence"), model, max_length)

    def warmed(ctx):
        t0 = time.perf_counter()
        warm.setup(ctx)  # its decision is discarded
        policy.warm_up_s = time.perf_counter() - t0
        return setup(ctx)

    policy.setup = warmed


def _timed_setup(policy) -> None:
    """Record how long the policy's set-up (SALF's analysis pass) takes, as ``policy.setup_s``."""
    setup = policy.setup

    def timed(ctx):
        t0 = time.perf_counter()
        try:
            return setup(ctx)
        finally:
            policy.setup_s = time.perf_counter() - t0

    policy.setup = timed
    policy.setup_s = 0.0


# --------------------------------------------------------------------------- data


def _splits(task: str) -> tuple[str | None, str]:
    """(training split, or None when it is carved from the evaluation split; evaluation split)."""
    labeled = CLASSIFICATION_TASKS[task].labeled_splits
    evaluation = next(s for s in ("test", "dev", "dev_subsample") if s in labeled)
    return ("train" if "train" in labeled else None), evaluation


def task_data(
    task: str, n_train: int, n_eval: int, seed: int
) -> tuple[list[dict], list[dict], dict, dict]:
    """(train records, eval records sorted by length, data sources, description)."""
    train_split, eval_split = _splits(task)
    full_eval = load_classification(task, eval_split)
    if n_eval > len(full_eval):
        raise InvalidParameterError(
            f"n_eval={n_eval} exceeds the {len(full_eval)} examples of {task}/{eval_split}"
        )
    keep = set(
        select_subset(list(range(len(full_eval))), n_eval, EVAL_SEED, f"{task}/{eval_split}")
    )
    evaluation = [r for i, r in enumerate(full_eval.records) if i in keep]
    sources = dict(full_eval.sources)
    if train_split is None:
        pool = [r for i, r in enumerate(full_eval.records) if i not in keep]
        where = f"{task}/{eval_split} minus eval"
    else:
        split = load_classification(task, train_split)
        pool, where = split.records, f"{task}/{train_split}"
        sources.update(split.sources)
    if n_train > len(pool):
        raise InvalidParameterError(
            f"n_train={n_train} exceeds the {len(pool)} examples of {where}"
        )
    train = select_subset(pool, n_train, seed, where)
    evaluation.sort(key=lambda r: (len(r["text"]), r["text"]))
    info = {
        "train_split": train_split or f"{eval_split} (carved, disjoint from eval)",
        "eval_split": eval_split,
        "n_train": n_train,
        "n_eval": n_eval,
        "eval_seed": EVAL_SEED,
    }
    return train, evaluation, sources, info


# --------------------------------------------------------------------------- one run


def run_name(model: str, task: str, label: str, seed: int | None, repeat: int | None = None) -> str:
    if label == ZERO_SHOT:
        return f"{model}__{task}__{label}"
    name = f"{model}__{task}__{label}__seed{seed}"
    return name if repeat is None else f"{name}__rep{repeat}"


def label_of(run: str) -> str:
    """The policy label of a run name (:func:`run_name`)."""
    return run.split("__")[2]


def shardable(label: str) -> bool:
    """Whether FSDP can train policy ``label`` (not one of :data:`ONE_PROCESS_LABELS`)."""
    return label not in ONE_PROCESS_LABELS


def finetune_config(budget: SalfRunBudget, model: str, seed: int, spec: dict):
    return salf.FinetuneConfig(
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        lr=budget.lr_for(model) * spec.get("lr_scale", 1),
        max_length=budget.max_length,
        eval_batch_size=budget.eval_batch_size,
        seed=seed,
        loss=budget.loss,
        cache_prefix=spec.get("cache_prefix", True),
    )


def run_config(
    prof: Profile,
    model: str,
    task: str,
    label: str,
    seed: int | None,
    spec: dict,
    budget: SalfRunBudget,
    repeat: int | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """What determines a run's numbers and timings (its hash decides whether a record is reused).
    A timing repeat (``repeat``) is its own record; ``evaluate=False`` skips the scoring."""
    _, eval_split = _splits(task)
    config = {
        "profile": prof.name,
        "model": model,
        "task": task,
        "policy": label,
        "spec": spec,
        "seed": seed,
        "data": {
            "n_train": budget.n_train,
            "n_eval": budget.n_eval,
            "eval_seed": EVAL_SEED,
            "eval_split": eval_split,
        },
        "dtype": prof.dtype,
        "device": default_device(),
        "version": VERSION,
    }
    if label == ZERO_SHOT:
        config["eval"] = {"max_length": budget.max_length, "batch_size": budget.eval_batch_size}
    else:
        config["finetune"] = asdict(finetune_config(budget, model, seed, spec))
    if repeat is not None:  # a timing repeat: its times are the result, so threads count
        config["repeat"] = repeat
        config["threads"] = torch.get_num_threads()
        config["warm_up"] = TIMING_WARM_UP
    if not evaluate:
        config["evaluate"] = False
    return config


def _zero_shot(net, tokenizer, evaluation: list[dict], task: str, config):
    """(metrics, cost, extra record keys) of the untrained model."""
    t0 = time.perf_counter()
    tokens = salf.label_token_ids(tokenizer, CLASSIFICATION_TASKS[task].label_words)
    metrics = salf.evaluate(net, tokenizer, evaluation, tokens, task, config)
    return metrics, {"eval_s": time.perf_counter() - t0}, {}


def _finetuned(
    label: str,
    spec: dict,
    net,
    tokenizer,
    train: list[dict],
    evaluation: list[dict],
    task: str,
    config,
    warm_up: bool = False,
):
    """(metrics, cost, extra record keys) of one fine-tuning run under the policy of ``spec``
    (``warm_up``: a timing repeat's, :data:`TIMING_WARM_UP` first)."""
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    policy = build_policy(label, spec, net, config.max_length)
    policy.warm_up_s = 0.0
    if warm_up:
        _warmed_up(policy, net, config.max_length)
    _timed_setup(policy)
    result = salf.run_finetune(net, tokenizer, train, evaluation, policy, config, task=task)
    call_s = time.perf_counter() - t0
    record = result.as_record()
    cost = {
        **record["cost"],
        "setup_s": policy.setup_s - policy.warm_up_s,
        "warm_up_s": policy.warm_up_s,
        "call_s": call_s,
        "eval_s": call_s - policy.setup_s - record["cost"]["wall_s"],
        # the machine's 1-minute load average around the run (timings need an idle machine)
        "loadavg_1m": [load_before, os.getloadavg()[0]],
    }
    extra = {
        "policy": record["policy"],
        "losses": record["losses"],
        "epoch_losses": record["epoch_losses"],
        "history": record["history"],
    }
    return record["metrics"], cost, extra


@dataclass
class SalfGrid:
    """What every run of one SALF notebook shares, and the runs themselves.

        grid = SalfGrid(prof, budget=run_budget(prof, n_train=40))
        records = grid.run_all(lambda salf_record: ["full", "salf"], models, tasks, seeds)

    Attributes:
        prof: the profile.
        budget: every run's budget (None: the profile's).
        experiment: the results folder the records go to.
        salf_kw: SALF's options (:data:`SALF_OPTIONS` by default).
        reuse_from: experiments whose valid record of the same run and config is copied here
            instead of recomputed (not when forced).
        force: recompute every run of the grid (a run needed by another one is not forced again).
        pool: the models, each loaded once and only when a run is computed.
        verbose: print one line per run.
        measure: runs a computed (not a copied) run and may add to its cost (the cell runner's
            own-process peak memory); None: the run is computed as it is.
        repeat: a timing repeat's index (its own record, ``__rep<r>``); None: a scored run.
        evaluate: score the run on the held-out subset (timing repeats do not).
    """

    prof: Profile
    budget: SalfRunBudget | None = None
    experiment: str = SALF_MAIN
    salf_kw: dict | None = None
    reuse_from: tuple[str, ...] = ()
    force: bool = False
    pool: ModelPool | None = None
    verbose: bool = True
    measure: Measure | None = None
    repeat: int | None = None
    evaluate: bool = True

    def __post_init__(self):
        self.budget = self.budget or run_budget(self.prof)
        self.pool = self.pool or ModelPool(self.prof)

    def run(
        self, model: str, task: str, label: str, seed: int | None = 0, force: bool | None = None
    ) -> dict[str, Any]:
        """One run's record: reused when valid (here, or identical in ``reuse_from``), else
        computed. ``random_matched`` and ``lora_salf_suffix`` first get (or compute) SALF's
        record of the same model, task and seed, whose eof they use."""
        check_label(label)
        force = self.force if force is None else force
        seed = None if label == ZERO_SHOT else seed
        num_layers = salf_eof = None
        if label in NEEDS_SALF:
            # Not forced: the grid has just run (or forced) SALF; a lone forced run reuses it.
            salf_record = self.run(model, task, "salf", seed, force=False)
            num_layers, salf_eof = salf_record["model_info"]["layers"], salf_record["policy"]["eof"]
        spec = policy_spec(label, num_layers, seed or 0, salf_eof, self.salf_kw)
        config = run_config(
            self.prof, model, task, label, seed, spec, self.budget, self.repeat, self.evaluate
        )
        run = run_name(model, task, label, seed, self.repeat)
        models = record_models(model=model)
        if self._launches(label) and (force or self._copied(run, config, models()) is None):
            self._launch(run, config, models, force)
            force = False  # its record stands now: valid before, or written by the launch

        def compute() -> RecordParts:
            copied = None if force else self._copied(run, config, models())
            computed = partial(self._computed, model, task, label, seed, spec)
            return copied or measured(computed, self.measure)()

        return get_or_compute(self.experiment, self.prof.name, run, config, compute, force, models)

    def _launches(self, label: str) -> bool:
        """Whether run ``label`` is trained by an FSDP launch over this machine's GPUs: where the
        profile trains with FSDP and several GPUs are visible, for a scored run of a policy FSDP
        trains, at the profile's budget and SALF options (what the cell runner computes)."""
        return (
            self.repeat is None
            and shardable(label)
            and self.budget == run_budget(self.prof)
            and check_salf_kw(self.salf_kw) == SALF_OPTIONS
            and sharding.launches_several(self.prof.train_engine)
        )

    def _launch(self, run: str, config: dict, models: Callable[[], dict], force: bool) -> None:
        """Have the cell runner train ``run`` in one process per GPU (it writes the record this
        grid then reads), unless a valid record stands and ``force`` is off."""

        def stored() -> dict | None:
            return load_valid_record(self.experiment, self.prof.name, run, config, models())

        if not force and stored() is not None:
            return
        cell_process.spawn(
            self.experiment, run, self.prof.name, force, torch_threads(), sharded=True
        )
        if stored() is None:
            raise ArtifactError(
                f"{run}: the FSDP launch left no valid record (the cell runner computes the "
                "profile's settings only)"
            )

    def _copied(self, run: str, config: dict, identities: dict) -> RecordParts | None:
        """The parts of an identical valid record (same config and model files) of another
        experiment, made with this process's thread count, marked as reused. A scored run's
        config holds no thread count; its wall time stands beside this grid's own runs, so a
        record timed with other threads (notebook 06's one-thread processes) is not copied."""
        for other in self.reuse_from:
            record = load_valid_record(other, self.prof.name, run, config, identities)
            if record is not None and record["provenance"].get("threads") == torch_threads():
                keep = {k: v for k, v in record.items() if k not in _IDENTITY_KEYS}
                return RecordParts(
                    record["metrics"],
                    record["cost"],
                    record["provenance"],
                    {**keep, "reused_from": f"{other}/{self.prof.name}/{run}.json"},
                )
        return None

    def _computed(
        self, model: str, task: str, label: str, seed: int | None, spec: dict
    ) -> RecordParts:
        """Train (unless zero-shot) a fresh copy of ``model`` and evaluate it."""
        budget = self.budget
        train, evaluation, sources, data_info = task_data(
            task, budget.n_train, budget.n_eval, seed or 0
        )
        net, tokenizer = self.pool.fresh(model)
        step, full = flops_of_eof(net, budget.max_length)
        n_layers = self.pool.num_layers(model)
        info = {
            "layers": n_layers,
            "data": data_info,
            "flops_fraction_of_eof": [step(e) / full for e in range(n_layers + 1)],
        }
        config = finetune_config(budget, model, seed or 0, spec)
        if spec["kind"] == "none":
            metrics, cost, extra = _zero_shot(net, tokenizer, evaluation, task, config)
        else:
            scored = evaluation if self.evaluate else None
            metrics, cost, extra = _finetuned(
                label, spec, net, tokenizer, train, scored, task, config, self.repeat is not None
            )
        del net
        release_memory()  # the run's copy goes before the next run copies the model again
        prov = provenance(
            seed=seed, data_sources=sources, device=default_device(), dtype=self.prof.dtype
        )
        return RecordParts(
            metrics,
            cost,
            prov,
            {
                "model": model,
                "task": task,
                "policy_label": label,
                "seed": seed,
                "model_info": info,
                **extra,
            },
        )

    def _logged(self, model: str, task: str, label: str, seed: int | None) -> dict:
        t0 = time.perf_counter()
        record = self.run(model, task, label, seed)
        if self.verbose:
            print(
                f"{model} {task} seed {seed} {label:>24}: {summary(record)} "
                f"[{time.perf_counter() - t0:.1f} s]",
                flush=True,
            )
        return record

    def run_all(
        self,
        labels_for: Callable[[dict], Sequence[str]],
        models: Sequence[str],
        tasks: Sequence[str],
        seeds: Sequence[int],
    ) -> list[dict]:
        """Every (model, task, seed, label) run, in order: zero-shot once per model × task, then per
        seed ``full``, ``salf`` and ``labels_for(salf_record)`` (sweeps depend on SALF's eof).
        """
        out = []
        for model in models:
            for task in tasks:
                out.append(self._logged(model, task, ZERO_SHOT, None))
                for seed in seeds:
                    out.append(self._logged(model, task, "full", seed))  # the savings' reference
                    salf_record = self._logged(model, task, "salf", seed)
                    out.append(salf_record)
                    for label in labels_for(salf_record):
                        if label not in ("full", "salf", ZERO_SHOT):
                            out.append(self._logged(model, task, label, seed))
        return out


def summary(record: dict) -> str:
    """One line of a run's record: score, n, training time, analytic saving, reuse."""
    m, c = record["metrics"], record["cost"]
    text = (
        f"acc {100 * m['accuracy']:.1f} F1 {100 * m['macro_f1']:.1f} (n={m['n']})"
        if "accuracy" in m
        else "not scored (timing repeat)"
    )
    if "wall_s" in c:
        # against the run's own all-blocks count (the table's is against the real `full` run)
        text += f", train {c['wall_s']:.1f} s, analytic saving {100 * c['saving_analytic']:.0f}%"
    return text + (" [reused]" if record.get("reused_from") else "")


__all__ = [
    "EVAL_SEED",
    "FRACTIONS",
    "NEEDS_SALF",
    "ONE_PROCESS_LABELS",
    "PATTERNS",
    "SALF_OPTIONS",
    "overridden_settings",
    "SalfGrid",
    "build_policy",
    "check_label",
    "check_models_tasks",
    "check_salf_kw",
    "finetune_config",
    "flops_of_eof",
    "label_of",
    "policy_spec",
    "run_budget",
    "run_config",
    "run_name",
    "shardable",
    "summary",
    "task_data",
]
