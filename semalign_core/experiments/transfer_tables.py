"""Notebooks 03 and 04: SemAlign Tables 1 and 2, one transfer cell at a time.

One cell is (method, transfer task, seed): a fresh copy of the profile's target is trained by
``method`` (:data:`semalign_core.transfer.registry.METHODS`) on the transfer task's ``train``
split (attribution reads ``extract``), then evaluated greedily on the matching benchmark
(:data:`~semalign_core.experiments.catalog.EVAL_TASKS`). The rows ``source`` and ``target``
evaluate the untransferred models.

Every cell is one record ``results/semalign_transfer/<profile>/<method>__<task>__seed<seed>.json``
(metric, n, transfer and evaluation cost, config, provenance); a valid record with the same config
is reused unless ``force``, which is how an interrupted notebook resumes. The table is rebuilt
from the records alone by :mod:`semalign_core.report.semalign_tables` (mean ± spread over seeds,
with the n behind each number). Budgets: :mod:`semalign_core.experiments.budgets`; at ``smoke``
the numbers are meaningless (random tiny models).

Settings (:data:`~semalign_core.experiments.catalog.SETTINGS`): ``"table1"`` is the above.
``"finetuned"`` (Table 2) transfers from a *fine-tuned teacher*
(:mod:`semalign_core.experiments.teachers`: below ``paper`` the profile's source fine-tuned on the
task; at ``paper`` the hub code teachers) and adds the classification task ``sst2``: records built
from the task's training pool in the evaluation's own plain format
(:mod:`semalign_core.data.cls_transfer`), evaluated by label-word log-likelihood on the held-out
split (``CLS_BUDGETS``). Its records go to ``results/semalign_finetuned_teacher/<profile>/
<teacher>__<method>__<task>__seed<seed>.json``; the evaluation subset is fixed across seeds
(``eval_seed``), so the untrained rows ``teacher`` and ``target`` are evaluated once
(``<teacher>__<row>__<task>.json``) and the seeds vary the training only. The target does not
depend on the teacher: with several teachers of a task (``paper``) the others' target records
are copies of the first teacher's (``reused_from``), and the report shows the row once.
A budget that asks for more training records than a split holds is an error when the table's
cells are made, before any model loads (:func:`check_train_budget`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from semalign_core.data import load_transfer
from semalign_core.data.cls_transfer import eval_split, eval_task_options, load_cls_transfer
from semalign_core.devices import default_device
from semalign_core.errors import InvalidParameterError
from semalign_core.evaluation.answers import DEFAULT_ORDER, GSM8K_EXTRACTION_VERSION
from semalign_core.evaluation.backends import choose_backend
from semalign_core.evaluation.harness import evaluate
from semalign_core.experiments.budgets import TEACHERS, TransferBudget, transfer_budget
from semalign_core.experiments.catalog import (
    CLS_TASKS,
    METRICS,
    PERCENT_METRICS,
    TrainedRow,
    TransferSetting,
    get_setting,
)
from semalign_core.experiments.model_pool import load_for, record_models, release_memory
from semalign_core.experiments.notebook import check_list, check_seeds
from semalign_core.experiments.teachers import (
    ensure_teacher,
    load_profile_teacher,
    resolve_teacher,
    teacher_names,
    teacher_tasks,
)
from semalign_core.lm import surgery
from semalign_core.models.teachers import TeacherRecipe, teacher_identity
from semalign_core.profiles import Profile
from semalign_core.records import (
    Measure,
    RecordParts,
    config_hash,
    get_or_compute,
    is_secondary_process,
    measured,
    provenance,
)
from semalign_core.semalign.attribution import interpolation_plan
from semalign_core.transfer.registry import (
    CROSS_METHODS,
    METHODS,
    config_class,
    make_config,
    needs_source,
    run_method,
)

TRAIN_SPLIT, ATTRIBUTION_SPLIT = "train", "extract"
# Transfer tasks whose benchmark generates: they run through the profile's generation backend
# (vLLM where it can run); MMLU and classification score log-likelihoods only, through HF.
GENERATION_TASKS = ("gsm", "humaneval", "mbpp")
VERSION = 1


# --------------------------------------------------------------------------- parameters


def check_parameters(
    prof: Profile,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    *,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    setting: str = "table1",
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(methods, tasks, seeds) of one table, checked (one-line InvalidParameterError).

    None means: every method of :data:`METHODS`; every task of the setting (Table 2: those the
    profile has teachers for); the profile's default seeds counted from ``seed``
    (:func:`~semalign_core.experiments.notebook.check_seeds`)."""
    s = get_setting(setting)
    methods = check_list("methods", methods, setting_methods(s))
    allowed = tuple(s.tasks)
    if setting != "table1":  # the tasks the setting's teachers exist for at this profile
        has = teacher_tasks(prof.name, s.teacher)
        allowed = tuple(t for t in s.tasks if t in has)
        stray = [t for t in (tasks or ()) if t in s.tasks and t not in allowed]
        if stray:
            kind = "cross-family" if s.teacher else "fine-tuned"
            raise InvalidParameterError(
                f"parameter tasks: profile {prof.name!r} has no {kind} teacher for {stray}; "
                f"tasks with teachers: {', '.join(allowed) or 'none'}"
            )
    tasks = check_list("tasks", tasks, allowed)
    return methods, tasks, check_seeds(seeds, seed, s.experiment, prof.name)


def setting_methods(s: TransferSetting) -> tuple[str, ...]:
    """The rows a setting trains (or copies), beside its reference rows: its own rows, else every
    method of the transfer registry's ``METHODS``."""
    if s.rows is None:
        return tuple(METHODS)
    copied = tuple(row for row in s.copies if row not in s.reference_rows)
    return (*copied, *s.rows)


# --------------------------------------------------------------------------- one cell


@dataclass(frozen=True)
class Cell:
    """One cell of a transfer table (made and checked by :func:`make_cell`).

    Attributes:
        prof: the profile (models, dtype).
        setting: Table 1 or Table 2.
        method: a method of :data:`METHODS`, or one of the setting's untrained reference rows.
        task: a task of the setting.
        seed: the training seed (data subset, data order, initialisation).
        budget: what the cell trains and evaluates with.
        teacher: the source in Table 2 (a teacher name of the profile and task); None in Table 1.
        method_config: method config fields beyond the budget's (ablations).
    """

    prof: Profile
    setting: TransferSetting
    method: str
    task: str
    seed: int
    budget: TransferBudget
    teacher: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)

    @property
    def record_seed(self) -> int | None:
        """The seed the record carries (None: an untrained row evaluated once for all seeds)."""
        return row_seed(self.setting.name, self.method, self.seed, self.budget)

    @property
    def run(self) -> str:
        return run_name(self.method, self.task, self.record_seed, self.teacher)

    @property
    def row(self) -> TrainedRow:
        """How the row trains: the setting's own row, else the registry method of its name."""
        return (self.setting.rows or {}).get(self.method) or TrainedRow(self.method)

    @property
    def across_vocabularies(self) -> bool:
        """Whether the row trains with a method that spans two vocabularies."""
        return self.row.method in CROSS_METHODS

    def method_kwargs(self) -> dict[str, Any]:
        """The method's config fields: the budget's (those of ``row.budget_of`` where set), the
        row's, then the cell's own."""
        row = self.row
        budget_of = row.budget_of or row.method
        overrides = self.budget.method_overrides(budget_of, self.seed, config_class(row.method))
        return {**overrides, **row.method_config, **self.method_config}


def make_cell(
    prof: Profile,
    method: str,
    task: str,
    seed: int = 0,
    budget: TransferBudget | None = None,
    setting: str = "table1",
    teacher: str | None = None,
    method_config: dict[str, Any] | None = None,
) -> Cell:
    """A checked :class:`Cell`; ``budget`` None: the profile's for ``task``; ``teacher`` None in
    Table 2: the profile's first teacher of ``task``."""
    s = get_setting(setting)
    rows = (*s.reference_rows, *setting_methods(s))
    if method not in rows:
        raise InvalidParameterError(f"unknown method {method!r}; choose one of {', '.join(rows)}")
    if task not in s.tasks:
        raise InvalidParameterError(
            f"unknown transfer task {task!r}; choose one of {', '.join(s.tasks)}"
        )
    if setting == "table1" and teacher is not None:
        raise InvalidParameterError("teacher is a parameter of the settings with teachers only")
    if s.teacher is not None and teacher not in (None, s.teacher):
        raise InvalidParameterError(
            f"setting {setting!r} transfers from its own teacher {s.teacher!r} only, "
            f"got {teacher!r}"
        )
    if setting != "table1":
        teacher = teacher or s.teacher or teacher_names(prof.name, task)[0]
    return Cell(
        prof,
        s,
        method,
        task,
        seed,
        budget or transfer_budget(prof, task),
        teacher,
        dict(method_config or {}),
    )


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


def _eval_config(task: str, budget: TransferBudget, setting: TransferSetting) -> dict[str, Any]:
    """How a cell is evaluated (part of its config hash)."""
    config = _main_eval_config(task, budget)
    secondary = setting.secondary_of(task)
    if secondary:  # the metrics that move at small scale, on the same items
        config["secondary"] = {key: list(pair) for key, pair in secondary.items()}
    return config


def _main_eval_config(task: str, budget: TransferBudget) -> dict[str, Any]:
    if task in CLS_TASKS:
        return {
            "limit": budget.eval_limit,
            "seed": budget.eval_seed,
            "split": eval_split(task),
            "decoding": "loglikelihood",
            "prompt_style": "plain",
            "batch_size": budget.eval_batch_size,
        }
    config = {
        "limit": budget.eval_limit,
        "max_new_tokens": budget.max_new_tokens,
        "decoding": "loglikelihood" if task == "mmlu" else "greedy",
        "prompt_style": "plain" if task == "mmlu" else "transfer",
        "batch_size": budget.eval_batch_size,
    }
    if budget.eval_seed is not None:
        config["seed"] = budget.eval_seed
    if task == "gsm":  # how answers are read decides the score: a new reading, new records
        config["answer_extraction"] = {
            "version": GSM8K_EXTRACTION_VERSION,
            "order": list(DEFAULT_ORDER),
        }
    return config


def _transfer_config(cell: Cell) -> dict[str, Any]:
    """The training part of a trained cell's config: data splits and sizes, the method's config."""
    cfg = make_config(cell.row.method, None, **cell.method_kwargs())
    identity = cfg.identity() if hasattr(cfg, "identity") else asdict(cfg)
    identity = {k: v for k, v in identity.items() if k not in ("progress", "checkpoint_dir")}
    train_split, attr_split = (
        (TRAIN_SPLIT, ATTRIBUTION_SPLIT)
        if cell.task not in CLS_TASKS
        else (f"{cell.task}-pool/train", f"{cell.task}-pool/extract")
    )
    config = {
        "train_split": train_split,
        "n_train": cell.budget.n_train,
        "attribution_split": attr_split,
        "n_extract": cell.budget.n_extract,
        "method_config": _jsonable(identity),
    }
    if cell.row.method != cell.method:  # a row named apart from the method that trains it
        config["trained_by"] = cell.row.method
    return config


def cell_config(cell: Cell) -> dict[str, Any]:
    """What determines a cell's numbers (its hash decides whether a stored record is reused)."""
    prof = cell.prof
    config = {
        "profile": prof.name,
        "method": cell.method,
        "task": cell.task,
        "eval_task": cell.setting.tasks[cell.task],
        "seed": cell.record_seed,
        "source": prof.semalign_source,
        "target": prof.semalign_target,
        "dtype": prof.dtype,
        "eval": _eval_config(cell.task, cell.budget, cell.setting),
        "version": VERSION,
    }
    if cell.setting.name != "table1":
        config["setting"] = cell.setting.name
        config["teacher"] = teacher_identity(resolve_teacher(prof.name, cell.task, cell.teacher))
    if cell.method not in cell.setting.reference_rows:
        config["transfer"] = _transfer_config(cell)
    return config


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _loader(task: str):
    """(load function, train part, extract part) of a transfer task (LaTen splits) or a
    classification task (its pool)."""
    if task in CLS_TASKS:
        return load_cls_transfer, "train", "extract"
    return load_transfer, TRAIN_SPLIT, ATTRIBUTION_SPLIT


def transfer_data(task: str, budget: TransferBudget, seed: int):
    """(train Split, extract Split) of a transfer task (LaTen splits) or a classification task
    (its pool)."""
    load, train_part, extract_part = _loader(task)
    train = load(task, train_part, limit=budget.n_train, seed=seed)
    extract_all = load(task, extract_part)
    extract = load(task, extract_part, limit=min(budget.n_extract, len(extract_all)), seed=seed)
    return train, extract


def check_train_budget(task: str, budget: TransferBudget) -> None:
    """One-line InvalidParameterError when ``budget.n_train`` asks for more records than the
    task's training split holds, so a table fails before any model loads rather than when a cell
    starts training (``n_extract`` needs no check: it is capped at its split's size)."""
    if budget.n_train is None:
        return
    load, train_part, _ = _loader(task)
    split = load(task, train_part)  # the data layer's own count of the split's records
    if budget.n_train > split.n_available:
        raise InvalidParameterError(
            f"budget n_train={budget.n_train} exceeds the {split.n_available} records of "
            f"{split.benchmark}/{split.split}; lower n_train or set it to None (the whole split)"
        )


def plan_json(plan: dict[int, list[tuple[int, float]]]) -> dict[str, list[list[float]]]:
    """An interpolation plan (target layer → [(source layer, weight)]) as JSON-able data."""
    return {
        str(j): [[int(s), round(float(w), 6)] for s, w in mix] for j, mix in sorted(plan.items())
    }


# --------------------------------------------------------------------------- computing a cell


def cell_models(cell: Cell) -> dict[str, Any]:
    """The models a cell's record depends on, by role (``target``; ``source`` or ``teacher``): a
    registry name, or a teacher (:func:`~semalign_core.experiments.teachers.resolve_teacher`).
    A method that does not read the source (:func:`~semalign_core.transfer.registry.needs_source`)
    keeps it here, so its records stay valid, but it is not loaded (:func:`_load_models`)."""
    roles: dict[str, Any] = {}
    if cell.method != cell.setting.source_row:
        roles["target"] = cell.prof.semalign_target
    if cell.method != cell.setting.target_row and cell.teacher is not None:
        roles["teacher"] = resolve_teacher(cell.prof.name, cell.task, cell.teacher)
    elif cell.method != cell.setting.target_row:
        roles["source"] = cell.prof.semalign_source
    return roles


def _reads_source(cell: Cell) -> bool:
    """Whether the cell's row reads its source or teacher (every row but a source-free method)."""
    return cell.method not in METHODS or needs_source(cell.row.method)


def _load_models(cell: Cell):
    """(source, target, teacher report) of :func:`cell_models`: each LoadedModel or None (a fresh
    target per cell: methods train in place; the report: a made teacher's marker, else None).
    The source (or teacher) is None for a method that does not read it."""
    roles, target, source, report = cell_models(cell), None, None, None
    if "target" in roles:
        target = load_for(cell.prof, roles["target"])
    if "teacher" in roles and not _reads_source(cell):
        if isinstance(roles["teacher"], TeacherRecipe):  # the record names the made teacher
            ensure_teacher(roles["teacher"], False, cell.prof.train_engine)
    elif "teacher" in roles:
        # a same-family teacher keeps the target's vocabulary rows; another family keeps its own
        same_family = target is not None and not cell.across_vocabularies
        vocab = surgery.vocab_size(target.model) if same_family else None
        source, report = load_profile_teacher(
            cell.prof.name, cell.task, cell.teacher, cell.prof.dtype, target_vocab=vocab
        )
    elif "source" in roles and _reads_source(cell):
        source = load_for(cell.prof, roles["source"], read_only=True)
    return source, target, report


def _train(cell: Cell, source, target, sources: dict[str, str]):
    """Train ``target`` in place with the cell's method; (trained model, cost, summary)."""
    train, extract = transfer_data(cell.task, cell.budget, cell.seed)
    sources.update(train.sources)
    sources.update(extract.sources)
    t0 = time.perf_counter()
    across = {"source_tokenizer": source.tokenizer} if cell.across_vocabularies else {}
    result = run_method(
        cell.row.method,
        None if source is None else source.model,
        target.model,
        train.records,
        extract.records,
        tokenizer=target.tokenizer,
        **across,
        **cell.method_kwargs(),
    )
    cost = {**_jsonable(result.cost), "wall_s_total": round(time.perf_counter() - t0, 3)}
    summary = {
        "n_train": len(train),
        "n_extract": len(extract),
        "notes": list(result.notes),
        "stages": len(result.stages),
    }
    if cell.row.method in ("semalign", "semalign_cross"):  # source states each layer aligned to
        summary["plan"] = plan_json(interpolation_plan(result.pairing))
    return result.model, cost, summary


def _evaluate(
    model,
    tokenizer,
    task: str,
    eval_tasks: list[str],
    budget: TransferBudget,
    seed: int,
    backend: str = "hf",
) -> dict[str, dict]:
    """``{lm-eval task: its evaluation}``, in one lm-eval run. Classification tasks: label-word
    log-likelihood on the plain prompt; the benchmarks: greedy generation (or log-likelihood,
    per task YAML) in the transfer chat format; ``backend`` runs :data:`GENERATION_TASKS`
    (with their secondary tasks, in the same run), HF the others."""
    if task in CLS_TASKS:
        style = {"prompt_style": "plain", "task_options": eval_task_options(task)}
    else:
        style = {
            "prompt_style": "transfer",
            "max_new_tokens": budget.max_new_tokens,
            "temperature": 0.0,
            "backend": backend if task in GENERATION_TASKS else "hf",
        }
    return evaluate(
        model,
        eval_tasks,
        limit=budget.eval_limit,
        seed=seed if budget.eval_seed is None else budget.eval_seed,
        batch_size=budget.eval_batch_size,
        tokenizer=tokenizer,
        keep_samples=True,
        **style,
    )


def _items(out: dict, metric: str) -> list[dict[str, Any]]:
    """Per evaluated item: its id, gold target, filtered prediction (multiple choice: one
    log-likelihood per choice) and score, so a comparison of two rows on the same items (a paired
    test), majority rates and label distributions can be recomputed from the records alone."""
    return [
        {
            "doc_id": s["doc_id"],
            "gold": s["target"],
            "prediction": s["filtered"],
            metric: s.get(metric),
        }
        for s in out.get("samples", [])
    ]


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 4)


def _evaluation_metrics(
    cell: Cell, model, tokenizer, summary: dict | None, sources: dict[str, str]
) -> dict[str, Any]:
    """Evaluate ``model`` on the cell's benchmark: the record's metrics."""
    eval_task = cell.setting.tasks[cell.task]
    secondary = cell.setting.secondary_of(cell.task)
    tasks = [eval_task, *(task for task, _ in secondary.values())]
    backend = choose_backend(cell.prof.generation_backend)[0]
    outs = _evaluate(model, tokenizer, cell.task, tasks, cell.budget, cell.seed, backend)
    for out in outs.values():
        sources.update(out.get("data", {}).get("sources", {}))
    metrics = {**_task_metrics(outs[eval_task], METRICS[eval_task]), "transfer": summary}
    if secondary:
        metrics["secondary"] = {
            key: _task_metrics(outs[task], metric) for key, (task, metric) in secondary.items()
        }
    return metrics


def _task_metrics(out: dict, metric: str) -> dict[str, Any]:
    """One evaluated task's part of a record: its metric with per-item scores."""
    value = out["metrics"].get(metric)
    return {
        "metric": metric,
        "value": value,
        "percent": _percent(value) if metric in PERCENT_METRICS else None,
        "stderr": out["stderr"].get(metric),
        "n": out["n"],
        "all": out["metrics"],
        "prompt_style": out["prompt_style"],
        "decoding": out["decoding"],
        "backend": out.get("backend"),
        "items": _items(out, metric),
    }


def _teacher_summary(report: dict) -> dict[str, Any]:
    rep = report["report"]
    return {
        "before": rep["before"],
        "steps": rep["steps"],
        "n_train": rep["n_train"],
        "train_wall_s": rep["train_wall_s"],
        "key": report["key"],
    }


def compute_cell(cell: Cell) -> RecordParts:
    """Train (unless a reference row) and evaluate one cell: the parts of its record. The cell's
    models are freed when it returns (or fails), before the next cell loads its own."""
    try:
        return _computed_parts(cell)
    finally:
        release_memory()  # the models were _computed_parts' locals; collect their cycles


def _computed_parts(cell: Cell) -> RecordParts:
    sources: dict[str, str] = {}
    transfer_cost = summary = None
    source, target, report = _load_models(cell)
    if cell.method == cell.setting.source_row:
        # evaluated like every row (not the teacher's own evaluation): its per-item predictions
        # are what a paired comparison with the other rows needs
        model, tokenizer = source.model, source.tokenizer
    else:
        model, tokenizer = target.model, target.tokenizer
        if cell.method not in cell.setting.reference_rows:
            model, transfer_cost, summary = _train(cell, source, target, sources)
            del source
    if is_secondary_process():  # FSDP: the first process evaluates the trained model and writes
        return RecordParts({}, {}, {})
    model.eval()
    t0 = time.perf_counter()
    metrics = _evaluation_metrics(cell, model, tokenizer, summary, sources)
    if report is not None and cell.method == cell.setting.source_row:
        metrics["teacher"] = _teacher_summary(report)
    cost = {"transfer": transfer_cost, "eval_wall_s": round(time.perf_counter() - t0, 3)}
    seed = cell.record_seed
    return RecordParts(
        _jsonable(metrics),
        cost,
        provenance(seed=seed, data_sources=sources, device=default_device(), dtype=cell.prof.dtype),
        _record_extra(cell),
    )


def _record_extra(cell: Cell) -> dict[str, Any]:
    """The top-level keys of a cell's record beside its identity, metrics, cost and provenance."""
    extra = {"method": cell.method, "task": cell.task, "seed": cell.record_seed}
    if cell.setting.name != "table1":
        extra.update(setting=cell.setting.name, teacher=cell.teacher)
    return extra


def target_donor(cell: Cell) -> Cell | None:
    """The cell whose record a cell copies (None: it computes its own). A row of the setting's
    ``copies`` copies that setting's row (the cross-family table's target, SFT and same-family
    SemAlign are Table 2's records). A Table 2 ``target`` row copies the same row under the
    task's first teacher of the profile, when the two configs differ in the teacher only (the
    untrained target's evaluation does not depend on it)."""
    if cell.method in cell.setting.copies:
        setting, row = cell.setting.copies[cell.method]
        if cell.budget != transfer_budget(cell.prof, cell.task):
            raise InvalidParameterError(
                f"row {cell.method!r} is a copy of {setting!r}'s record, made with the profile's "
                "budget; a custom budget applies to the trained rows only (pass them as methods)"
            )
        return make_cell(cell.prof, row, cell.task, cell.seed, cell.budget, setting)
    if cell.teacher is None or cell.method != cell.setting.target_row:
        return None
    names = TEACHERS.get(cell.prof.name, {}).get(cell.task, ())
    if not names or cell.teacher == names[0]:
        return None
    donor = replace(cell, teacher=names[0])
    same = _without_teacher(cell_config(donor)) == _without_teacher(cell_config(cell))
    return donor if same else None


def _without_teacher(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "teacher"}


def _record_name(cell: Cell) -> str:
    """``<experiment>/<profile>/<run>``: where a cell's record lives under the results."""
    return f"{cell.setting.experiment}/{cell.prof.name}/{cell.run}"


def _copied_parts(cell: Cell, donor: Cell, record: dict) -> RecordParts:
    """The parts of ``donor``'s ``record`` as ``cell``'s: metrics, cost and provenance kept,
    marked ``reused_from``; the cell's own identity."""
    return RecordParts(
        record["metrics"],
        record["cost"],
        record["provenance"],
        {**_record_extra(cell), "reused_from": f"{_record_name(donor)}.json"},
    )


def _copy_config(cell: Cell, donor: Cell, record: dict) -> dict[str, Any]:
    """The stored config of a cell copying another setting's ``record``: the donor's (what the
    numbers depend on), with the setting and row that hold the copy, and a hash of the donor's
    metrics (a donor recomputed since with other numbers, even under the same config,
    invalidates the copy, which is then copied again)."""
    return {
        **cell_config(donor),
        "setting": cell.setting.name,
        "row": cell.method,
        "copy_of": _record_name(donor),
        "copy_of_metrics": config_hash(record["metrics"]),
    }


def cell_record(
    cell: Cell,
    force: bool = False,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """The cell's record: reused when valid, else computed and written to
    ``results/<setting's experiment>/<profile>/<run>.json``. ``measure`` (the cell runner's
    own-process peak memory) runs the computation and may add to its cost.

    A Table 2 ``target`` row of a second teacher copies the first teacher's
    (:func:`target_donor`), which is reused when valid even with ``force`` (a forced table has
    just recomputed it)."""
    donor = target_donor(cell)
    models_of = cell
    if donor is None:
        config, compute = cell_config(cell), measured(partial(compute_cell, cell), measure)
    elif donor.setting == cell.setting:  # Table 2's second teacher: its donor read when copied
        config = cell_config(cell)

        def compute() -> RecordParts:
            return _copied_parts(cell, donor, cell_record(donor, measure=measure))

    else:  # another setting's record (a row with no config of its own), read or computed once
        record = cell_record(donor, measure=measure)
        compute = partial(_copied_parts, cell, donor, record)
        config, models_of = _copy_config(cell, donor, record), donor
    return get_or_compute(
        cell.setting.experiment,
        cell.prof.name,
        cell.run,
        config,
        compute,
        force,
        record_models(**cell_models(models_of)),
    )


def run_cell(
    prof: Profile,
    method: str,
    task: str,
    seed: int = 0,
    force: bool = False,
    budget: TransferBudget | None = None,
    setting: str = "table1",
    teacher: str | None = None,
) -> dict[str, Any]:
    """One cell's record (arguments: :func:`make_cell`; reuse: :func:`cell_record`)."""
    cell = make_cell(prof, method, task, seed, budget, setting, teacher)
    if method in METHODS:
        check_train_budget(task, cell.budget)
    return cell_record(cell, force)


# --------------------------------------------------------------------------- a table


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def table_cells(
    prof: Profile,
    methods: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    budget: TransferBudget | None,
    setting: str,
    teachers: Sequence[str] | None,
) -> list[Cell]:
    """Every cell of a table in run order: per task, teacher and seed the reference rows, then
    ``methods``; a seed-independent row only once. Checks each task's budget against its
    training split (:func:`check_train_budget`) before any model loads."""
    s = get_setting(setting)
    cells, seen = [], set()
    for task in tasks:
        task_budget = budget or transfer_budget(prof, task)
        if methods:
            check_train_budget(task, task_budget)
        if setting == "table1":
            task_teachers = (None,)
        else:
            own = (s.teacher,) if s.teacher else teacher_names(prof.name, task)
            task_teachers = teachers or own
        for teacher in task_teachers:
            for seed in seeds:
                for method in (*s.reference_rows, *methods):
                    cell = make_cell(prof, method, task, seed, task_budget, setting, teacher)
                    if cell.run not in seen:
                        seen.add(cell.run)
                        cells.append(cell)
    return cells


def run_table(
    prof: Profile,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    budget: TransferBudget | None = None,
    verbose: bool = True,
    setting: str = "table1",
    teachers: Sequence[str] | None = None,
) -> list[dict]:
    """Every cell of the reference rows and ``methods`` × ``tasks`` × ``seeds`` (reused when
    valid; None: see :func:`check_parameters`); with ``setting="finetuned"`` also × ``teachers``
    (None: all of the profile's for each task). ``budget`` None: the profile's budget of each
    task."""
    methods, tasks, seeds = check_parameters(
        prof, 0, seeds, methods=methods, tasks=tasks, setting=setting
    )
    out = []
    for cell in table_cells(prof, methods, tasks, seeds, budget, setting, teachers):
        t0 = time.perf_counter()
        record = cell_record(cell, force)
        if verbose:
            m = record["metrics"]
            seed_text = "all seeds" if record["seed"] is None else f"seed {cell.seed}"
            print(
                f"{cell.method:>14} {cell.task:>9} {seed_text}: {m['metric']} = "
                f"{_pct(m['value'])} (n={m['n']}) [{time.perf_counter() - t0:.1f} s]",
                flush=True,
            )
        out.append(record)
    return out


__all__ = [
    "ATTRIBUTION_SPLIT",
    "Cell",
    "TRAIN_SPLIT",
    "cell_config",
    "cell_models",
    "cell_record",
    "check_parameters",
    "check_train_budget",
    "compute_cell",
    "make_cell",
    "plan_json",
    "row_seed",
    "run_cell",
    "run_name",
    "run_table",
    "table_cells",
    "target_donor",
    "transfer_data",
]
