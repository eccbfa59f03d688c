"""SALF experiments: every freezing policy per model × task × seed, and the cost–benefit sweeps.

A *run* is (model, task, policy label, seed): a fresh copy of the model is fine-tuned on
``n_train`` examples of the task under one policy (:func:`semalign_core.salf.run_finetune`) and
scored on a fixed held-out subset (accuracy, macro-F1). One record per run,
``results/<experiment>/<profile>/<model>__<task>__<label>__seed<seed>.json``, holding the score,
the costs (analytic FLOPs and their saving against full fine-tuning of the same batches, training
wall time, policy set-up time, peak memory), the policy's description, the config and provenance.
A valid record with the same config is reused unless ``force`` (that is how a notebook resumes);
the cost–benefit notebook also copies a main-table record whose config is identical instead of
recomputing it.

Policy labels (:func:`policy_spec` turns one into the JSON spec that the config holds):

* the main table (:data:`MAIN_POLICIES`): ``full``, ``salf``, ``freeze_1_4`` / ``freeze_1_2`` /
  ``freeze_3_4``, ``random_matched`` (SALF's trainable depth, seeded random blocks),
  ``logit_lens_ce``, ``block_influence``, ``autofreeze``, ``lisa``, ``lora_all``,
  ``lora_salf_suffix`` (LoRA on SALF's suffix), and ``zero_shot`` (the untrained model, once per
  model × task: does fine-tuning move the score at all?);
* sweeps: ``eof_<k>`` (freeze embeddings + blocks 1..k), ``salf_max<b>`` / ``salf_frac<p>`` /
  ``salf_flops<p>`` (SALF under a budget of b blocks, p % of the blocks, p % of full FT's analytic
  FLOPs), ``salf_per_example_min`` / ``salf_per_example_bucket`` (per-example eof and the padding
  strategy that batches them), ``salf_nocache`` (SALF without the frozen-prefix cache).

Measured savings (wall time, memory) are computed from the records when a table is built, against
the ``full`` record of the same model, task and seed (:mod:`semalign_core.report.salf`), so a
recomputed reference never leaves stale savings behind.

The data: ``n_train`` examples drawn with the seed from the task's training split, and a fixed
(``EVAL_SEED``) subset of ``n_eval`` examples of its labelled test split; a task without a
training split (SST-2: GLUE's test labels are hidden) has both carved, disjoint, from its
evaluation split. Evaluation examples are scored in order of length (less padding; the score does
not depend on the order).
"""

from __future__ import annotations

import copy
import gc
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence


from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.notebook import check_list
from semalign_core.profiles import Profile

MAIN_EXPERIMENT = "salf_main"
COST_EXPERIMENT = "salf_cost_benefit"
VERSION = 1
EVAL_SEED = 1234  # the held-out subset is the same for every seed and policy: seeds vary training only
ZERO_SHOT = "zero_shot"
MAIN_POLICIES = ("full", "salf", "freeze_1_4", "freeze_1_2", "freeze_3_4", "random_matched", "logit_lens_ce",
                 "block_influence", "autofreeze", "lisa", "lora_all", "lora_salf_suffix")
FRACTIONS = {"freeze_1_4": 0.25, "freeze_1_2": 0.5, "freeze_3_4": 0.75}
NEEDS_SALF = ("random_matched", "lora_salf_suffix")  # their spec holds SALF's eof (from its record)
LORA = {"r": 8, "alpha": 16, "lr_scale": 5}  # adapters start at zero (B = 0): they need a larger step
LISA = {"n_active": 2, "interval": 4}
AUTOFREEZE = {"interval": 4, "percentile": 50.0}
SALF_DEFAULTS = {"deviation": "cos_normed", "gain": "drop"}
PATTERNS = ("eof_<k>", "salf_max<b>", "salf_frac<p>", "salf_flops<p>", "salf_per_example_min",
            "salf_per_example_bucket", "salf_nocache")


# --------------------------------------------------------------------------- budgets per profile


@dataclass(frozen=True)
class RunBudget:
    """Data and training of one run at one profile (every policy of a table uses the same).

    Attributes:
        n_train: training examples (seeded subset of the training split).
        n_eval: held-out examples scored (fixed subset, ``EVAL_SEED``).
        epochs, batch_size, lr: the fine-tuning loop's settings (AdamW, label-token loss).
        max_length: prompt tokens kept (from the left; the label cue stays).
        eval_batch_size: evaluation batch size.
        loss: ``label_words`` (cross-entropy over the label words' logits: the decision that is
            scored) or ``label_token`` (over the whole vocabulary); see FinetuneConfig.loss.
    """

    n_train: int
    n_eval: int
    epochs: int
    batch_size: int
    lr: float
    max_length: int
    eval_batch_size: int = 16
    loss: str = "label_words"


@dataclass(frozen=True)
class Defaults:
    """What a notebook runs at one profile unless told otherwise (models None: the profile's
    ``salf_models``)."""

    models: tuple[str, ...] | None
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: RunBudget


DEFAULTS: dict[str, Defaults] = {
    # Tiny random models: a large step so that training visibly moves them.
    "smoke": Defaults(None, ("mpqa",), (0, 1), RunBudget(8, 8, 1, 4, 1e-3, 32, 8)),
    # MPQA: ~9 tokens per prompt, the cheapest sentiment task that fine-tuning moves; sized to ≈ 6–7 min
    # on 2 cores for 3 seeds × 12 policies (README: timings). Gemma-3-270M is a parameter, not a default.
    "cpu": Defaults(("smollm2-135m-instruct",), ("mpqa",), (0, 1, 2), RunBudget(40, 96, 2, 8, 2e-5, 64)),
    # Not run here (no GPU): sized to the splits (SST-2 carves 500 + 300 of its 872 dev examples; CR has
    # 1775 training examples, TREC 500 test examples).
    "gpu-small": Defaults(None, ("sst2", "cr", "mpqa"), (0, 1, 2), RunBudget(500, 300, 2, 16, 3e-5, 128, 32)),
    "paper": Defaults(None, ("cr", "mr", "mpqa", "subj", "trec"), (0, 1, 2),
                      RunBudget(1500, 500, 3, 16, 2e-5, 256, 32)),
}


def defaults(prof: Profile) -> Defaults:
    return DEFAULTS.get(prof.name, DEFAULTS["cpu"])


def run_budget(prof: Profile, **overrides) -> RunBudget:
    """The profile's budget with ``overrides`` (fields of :class:`RunBudget`; None values ignored)."""
    base = defaults(prof).budget
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(base)))
    if unknown:
        raise InvalidParameterError(f"RunBudget has no field(s) {', '.join(unknown)}")
    for name in ("n_train", "n_eval", "epochs", "batch_size", "max_length", "eval_batch_size"):
        value = changes.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidParameterError(f"parameter {name}={value!r} must be an integer >= 1")
    lr = changes.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise InvalidParameterError(f"parameter lr={lr!r} must be a number > 0")
    return replace(base, **changes)


# --------------------------------------------------------------------------- policy labels


def check_label(label: str) -> str:
    """``label`` itself, or a one-line InvalidParameterError naming the valid labels."""
    fixed = (ZERO_SHOT, *MAIN_POLICIES, "salf_per_example_min", "salf_per_example_bucket", "salf_nocache")
    if isinstance(label, str) and (label in fixed or re.fullmatch(r"eof_\d+|salf_(max|frac|flops)\d+", label)):
        return label
    raise InvalidParameterError(f"unknown policy {label!r}; choose from {', '.join(MAIN_POLICIES)}, "
                                f"{ZERO_SHOT} or a pattern {', '.join(PATTERNS)}")


def check_parameters(prof: Profile, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                     policies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                     salf_kw: dict | None = None, seed: int = 0, n_seeds: int | None = None
                     ) -> tuple[tuple, tuple, tuple, tuple]:
    """(models, tasks, policies, seeds), each checked. None means the profile's models and tasks,
    every main-table policy, and ``n_seeds`` (default: the profile's count) seeds from ``seed``."""
    from semalign_core.data import CLASSIFICATION_TASKS
    from semalign_core.models.registry import REGISTRY

    d = defaults(prof)
    if models is None:
        models = d.models or prof.salf_models
    else:
        models = check_list("models", models, REGISTRY, what="model(s)")
    tasks = d.tasks if tasks is None else check_list("tasks", tasks, CLASSIFICATION_TASKS, what="task(s)")
    if policies is None:
        policies = MAIN_POLICIES
    elif isinstance(policies, str) or not isinstance(policies, (list, tuple)) or not policies:
        raise InvalidParameterError(f"parameter policies={policies!r} must be None or a non-empty list")
    policies = tuple(dict.fromkeys(check_label(p) for p in policies))
    if seeds is None:
        seeds = [seed + k for k in range(len(d.seeds) if n_seeds is None else n_seeds)]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InvalidParameterError(f"parameter seeds={seeds!r} must be None or a non-empty list of integers >= 0")
    check_salf_kw(salf_kw)
    return tuple(models), tuple(tasks), policies, tuple(dict.fromkeys(seeds))


def check_salf_kw(salf_kw: dict | None) -> dict:
    from semalign_core.salf import DEVIATIONS, GAINS

    kw = {**SALF_DEFAULTS, **(salf_kw or {})}
    unknown = sorted(set(kw) - set(SALF_DEFAULTS))
    if unknown:
        raise InvalidParameterError(f"SALF options are {', '.join(SALF_DEFAULTS)}; got {', '.join(unknown)}")
    if kw["deviation"] not in DEVIATIONS:
        raise InvalidParameterError(f"deviation must be one of {', '.join(DEVIATIONS)}, got {kw['deviation']!r}")
    if kw["gain"] not in GAINS:
        raise InvalidParameterError(f"gain must be one of {', '.join(GAINS)}, got {kw['gain']!r}")
    return kw


def policy_spec(label: str, num_layers: int | None = None, seed: int = 0, salf_eof: int | None = None,
                salf_kw: dict | None = None) -> dict[str, Any]:
    """The JSON description of policy ``label`` (what the run's config holds and its hash covers).

    ``random_matched`` and ``lora_salf_suffix`` need ``num_layers`` and SALF's eof of the same
    model, task and seed.
    """
    check_label(label)
    salf = {"kind": "salf", **check_salf_kw(salf_kw)}
    if label in NEEDS_SALF and (salf_eof is None or num_layers is None):
        raise InvalidParameterError(f"policy {label!r} needs SALF's eof and the number of layers")
    simple = {
        ZERO_SHOT: {"kind": "none"}, "full": {"kind": "full"}, "salf": salf,
        "logit_lens_ce": {"kind": "logit_lens_ce"}, "block_influence": {"kind": "block_influence"},
        "autofreeze": {"kind": "autofreeze", **AUTOFREEZE}, "lisa": {"kind": "lisa", **LISA, "seed": seed},
        "lora_all": {"kind": "lora", "eof": 0, **LORA},
        "salf_per_example_min": {**salf, "per_example": True, "padding": "min"},
        "salf_per_example_bucket": {**salf, "per_example": True, "padding": "bucket"},
        "salf_nocache": {**salf, "cache_prefix": False},
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
    budget = {"salf_max": {"max_trainable": int(value)}, "salf_frac": {"fraction": int(value) / 100},
              "salf_flops": {"flops_fraction": int(value) / 100}}[kind]
    return {**salf, "budget": budget}


def build_policy(label: str, spec: dict, model, max_length: int):
    """The :class:`~semalign_core.salf.policies.Policy` of ``spec`` (named ``label``)."""
    from semalign_core.salf import Budget, make_policy

    kw = {k: v for k, v in spec.items() if k not in ("kind", "eof_from", "cache_prefix", "lr_scale")}
    if "budget" in kw:
        kw["budget"] = Budget(**kw["budget"])
        if kw["budget"].flops_fraction is not None:
            kw["flops_of_eof"], kw["full_flops"] = flops_of_eof(model, max_length)
    policy = make_policy(spec["kind"], **kw)
    policy.name = label
    return policy


def flops_of_eof(model, seq_len: int):
    """(eof → analytic FLOPs of one training step on one ``seq_len`` sequence, full FT's), the
    reference a FLOPs budget compares with (no prefix cache: the first epoch's cost)."""
    from semalign_core import costs

    shape = costs.model_shape(model)
    L = shape.num_layers

    def step(eof: int) -> float:
        spec = costs.TrainableSpec(trained_blocks=frozenset(range(eof, L)))
        return costs.step_flops(shape, spec, seq_len, seq_len, 1)["total"]

    full = costs.TrainableSpec(trained_blocks=frozenset(range(L)), embeddings=True, head=True)
    return step, costs.step_flops(shape, full, seq_len, seq_len, 1)["total"]


# --------------------------------------------------------------------------- data


def _splits(task: str) -> tuple[str | None, str]:
    """(training split or None when it must be carved from the evaluation split, evaluation split)."""
    from semalign_core.data import CLASSIFICATION_TASKS

    labeled = CLASSIFICATION_TASKS[task].labeled_splits
    evaluation = next(s for s in ("test", "dev", "dev_subsample") if s in labeled)
    return ("train" if "train" in labeled else None), evaluation


def task_data(task: str, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict], dict, dict]:
    """(train records, eval records sorted by length, data sources, description)."""
    from semalign_core.data import load_classification, select_subset

    train_split, eval_split = _splits(task)
    full_eval = load_classification(task, eval_split)
    if n_eval > len(full_eval):
        raise InvalidParameterError(f"n_eval={n_eval} exceeds the {len(full_eval)} examples of {task}/{eval_split}")
    keep = set(select_subset(list(range(len(full_eval))), n_eval, EVAL_SEED, f"{task}/{eval_split}"))
    evaluation = [r for i, r in enumerate(full_eval.records) if i in keep]
    sources = dict(full_eval.sources)
    if train_split is None:
        pool, where = [r for i, r in enumerate(full_eval.records) if i not in keep], f"{task}/{eval_split} minus eval"
    else:
        split = load_classification(task, train_split)
        pool, where = split.records, f"{task}/{train_split}"
        sources.update(split.sources)
    if n_train > len(pool):
        raise InvalidParameterError(f"n_train={n_train} exceeds the {len(pool)} examples of {where}")
    train = select_subset(pool, n_train, seed, where)
    evaluation.sort(key=lambda r: (len(r["text"]), r["text"]))
    info = {"train_split": train_split or f"{eval_split} (carved, disjoint from eval)", "eval_split": eval_split,
            "n_train": n_train, "n_eval": n_eval, "eval_seed": EVAL_SEED}
    return train, evaluation, sources, info


# --------------------------------------------------------------------------- one run


def run_name(model: str, task: str, label: str, seed: int | None) -> str:
    return f"{model}__{task}__{label}" if label == ZERO_SHOT else f"{model}__{task}__{label}__seed{seed}"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def finetune_config(budget: RunBudget, seed: int, spec: dict):
    from semalign_core.salf import FinetuneConfig

    lr = budget.lr * spec.get("lr_scale", 1)
    return FinetuneConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=lr,
                          max_length=budget.max_length, eval_batch_size=budget.eval_batch_size, seed=seed,
                          loss=budget.loss,
                          cache_prefix=spec.get("cache_prefix", True))


def run_config(prof: Profile, model: str, task: str, label: str, seed: int | None, spec: dict,
               budget: RunBudget) -> dict[str, Any]:
    """What determines a run's numbers and timings (its hash decides whether a record is reused)."""
    import torch

    _, eval_split = _splits(task)
    config = {"profile": prof.name, "model": model, "task": task, "policy": label, "spec": spec, "seed": seed,
              "data": {"n_train": budget.n_train, "n_eval": budget.n_eval, "eval_seed": EVAL_SEED,
                       "eval_split": eval_split},
              "dtype": prof.dtype, "device": _device(), "threads": torch.get_num_threads(), "version": VERSION}
    if label == ZERO_SHOT:
        config["eval"] = {"max_length": budget.max_length, "batch_size": budget.eval_batch_size}
    else:
        config["finetune"] = asdict(finetune_config(budget, seed, spec))
    return config


class ModelPool:
    """Each model loaded at most once (and only when a run needs computing); runs train copies."""

    def __init__(self, prof: Profile):
        self.prof = prof
        self.loaded: dict[str, Any] = {}

    def get(self, name: str):
        if name not in self.loaded:
            from semalign_core.models.registry import load_model

            self.loaded[name] = load_model(name, dtype=self.prof.dtype, device=_device(), verbose=False)
        return self.loaded[name]

    def fresh(self, name: str):
        lm = self.get(name)
        return copy.deepcopy(lm.model), lm.tokenizer

    def num_layers(self, name: str) -> int:
        return int(self.get(name).stats["layers"])


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


def _compute(pool: ModelPool, model: str, task: str, label: str, seed: int | None, spec: dict,
             budget: RunBudget) -> tuple[dict, dict, dict, dict, dict]:
    """Train (unless zero-shot) and evaluate; (metrics, cost, extra fields, sources, model info)."""
    from semalign_core.data import CLASSIFICATION_TASKS
    from semalign_core.salf import evaluate, label_token_ids, run_finetune

    train, evaluation, sources, data_info = task_data(task, budget.n_train, budget.n_eval, seed or 0)
    net, tokenizer = pool.fresh(model)
    step, full = flops_of_eof(net, budget.max_length)
    info = {"layers": pool.num_layers(model), "data": data_info,
            "flops_fraction_of_eof": [step(e) / full for e in range(pool.num_layers(model) + 1)]}
    config = finetune_config(budget, seed or 0, spec)
    t0 = time.perf_counter()
    if spec["kind"] == "none":
        tokens = label_token_ids(tokenizer, CLASSIFICATION_TASKS[task].label_words)
        metrics = evaluate(net, tokenizer, evaluation, tokens, task, config)
        return metrics, {"eval_s": time.perf_counter() - t0}, {}, sources, info
    policy = build_policy(label, spec, net, budget.max_length)
    _timed_setup(policy)
    result = run_finetune(net, tokenizer, train, evaluation, policy, config, task=task)
    call_s = time.perf_counter() - t0
    record = result.as_record()
    cost = {**record["cost"], "setup_s": policy.setup_s, "call_s": call_s,
            "eval_s": call_s - policy.setup_s - record["cost"]["wall_s"]}
    extra = {"policy": record["policy"], "losses": record["losses"], "epoch_losses": record["epoch_losses"],
             "history": record["history"]}
    del result, net
    gc.collect()
    return record["metrics"], cost, extra, sources, info


def run_one(prof: Profile, model: str, task: str, label: str, seed: int = 0, force: bool = False,
            budget: RunBudget | None = None, experiment: str = MAIN_EXPERIMENT, pool: ModelPool | None = None,
            salf_kw: dict | None = None, reuse_from: Sequence[str] = ()) -> dict[str, Any]:
    """One run's record: reused when valid (here, or identical in ``reuse_from``), else computed.

    ``random_matched`` and ``lora_salf_suffix`` first get (or compute) SALF's record of the same
    model, task and seed, whose eof they use.
    """
    from semalign_core.records import load_valid_record, provenance, write_record

    check_label(label)
    budget = budget or run_budget(prof)
    pool = pool or ModelPool(prof)
    seed = None if label == ZERO_SHOT else seed
    num_layers = salf_eof = None
    if label in NEEDS_SALF:
        # Not forced: run_grid has just run (or forced) SALF; a lone forced run reuses SALF's record.
        salf = run_one(prof, model, task, "salf", seed, False, budget, experiment, pool, salf_kw, reuse_from)
        num_layers, salf_eof = salf["model_info"]["layers"], salf["policy"]["eof"]
    spec = policy_spec(label, num_layers, seed or 0, salf_eof, salf_kw)
    config = run_config(prof, model, task, label, seed, spec, budget)
    run = run_name(model, task, label, seed)
    if not force:
        if (record := load_valid_record(experiment, prof.name, run, config)) is not None:
            return record
        for other in reuse_from:
            if (record := load_valid_record(other, prof.name, run, config)) is not None:
                keep = {k: v for k, v in record.items() if k not in ("experiment", "profile", "run", "config",
                                                                      "config_hash", "metrics", "cost", "provenance")}
                write_record(experiment, prof.name, run, config, record["metrics"], record["cost"],
                             record["provenance"], **{**keep, "reused_from": f"{other}/{prof.name}/{run}.json"})
                return load_valid_record(experiment, prof.name, run, config)
    metrics, cost, extra, sources, info = _compute(pool, model, task, label, seed, spec, budget)
    write_record(experiment, prof.name, run, config, metrics, cost,
                 provenance(seed=seed, data_sources=sources, device=_device(), dtype=prof.dtype),
                 model=model, task=task, policy_label=label, seed=seed, model_info=info, **extra)
    return load_valid_record(experiment, prof.name, run, config)


def _summary(record: dict) -> str:
    m, c = record["metrics"], record["cost"]
    text = f"acc {100 * m['accuracy']:.1f} F1 {100 * m['macro_f1']:.1f} (n={m['n']})"
    if "wall_s" in c:
        text += f", train {c['wall_s']:.1f} s, analytic saving {100 * c['saving_analytic']:.0f}%"
    return text + (" [reused]" if record.get("reused_from") else "")


def run_grid(prof: Profile, labels_for, models: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
             force: bool = False, budget: RunBudget | None = None, experiment: str = MAIN_EXPERIMENT,
             salf_kw: dict | None = None, reuse_from: Sequence[str] = (), verbose: bool = True,
             pool: ModelPool | None = None) -> list[dict]:
    """Every (model, task, seed, label) run; ``labels_for(salf_record)`` gives the labels of one
    (model, task, seed) once its ``full`` and ``salf`` runs exist (sweeps depend on SALF's eof)."""
    budget = budget or run_budget(prof)
    pool = pool or ModelPool(prof)
    out = []

    def one(model, task, label, seed):
        t0 = time.perf_counter()
        record = run_one(prof, model, task, label, seed, force, budget, experiment, pool, salf_kw, reuse_from)
        if verbose:
            print(f"{model} {task} seed {seed} {label:>24}: {_summary(record)} [{time.perf_counter() - t0:.1f} s]",
                  flush=True)
        out.append(record)
        return record

    for model in models:
        for task in tasks:
            one(model, task, ZERO_SHOT, None)
            for seed in seeds:
                one(model, task, "full", seed)  # first: the reference of the measured savings
                salf = one(model, task, "salf", seed)
                for label in labels_for(salf):
                    if label not in ("full", "salf", ZERO_SHOT):
                        one(model, task, label, seed)
    return out


def run_main_table(prof: Profile, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                   policies: Sequence[str] | None = None, seeds: Sequence[int] | None = None, force: bool = False,
                   budget: RunBudget | None = None, salf_kw: dict | None = None, verbose: bool = True,
                   seed: int = 0) -> list[dict]:
    """The main table's runs (reused when valid): zero-shot, then ``full``, ``salf`` and the other
    ``policies`` (default :data:`MAIN_POLICIES`) per model × task × seed (default: the profile's
    number of seeds, from ``seed``)."""
    models, tasks, policies, seeds = check_parameters(prof, models, tasks, policies, seeds, salf_kw, seed)
    return run_grid(prof, lambda _: policies, models, tasks, seeds, force, budget, MAIN_EXPERIMENT, salf_kw,
                    verbose=verbose)


# --------------------------------------------------------------------------- cost-benefit sweeps


def sweep_labels(salf_record: dict) -> dict[str, list[str]]:
    """The cost–benefit runs of one (model, task, seed), grouped by the question they answer,
    from SALF's record there (its eof, the model's depth L and analytic FLOPs per eof).

    depth: fixed eof 0, ¼L, ½L, ¾L, ⅞L, L−1 (the main table's fractions reused) beside SALF and
    full FT.
    budget: SALF under a budget of one block and of half its trainable depth d (only budgets that
    bind: one that does not leaves SALF unchanged), and under a FLOPs budget halfway between SALF's
    analytic cost per step and the cheapest possible (eof = L−1). A ``salf_frac<p>`` budget is not
    run: floor(p·L) blocks is the same eof floor as ``salf_max``. padding: per-example eof under
    both strategies. cache: SALF without the prefix cache. lora: LoRA on all layers and on SALF's
    suffix.
    """
    info = salf_record["model_info"]
    L, eof = info["layers"], salf_record["policy"]["eof"]
    d = L - eof
    depth = ["full", "eof_0", "freeze_1_4", "freeze_1_2", "freeze_3_4", f"eof_{round(7 * L / 8)}", f"eof_{L - 1}",
             "salf"]
    depth = list(dict.fromkeys(depth))
    budget = [f"salf_max{b}" for b in sorted({1, max(1, d // 2)}) if b < d]
    curve = info["flops_fraction_of_eof"]
    pct = math.ceil(50 * (curve[eof] + curve[L - 1]))
    if curve[L - 1] <= pct / 100 < curve[eof]:
        budget.append(f"salf_flops{pct}")
    return {"depth": depth, "budget": budget, "padding": ["salf_per_example_min", "salf_per_example_bucket"],
            "cache": ["salf_nocache"], "lora": ["lora_all", "lora_salf_suffix"]}


SWEEP_GROUPS = ("depth", "budget", "padding", "cache", "lora")


def run_cost_benefit(prof: Profile, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                     seeds: Sequence[int] | None = None, groups: Sequence[str] | None = None, force: bool = False,
                     budget: RunBudget | None = None, salf_kw: dict | None = None, verbose: bool = True,
                     seed: int = 0) -> list[dict]:
    """The cost–benefit sweeps (:func:`sweep_labels`, ``groups`` of them, default all) per model ×
    task × seed (default: ``seed`` alone); a run whose config is identical to a main-table record
    is copied from it, not recomputed."""
    models, tasks, _, seeds = check_parameters(prof, models, tasks, None, seeds, salf_kw, seed, n_seeds=1)
    groups = check_list("groups", groups, SWEEP_GROUPS, what="group(s)")

    def labels_for(salf: dict) -> list[str]:
        labels = sweep_labels(salf)
        return list(dict.fromkeys(lab for g in groups for lab in labels[g]))

    return run_grid(prof, labels_for, models, tasks, seeds, force, budget, COST_EXPERIMENT, salf_kw,
                    reuse_from=(MAIN_EXPERIMENT,), verbose=verbose)


__all__ = [
    "COST_EXPERIMENT", "DEFAULTS", "Defaults", "EVAL_SEED", "MAIN_EXPERIMENT", "MAIN_POLICIES", "ModelPool",
    "RunBudget", "SWEEP_GROUPS", "ZERO_SHOT", "build_policy", "check_label", "check_parameters", "defaults",
    "flops_of_eof", "policy_spec", "run_budget", "run_config", "run_cost_benefit", "run_grid", "run_main_table",
    "run_name", "run_one", "sweep_labels", "task_data",
]
