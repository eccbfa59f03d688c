"""SemAlign Table 1: knowledge transfer into the target, evaluated on four benchmarks.

One cell of the table is (method, transfer task, seed): a fresh copy of the profile's target is
trained by ``method`` (:data:`semalign_core.transfer.registry.METHODS`) on the transfer task's ``train``
split (attribution reads ``extract``), then evaluated greedily on the matching benchmark
(:data:`EVAL_TASKS`). The rows ``source`` and ``target`` evaluate the untransferred models.

Every cell is one record ``results/semalign_transfer/<profile>/<method>__<task>__seed<seed>.json``
(metric, n, transfer and evaluation cost, config, provenance); a valid record with the same config
is reused unless ``force``, which is how an interrupted notebook resumes. :func:`table` rebuilds
the table from the records alone (mean ± spread over seeds, with the n behind each number).

Budgets per profile (:data:`TRANSFER_BUDGETS`) bound the training data and steps and the
evaluation subset; at ``smoke`` the numbers are meaningless (random tiny models).

Settings (:data:`SETTINGS`): ``"table1"`` is the above. ``"finetuned"`` (Table 2) transfers from a
*fine-tuned teacher* (:mod:`semalign_core.experiments.teachers`: below ``paper`` the profile's source
fine-tuned on the task; at ``paper`` the hub code teachers) and adds the classification task
``sst2``: records built from the task's training pool in the evaluation's own plain format
(:mod:`semalign_core.data.cls_transfer`), evaluated by label-word log-likelihood on the held-out
split (:data:`CLS_BUDGETS`). Its records go to ``results/semalign_finetuned_teacher/<profile>/
<teacher>__<method>__<task>__seed<seed>.json``; the evaluation subset is fixed across seeds
(``eval_seed``), so the untrained rows ``teacher`` and ``target`` are evaluated once
(``<teacher>__<row>__<task>.json``) and the seeds vary the training only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.notebook import check_list
from semalign_core.profiles import Profile

EXPERIMENT = "semalign_transfer"
EVAL_TASKS: dict[str, str] = {"gsm": "semalign_gsm8k", "mmlu": "semalign_mmlu",
                              "humaneval": "semalign_humaneval", "mbpp": "semalign_mbpp"}
COLUMNS: dict[str, str] = {"mmlu": "MMLU", "gsm": "GSM8K", "humaneval": "HumanEval", "mbpp": "MBPP"}  # Table 1 order
CLS_TASKS: dict[str, str] = {"sst2": "semalign_cls_sst2"}  # classification transfer tasks (plain format)
METRICS: dict[str, str] = {"semalign_gsm8k": "exact_match", "semalign_mmlu": "acc",
                           "semalign_humaneval": "pass@1", "semalign_mbpp": "pass@1", "semalign_cls_sst2": "acc"}
CHANCE = {"mmlu": 25.0}  # % (4-way multiple choice); the others have no chance level above 0
REFERENCE_ROWS = ("source", "target")  # evaluated without training
TRAIN_SPLIT, ATTRIBUTION_SPLIT = "train", "extract"
VERSION = 1


@dataclass(frozen=True)
class TransferSetting:
    """One table of transfer results.

    Attributes:
        name: "table1" (profile source → target) or "finetuned" (fine-tuned teacher → target).
        experiment: results folder (``results/<experiment>/<profile>/``).
        tasks: task key → lm-eval task, in column order.
        columns: task key → column title.
        reference_rows: the untransferred rows (the source or teacher, then the target).
        chance: chance level (%) per task key, shown under the table.
        published: key of the published table in ``results/paper/semalign_published.json``.
        title: "Table 1" / "Table 2".
    """

    name: str
    experiment: str
    tasks: dict[str, str]
    columns: dict[str, str]
    reference_rows: tuple[str, str]
    chance: dict[str, float]
    published: str
    title: str


SETTINGS: dict[str, TransferSetting] = {
    "table1": TransferSetting("table1", EXPERIMENT, EVAL_TASKS, COLUMNS, REFERENCE_ROWS, CHANCE, "table1_transfer",
                              "Table 1"),
    "finetuned": TransferSetting(
        "finetuned", "semalign_finetuned_teacher",
        {"sst2": CLS_TASKS["sst2"], "humaneval": EVAL_TASKS["humaneval"], "mbpp": EVAL_TASKS["mbpp"]},
        {"sst2": "SST-2", "humaneval": "HumanEval", "mbpp": "MBPP"}, ("teacher", "target"), {"sst2": 50.0},
        "table2_finetuned_teachers", "Table 2"),
}


def get_setting(name: str) -> TransferSetting:
    if name not in SETTINGS:
        raise InvalidParameterError(f"unknown setting {name!r}; choose one of {', '.join(SETTINGS)}")
    return SETTINGS[name]


@dataclass(frozen=True)
class TransferBudget:
    """How much transfer training and evaluation one cell uses at one profile.

    Attributes:
        n_train: ``train`` examples the method trains on (None: the whole split).
        n_extract: ``extract`` examples for attribution (at most the split's size).
        max_length: tokens per training conversation.
        batch_size, micro_batch_size: training batch (SemAlign uses ``batch_size``).
        epochs: epochs of the epoch-based methods (seeking, sft, output_kl, hidden_distill).
        max_steps: cap on optimizer steps of the step-based methods (None: no cap).
        steps_per_stage: SemAlign steps per target layer.
        eval_limit: benchmark examples evaluated (seeded subset; None: the whole test set).
        max_new_tokens: greedy generation length of GSM8K / HumanEval / MBPP.
        eval_batch_size: evaluation batch size.
        prompt_style: how the methods render training records ("transfer": LaTen's chat tags;
            "plain": the classification evaluation's own text).
        eval_seed: seed of the evaluation subset (None: the cell's seed; an integer fixes one
            subset for every seed, so seeds vary the training only).
        method_config: per method, config fields that differ from the method's defaults at this
            budget (e.g. a learning rate sized to few steps); recorded in each cell's config.
    """

    n_train: int | None
    n_extract: int
    max_length: int
    batch_size: int
    micro_batch_size: int
    epochs: int
    max_steps: int | None
    steps_per_stage: int
    eval_limit: int | None
    max_new_tokens: int
    eval_batch_size: int
    prompt_style: str = "transfer"
    eval_seed: int | None = None
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)

    def method_overrides(self, method: str, seed: int) -> dict[str, Any]:
        """The budget as fields of ``method``'s config (only those it has)."""
        from dataclasses import fields

        from semalign_core.transfer.registry import CONFIGS

        wanted = {"max_length": self.max_length, "batch_size": self.batch_size,
                  "micro_batch_size": self.micro_batch_size, "epochs": self.epochs, "max_steps": self.max_steps,
                  "steps_per_stage": self.steps_per_stage, "attribution_batch_size": self.micro_batch_size,
                  "prompt_style": self.prompt_style, "seed": seed, "progress": False,
                  **self.method_config.get(method, {})}
        known = {f.name for f in fields(CONFIGS[method])}
        return {k: v for k, v in wanted.items() if k in known}


TRANSFER_BUDGETS: dict[str, TransferBudget] = {
    "smoke": TransferBudget(n_train=4, n_extract=2, max_length=48, batch_size=2, micro_batch_size=2, epochs=1,
                            max_steps=2, steps_per_stage=1, eval_limit=4, max_new_tokens=32, eval_batch_size=4),
    # cpu: sized so that all four tasks at one seed take ~15 min on 2 cores (measured: a GSM8K
    # evaluation of n=20 at 128 new tokens takes 30 s on the derived target, 60 s on the source).
    "cpu": TransferBudget(n_train=8, n_extract=4, max_length=192, batch_size=4, micro_batch_size=4, epochs=1,
                          max_steps=None, steps_per_stage=1, eval_limit=20, max_new_tokens=96, eval_batch_size=10),
    "gpu-small": TransferBudget(n_train=1000, n_extract=64, max_length=512, batch_size=16, micro_batch_size=4,
                                epochs=1, max_steps=None, steps_per_stage=16, eval_limit=None, max_new_tokens=512,
                                eval_batch_size=16),
    "paper": TransferBudget(n_train=None, n_extract=64, max_length=512, batch_size=64, micro_batch_size=4, epochs=3,
                            max_steps=None, steps_per_stage=32, eval_limit=None, max_new_tokens=512,
                            eval_batch_size=16),
}


# Classification transfer (sst2): short texts (median 31 tokens, max 67 with the template), one
# supervised token (the label word), evaluation by log-likelihood on a fixed held-out subset.
# Full-weight methods get lr 3e-4 at cpu (Seeking's): at 16 optimizer steps their default lrs
# (2e-5, 3e-5) leave the target where it started (measured). Seeking (LoRA, 3e-4) and LaTen (its
# spec) keep theirs. gpu-small (≈70 steps, not run yet) uses 1e-4; paper the methods' defaults.
_FULL_WEIGHT = ("semalign", "sft", "output_kl", "hidden_distill")
_CLS_LR = {m: {"lr": 3e-4} for m in _FULL_WEIGHT}
CLS_BUDGETS: dict[str, TransferBudget] = {
    "smoke": TransferBudget(n_train=8, n_extract=4, max_length=64, batch_size=4, micro_batch_size=4, epochs=1,
                            max_steps=2, steps_per_stage=1, eval_limit=8, max_new_tokens=1, eval_batch_size=8,
                            prompt_style="plain", eval_seed=0, method_config={m: {"lr": 1e-3} for m in _CLS_LR}),
    "cpu": TransferBudget(n_train=64, n_extract=4, max_length=64, batch_size=4, micro_batch_size=4, epochs=1,
                          max_steps=None, steps_per_stage=4, eval_limit=200, max_new_tokens=1, eval_batch_size=32,
                          prompt_style="plain", eval_seed=0, method_config=_CLS_LR),
    "gpu-small": TransferBudget(n_train=None, n_extract=64, max_length=96, batch_size=16, micro_batch_size=16,
                                epochs=2, max_steps=None, steps_per_stage=8, eval_limit=None, max_new_tokens=1,
                                eval_batch_size=32, prompt_style="plain", eval_seed=0,
                                method_config={m: {"lr": 1e-4} for m in _FULL_WEIGHT}),
    "paper": TransferBudget(n_train=None, n_extract=64, max_length=96, batch_size=64, micro_batch_size=8, epochs=3,
                            max_steps=None, steps_per_stage=16, eval_limit=None, max_new_tokens=1,
                            eval_batch_size=32, prompt_style="plain", eval_seed=0),
}


# The paper's per-task settings (SemAlign Tables 4-5) at `paper`: alignment steps per stage and
# align size (Table 4: 2/4/3/8 and 32/64/48/128, lr 3e-5 = SemAlignConfig's default); training
# epochs, train size and lr of the methods that train on `train` (Table 5: 5/5/3/5, 1000/1000/1000/
# 300, 3e-4/3e-4/3e-5/3e-4). "align size" is read as the examples attribution/alignment sees.
_TABLE5_LR_METHODS = ("seeking", "sft", "output_kl", "hidden_distill")
PAPER_TASK_BUDGETS: dict[str, dict[str, Any]] = {
    task: {"steps_per_stage": steps, "n_extract": align, "epochs": epochs, "n_train": n_train,
           "method_config": {m: {"lr": lr} for m in _TABLE5_LR_METHODS}}
    for task, steps, align, epochs, n_train, lr in (("mmlu", 2, 32, 5, 1000, 3e-4), ("gsm", 4, 64, 5, 1000, 3e-4),
                                                     ("humaneval", 3, 48, 3, 1000, 3e-5), ("mbpp", 8, 128, 5, 300, 3e-4))
}
TASK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER_TASK_BUDGETS}


def transfer_budget(prof: Profile, task: str | None = None, **overrides) -> TransferBudget:
    """The profile's budget for ``task`` (classification tasks: :data:`CLS_BUDGETS`, others and None:
    :data:`TRANSFER_BUDGETS`) with ``overrides`` (fields of :class:`TransferBudget`; None values
    are ignored)."""
    budgets = CLS_BUDGETS if task in CLS_TASKS else TRANSFER_BUDGETS
    base = budgets.get(prof.name, budgets["cpu"])
    if task not in CLS_TASKS:
        base = replace(base, **TASK_BUDGETS.get(prof.name, {}).get(task, {}))
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(base)))
    if unknown:
        raise InvalidParameterError(f"TransferBudget has no field(s) {', '.join(unknown)}")
    return replace(base, **changes)


# --------------------------------------------------------------------------- parameters


def check_parameters(methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                     seed: int = 0, seeds: Sequence[int] | None = None, setting: str = "table1",
                     profile: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """One-line InvalidParameterError unless every method, task and seed is valid.

    ``methods``/``tasks`` None mean all (:data:`METHODS`; the setting's tasks, and for
    ``setting="finetuned"`` with a ``profile`` only the tasks that profile has teachers for);
    ``seeds`` None means ``[seed]``. Returns (methods, tasks, seeds), duplicates dropped, order kept.
    """
    from semalign_core.transfer.registry import METHODS

    s = get_setting(setting)
    methods = check_list("methods", methods, METHODS)
    allowed = tuple(s.tasks)
    if setting == "finetuned" and profile is not None:
        from semalign_core.experiments.teachers import TEACHERS

        allowed = tuple(t for t in s.tasks if t in TEACHERS.get(profile, {}))
        stray = [t for t in (tasks or ()) if t in s.tasks and t not in allowed]
        if stray:
            raise InvalidParameterError(f"parameter tasks: profile {profile!r} has no fine-tuned teacher for "
                                        f"{stray}; tasks with teachers: {', '.join(allowed) or 'none'}")
    tasks = check_list("tasks", tasks, allowed)
    seeds = [seed] if seeds is None else seeds
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InvalidParameterError(f"parameter seeds={seeds!r} must be None or a non-empty list of integers >= 0")
    return methods, tasks, tuple(dict.fromkeys(seeds))


# --------------------------------------------------------------------------- one cell


def run_name(method: str, task: str, seed: int | None, teacher: str | None = None) -> str:
    """``<method>__<task>__seed<seed>``; without the seed part for seed-independent rows, and
    prefixed by ``<teacher>__`` in the fine-tuned-teacher setting."""
    name = f"{method}__{task}" if seed is None else f"{method}__{task}__seed{seed}"
    return name if teacher is None else f"{teacher}__{name}"


def row_seed(setting: str, method: str, seed: int, budget: TransferBudget) -> int | None:
    """The seed a row's record carries: None for an untrained row whose evaluation subset is fixed
    (``budget.eval_seed``): it is deterministic, so it is evaluated once for all seeds."""
    if method in get_setting(setting).reference_rows and budget.eval_seed is not None:
        return None
    return seed


def _eval_config(task: str, budget: TransferBudget, seed: int | None) -> dict[str, Any]:
    if task in CLS_TASKS:
        from semalign_core.data.cls_transfer import eval_split

        return {"limit": budget.eval_limit, "seed": budget.eval_seed, "split": eval_split(task),
                "decoding": "loglikelihood", "prompt_style": "plain", "batch_size": budget.eval_batch_size}
    config = {"limit": budget.eval_limit, "max_new_tokens": budget.max_new_tokens, "decoding": "greedy",
              "prompt_style": "transfer", "batch_size": budget.eval_batch_size}
    if budget.eval_seed is not None:
        config["seed"] = budget.eval_seed
    return config


def cell_config(prof: Profile, method: str, task: str, seed: int | None, budget: TransferBudget,
                setting: str = "table1", teacher: str | None = None,
                method_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What determines a cell's numbers (its hash decides whether a stored record is reused).

    ``method_config``: config fields of the method beyond the budget's (ablations)."""
    s = get_setting(setting)
    config = {"profile": prof.name, "method": method, "task": task, "eval_task": s.tasks[task],
              "seed": seed, "source": prof.semalign_source, "target": prof.semalign_target, "dtype": prof.dtype,
              "eval": _eval_config(task, budget, seed), "version": VERSION}
    if setting != "table1":
        from semalign_core.experiments.teachers import teacher_identity

        config["setting"] = setting
        config["teacher"] = teacher_identity(prof.name, task, teacher)
    if method not in s.reference_rows:
        from semalign_core.transfer.registry import make_config

        cfg = make_config(method, None, **{**budget.method_overrides(method, seed), **(method_config or {})})
        identity = cfg.identity() if hasattr(cfg, "identity") else asdict(cfg)
        identity = {k: v for k, v in identity.items() if k not in ("progress", "checkpoint_dir")}
        train_split, attr_split = ((TRAIN_SPLIT, ATTRIBUTION_SPLIT) if task not in CLS_TASKS
                                   else (f"{task}-pool/train", f"{task}-pool/extract"))
        config["transfer"] = {"train_split": train_split, "n_train": budget.n_train,
                              "attribution_split": attr_split, "n_extract": budget.n_extract,
                              "method_config": json.loads(json.dumps(identity, default=str))}
    return config


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(name: str, prof: Profile):
    from semalign_core.models.registry import load_model

    return load_model(name, dtype=prof.dtype, device=_device(), verbose=False)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def transfer_data(task: str, budget: TransferBudget, seed: int):
    """(train Split, extract Split) of a transfer task (LaTen splits) or a classification task (pool)."""
    if task in CLS_TASKS:
        from semalign_core.data.cls_transfer import load_cls_transfer as load
        parts = ("train", "extract")
    else:
        from semalign_core.data import load_transfer as load
        parts = (TRAIN_SPLIT, ATTRIBUTION_SPLIT)
    train = load(task, parts[0], limit=budget.n_train, seed=seed)
    extract_all = load(task, parts[1])
    extract = load(task, parts[1], limit=min(budget.n_extract, len(extract_all)), seed=seed)
    return train, extract


def _evaluate(model, tokenizer, task: str, eval_task: str, budget: TransferBudget, seed: int) -> dict:
    from semalign_core.evaluation.harness import evaluate

    eval_seed = seed if budget.eval_seed is None else budget.eval_seed
    if task in CLS_TASKS:
        from semalign_core.data.cls_transfer import eval_task_options

        return evaluate(model, [eval_task], limit=budget.eval_limit, seed=eval_seed,
                        batch_size=budget.eval_batch_size, prompt_style="plain", tokenizer=tokenizer,
                        task_options=eval_task_options(task))[eval_task]
    return evaluate(model, [eval_task], limit=budget.eval_limit, seed=eval_seed, batch_size=budget.eval_batch_size,
                    prompt_style="transfer", max_new_tokens=budget.max_new_tokens, temperature=0.0,
                    tokenizer=tokenizer)[eval_task]


def plan_json(plan: dict[int, list[tuple[int, float]]]) -> dict[str, list[list[float]]]:
    """An interpolation plan (target layer → [(source layer, weight)]) as JSON-able data."""
    return {str(j): [[int(s), round(float(w), 6)] for s, w in mix] for j, mix in sorted(plan.items())}


def _teacher_eval(report: dict | None, budget: TransferBudget) -> dict | None:
    """The teacher's own after-fine-tuning evaluation when it used this cell's protocol (reused)."""
    if not report:
        return None
    recipe, after = report["recipe"], report["report"]["after"]
    same = (recipe["eval_limit"] == budget.eval_limit and recipe["eval_batch_size"] == budget.eval_batch_size
            and budget.eval_seed == 0)
    return after if same else None


def run_cell(prof: Profile, method: str, task: str, seed: int = 0, force: bool = False,
             budget: TransferBudget | None = None, setting: str = "table1", teacher: str | None = None,
             method_config: dict[str, Any] | None = None, experiment: str | None = None,
             run: str | None = None, config_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One cell: train a fresh target with ``method`` on ``task`` (or evaluate a reference row as it
    is) and evaluate it; returns the (new or reused) record.

    ``setting="finetuned"``: the source is ``teacher`` (default: the profile's first teacher of
    ``task``, :mod:`semalign_core.experiments.teachers`). ``method_config``, ``experiment``, ``run``,
    ``config_extra``: method config overrides, where the record goes (default: the setting's
    folder and name) and extra config keys, also stored at the record's top level (ablations)."""
    from semalign_core.transfer.registry import METHODS
    from semalign_core.records import load_valid_record, provenance, write_record

    s = get_setting(setting)
    if method not in (*s.reference_rows, *METHODS):
        raise InvalidParameterError(f"unknown method {method!r}; choose one of "
                                    f"{', '.join((*s.reference_rows, *METHODS))}")
    if task not in s.tasks:
        raise InvalidParameterError(f"unknown transfer task {task!r}; choose one of {', '.join(s.tasks)}")
    if setting == "table1" and teacher is not None:
        raise InvalidParameterError("teacher is a parameter of setting='finetuned' only")
    if setting == "finetuned":
        from semalign_core.experiments.teachers import teacher_names

        teacher = teacher or teacher_names(prof.name, task)[0]
    budget = budget or transfer_budget(prof, task)
    seed_of_row = row_seed(setting, method, seed, budget)
    config = {**cell_config(prof, method, task, seed_of_row, budget, setting, teacher, method_config),
              **(config_extra or {})}
    experiment = experiment or s.experiment
    run = run or run_name(method, task, seed_of_row, teacher)
    if not force and (record := load_valid_record(experiment, prof.name, run, config)):
        return record

    sources: dict[str, str] = {}
    transfer_cost, transfer_summary, out, teacher_report = None, None, None, None
    target = None
    if method != s.reference_rows[0]:
        target = _load(prof.semalign_target, prof)  # fresh per cell: methods train in place
    if method not in (s.reference_rows[1],):
        if setting == "finetuned":
            from semalign_core.lm import surgery
            from semalign_core.experiments.teachers import load_teacher

            vocab = surgery.vocab_size(target.model) if target is not None else None
            source, teacher_report = load_teacher(prof.name, task, teacher, prof.dtype, target_vocab=vocab)
        else:
            source = _load(prof.semalign_source, prof)
    if method == s.reference_rows[0]:
        model, tokenizer = source.model, source.tokenizer
        out = _teacher_eval(teacher_report, budget)
    else:
        model, tokenizer = target.model, target.tokenizer
        if method in METHODS:
            from semalign_core.transfer.registry import run_method

            train, extract = transfer_data(task, budget, seed)
            sources.update(train.sources)
            sources.update(extract.sources)
            t0 = time.perf_counter()
            result = run_method(method, source.model, model, train.records, extract.records, tokenizer=tokenizer,
                                **{**budget.method_overrides(method, seed), **(method_config or {})})
            transfer_cost = {**_jsonable(result.cost), "wall_s_total": round(time.perf_counter() - t0, 3)}
            model = result.model
            transfer_summary = {"n_train": len(train), "n_extract": len(extract), "notes": list(result.notes),
                                "stages": len(result.stages)}
            if method == "semalign":  # the source states each target layer was aligned to
                from semalign_core.semalign.attribution import interpolation_plan

                transfer_summary["plan"] = plan_json(interpolation_plan(result.pairing))
            del source
    model.eval()
    eval_task = s.tasks[task]
    t0 = time.perf_counter()
    if out is None:
        out = _evaluate(model, tokenizer, task, eval_task, budget, seed)
        sources.update(out.get("data", {}).get("sources", {}))
        metric = METRICS[eval_task]
        value = out["metrics"].get(metric)
        metrics = {"metric": metric, "value": value, "percent": None if value is None else round(100 * value, 4),
                   "stderr": out["stderr"].get(metric), "n": out["n"], "all": out["metrics"],
                   "prompt_style": out["prompt_style"], "decoding": out["decoding"], "transfer": transfer_summary}
    else:  # the teacher's evaluation made with it, same protocol
        sources.update(out.get("sources", {}))
        metrics = {"metric": "acc", "value": out["acc"],
                   "percent": None if out["acc"] is None else round(100 * out["acc"], 4),
                   "stderr": out["stderr"], "n": out["n"], "all": {"acc": out["acc"], "macro_f1": out["macro_f1"]},
                   "prompt_style": "plain", "decoding": {"method": "loglikelihood"}, "transfer": None,
                   "reused": "evaluation made with the teacher (semalign_teacher.json, same protocol)"}
    if teacher_report is not None and method == s.reference_rows[0]:
        rep = teacher_report["report"]
        metrics["teacher"] = {"before": rep["before"], "steps": rep["steps"], "n_train": rep["n_train"],
                              "train_wall_s": rep["train_wall_s"], "key": teacher_report["key"]}
    eval_wall = round(time.perf_counter() - t0, 3)
    write_record(experiment, prof.name, run, config, metrics=_jsonable(metrics),
                 cost={"transfer": transfer_cost, "eval_wall_s": eval_wall},
                 prov=provenance(seed=seed_of_row, data_sources=sources, device=_device(), dtype=prof.dtype),
                 method=method, task=task, seed=seed_of_row, **({"setting": setting, "teacher": teacher}
                                                                 if setting != "table1" else {}),
                 **(config_extra or {}))
    return load_valid_record(experiment, prof.name, run, config)


def run_table(prof: Profile, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
              seeds: Sequence[int] = (0,), force: bool = False, budget: TransferBudget | None = None,
              verbose: bool = True, setting: str = "table1",
              teachers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every cell of the reference rows and ``methods`` × ``tasks`` × ``seeds`` (reused when valid);
    with ``setting="finetuned"`` also × ``teachers`` (None: all of the profile's for each task).
    ``budget`` None: the profile's budget of each task."""
    methods, tasks, seeds = check_parameters(methods, tasks, seeds=list(seeds), setting=setting,
                                             profile=prof.name if setting == "finetuned" else None)
    s = get_setting(setting)
    out, done = [], set()
    for task in tasks:
        task_budget = budget or transfer_budget(prof, task)
        if setting == "finetuned":
            from semalign_core.experiments.teachers import teacher_names

            task_teachers = teachers or teacher_names(prof.name, task)
        else:
            task_teachers = (None,)
        for teacher in task_teachers:
            for seed in seeds:
                for method in (*s.reference_rows, *methods):
                    key = (teacher, method, task, row_seed(setting, method, seed, task_budget))
                    if key in done:  # a seed-independent row, already evaluated for an earlier seed
                        continue
                    done.add(key)
                    t0 = time.perf_counter()
                    record = run_cell(prof, method, task, seed, force, task_budget, setting, teacher)
                    if verbose:
                        m = record["metrics"]
                        seed_text = "all seeds" if record["seed"] is None else f"seed {seed}"
                        print(f"{method:>14} {task:>9} {seed_text}: {m['metric']} = {_pct(m['value'])} "
                              f"(n={m['n']}) [{time.perf_counter() - t0:.1f} s]", flush=True)
                    out.append(record)
    return out


# --------------------------------------------------------------------------- table


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def load_records(profile: str, setting: str = "table1") -> list[dict[str, Any]]:
    from semalign_core.paths import results_dir

    folder = results_dir() / get_setting(setting).experiment / profile
    pattern = "*__*__seed*.json" if setting == "table1" else "*__*__*.json"
    out = []
    for path in sorted(folder.glob(pattern)):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _cell(values: list[float], ns: list[int]) -> str:
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    n = "/".join(str(k) for k in sorted(set(ns)))
    if len(pct) == 1:
        return f"{mean:.1f} (n={n})"
    spread = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1))  # sample std over seeds
    return f"{mean:.1f} ± {spread:.1f} (n={n}, {len(pct)} seeds)"


def _row_label(record: dict, setting: str, several_teachers: bool) -> str:
    if setting == "table1" or not several_teachers or record["method"] == "target":
        return record["method"]
    return f"{record['teacher']} → {record['method']}"


def _rows(records: list[dict], setting: str, several: bool, order: tuple[str, ...]) -> list[str]:
    """Row labels: the reference rows, then the methods in :data:`METHODS` order (unknown ones
    last, sorted); with several teachers the target first, then each teacher's block."""
    rank = {m: i for i, m in enumerate(order)}
    keys = {}
    for r in records:
        teacher = "" if r["method"] == "target" or not several else (r.get("teacher") or "")
        keys[_row_label(r, setting, several)] = (teacher, rank.get(r["method"], len(rank)), r["method"])
    return sorted(keys, key=keys.__getitem__)


def table(profile: str, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
          seeds: Sequence[int] | None = None, setting: str = "table1"):
    """The setting's table of ``profile`` from its records: rows reference rows, then methods;
    columns the tasks (Table 1: always MMLU, GSM8K, HumanEval, MBPP; Table 2: the tasks that have
    records); cells "mean ± std over seeds (n=examples per seed)" in %, empty where no record
    exists. ``attrs``: caption, notes (chance levels, the teacher), seeds, models."""
    import pandas as pd

    from semalign_core.transfer.registry import METHODS

    s = get_setting(setting)
    records = [r for r in load_records(profile, setting)
               if r.get("setting", "table1") == setting
               and (methods is None or r["method"] in (*s.reference_rows, *methods))
               and (tasks is None or r["task"] in tasks) and (seeds is None or r["seed"] is None or r["seed"] in seeds)]
    several = len({r.get("teacher") for r in records}) > 1
    cells: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for r in records:
        m = r["metrics"]
        if m.get("value") is None:
            continue
        vals, ns = cells.setdefault((_row_label(r, setting, several), r["task"]), ([], []))
        vals.append(m["value"])
        ns.append(m["n"])
    rows = _rows(records, setting, several, (*s.reference_rows, *METHODS))
    present = {r["task"] for r in records}
    shown = [t for t in s.columns if setting == "table1" or t in present]
    frame = pd.DataFrame({s.columns[t]: [_cell(*cells[(m, t)]) if (m, t) in cells else "" for m in rows]
                          for t in shown}, index=pd.Index(rows, name="method"))
    models = sorted({(r["config"]["source"], r["config"]["target"]) for r in records})
    used_seeds = sorted({r["seed"] for r in records if r["seed"] is not None})
    src, tgt = models[0] if models else ("?", "?")
    frame.attrs["seeds"] = used_seeds
    frame.attrs["profile"] = profile
    frame.attrs["notes"] = [f"chance level: {s.columns[t]} {c:.0f}%" for t, c in s.chance.items()
                            if setting == "table1" or t in present]
    if setting == "table1":
        frame.attrs["caption"] = (f"Reproduced Table 1, profile `{profile}`: {src} → {tgt}; seeds {used_seeds}; "
                                  "% (MMLU acc, GSM8K exact match, HumanEval/MBPP pass@1, greedy, zero-shot); "
                                  "mean ± sample std over seeds, n = benchmark examples per seed")
        return frame
    teachers = sorted({r["teacher"] for r in records})
    frame.attrs["caption"] = (
        f"Reproduced Table 2, profile `{profile}`: fine-tuned teacher ({', '.join(teachers)}; base {src}) → "
        f"target {tgt}; training seeds {used_seeds}; % (SST-2: label-word log-likelihood accuracy on held-out "
        "dev sentences; HumanEval/MBPP: pass@1, greedy); methods: mean ± sample std over training seeds; "
        "teacher and target are untrained and the evaluation subset is fixed, so they are evaluated once")
    for r in records:
        info = r["metrics"].get("teacher")
        if info and info.get("before") and info["before"].get("acc") is not None:
            frame.attrs["notes"].append(
                f"teacher {r['teacher']} on {r['task']}: base {src} scored {100 * info['before']['acc']:.1f} "
                f"(n={info['before']['n']}) before fine-tuning on {info['n_train']} training examples "
                f"({info['steps']} steps)")
    return frame


def hyperparameter_table(prof: Profile, tasks: Sequence[str] = tuple(COLUMNS)):
    """What Table 1's cells at ``prof`` train with, per task, in the rows of SemAlign Tables 4-5."""
    import pandas as pd

    from semalign_core.transfer.registry import make_config

    def lr(budget: TransferBudget, method: str) -> float:
        return budget.method_config.get(method, {}).get("lr", make_config(method).lr)

    budgets = {t: transfer_budget(prof, t) for t in tasks}
    rows = {
        "alignment: SemAlign steps per stage (T4 steps)": [b.steps_per_stage for b in budgets.values()],
        "alignment: attribution examples (T4 align size)": [b.n_extract for b in budgets.values()],
        "alignment: SemAlign lr (T4)": [lr(b, "semalign") for b in budgets.values()],
        "training: epochs (T5)": [b.epochs for b in budgets.values()],
        "training: train examples (T5 train size)": [b.n_train or "all" for b in budgets.values()],
        "training: lr of Seeking / SFT / KL / hidden (T5)": [lr(b, "seeking") for b in budgets.values()],
        "evaluation: examples (None = whole split)": [b.eval_limit or "all" for b in budgets.values()],
        "evaluation: max new tokens": [b.max_new_tokens for b in budgets.values()],
    }
    text = {k: [f"{v:g}" if isinstance(v, float) else str(v) for v in vals] for k, vals in rows.items()}
    frame = pd.DataFrame(text, index=[COLUMNS[t] for t in tasks]).T
    frame.attrs["caption"] = (f"Per-task budgets at profile `{prof.name}` (each record's config holds the exact values; rows named after SemAlign Tables 4-5; "
                              "`paper` uses the published per-task values)")
    return frame


def side_by_side_html(ours, published, published_title: str = "Published (SemAlign paper, Table 1)") -> str:
    """Our table and the published one next to each other, each with its caption (for notebooks)."""
    def block(frame, title):
        notes = "".join(f"<br><small>{n}</small>" for n in frame.attrs.get("notes", []))
        return (f"<div style='margin-right:2em'><h4>{title}</h4><p><small>{frame.attrs.get('caption', '')}</small>"
                f"{notes}</p>{frame.to_html()}</div>")

    return ("<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>"
            + block(ours, f"Reproduced (ours, profile {ours.attrs.get('profile', '?')})")
            + block(published, published_title) + "</div>")


__all__ = ["CHANCE", "CLS_BUDGETS", "CLS_TASKS", "COLUMNS", "EVAL_TASKS", "EXPERIMENT", "SETTINGS", "TRANSFER_BUDGETS",
           "TransferBudget", "TransferSetting", "cell_config", "check_parameters", "get_setting", "load_records",
           "plan_json",
           "row_seed", "run_cell", "run_name", "run_table", "side_by_side_html", "table", "transfer_budget",
           "transfer_data", "hyperparameter_table", "PAPER_TASK_BUDGETS"]
