"""SemAlign Table 1: knowledge transfer into the target, evaluated on four benchmarks.

One cell of the table is (method, transfer task, seed): a fresh copy of the profile's target is
trained by ``method`` (:data:`semalign_core.baselines.METHODS`) on the transfer task's ``train``
split (attribution reads ``extract``), then evaluated greedily on the matching benchmark
(:data:`EVAL_TASKS`). The rows ``source`` and ``target`` evaluate the untransferred models.

Every cell is one record ``results/semalign_transfer/<profile>/<method>__<task>__seed<seed>.json``
(metric, n, transfer and evaluation cost, config, provenance); a valid record with the same config
is reused unless ``force``, which is how an interrupted notebook resumes. :func:`table` rebuilds
the table from the records alone (mean ± spread over seeds, with the n behind each number).

Budgets per profile (:data:`TRANSFER_BUDGETS`) bound the training data and steps and the
evaluation subset; at ``smoke`` the numbers are meaningless (random tiny models).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from semalign_core.errors import InvalidParameterError
from semalign_core.notebook import check_list
from semalign_core.profiles import Profile

EXPERIMENT = "semalign_transfer"
EVAL_TASKS: dict[str, str] = {"gsm": "semalign_gsm8k", "mmlu": "semalign_mmlu",
                              "humaneval": "semalign_humaneval", "mbpp": "semalign_mbpp"}
COLUMNS: dict[str, str] = {"mmlu": "MMLU", "gsm": "GSM8K", "humaneval": "HumanEval", "mbpp": "MBPP"}  # Table 1 order
METRICS: dict[str, str] = {"semalign_gsm8k": "exact_match", "semalign_mmlu": "acc",
                           "semalign_humaneval": "pass@1", "semalign_mbpp": "pass@1"}
CHANCE = {"mmlu": 25.0}  # % (4-way multiple choice); the others have no chance level above 0
REFERENCE_ROWS = ("source", "target")  # evaluated without training
TRAIN_SPLIT, ATTRIBUTION_SPLIT = "train", "extract"
VERSION = 1


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

    def method_overrides(self, method: str, seed: int) -> dict[str, Any]:
        """The budget as fields of ``method``'s config (only those it has)."""
        from dataclasses import fields

        from semalign_core.baselines import CONFIGS

        wanted = {"max_length": self.max_length, "batch_size": self.batch_size,
                  "micro_batch_size": self.micro_batch_size, "epochs": self.epochs, "max_steps": self.max_steps,
                  "steps_per_stage": self.steps_per_stage, "attribution_batch_size": self.micro_batch_size,
                  "seed": seed, "progress": False}
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


def transfer_budget(prof: Profile, **overrides) -> TransferBudget:
    """The profile's budget with ``overrides`` (fields of :class:`TransferBudget`; None values are ignored)."""
    base = TRANSFER_BUDGETS.get(prof.name, TRANSFER_BUDGETS["cpu"])
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(base)))
    if unknown:
        raise InvalidParameterError(f"TransferBudget has no field(s) {', '.join(unknown)}")
    return replace(base, **changes)


# --------------------------------------------------------------------------- parameters




def check_parameters(methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                     seed: int = 0, seeds: Sequence[int] | None = None
                     ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """One-line InvalidParameterError unless every method, task and seed is valid.

    ``methods``/``tasks`` None mean all (:data:`METHODS`, :data:`EVAL_TASKS`); ``seeds`` None means
    ``[seed]``. Returns (methods, tasks, seeds), duplicates dropped, order kept.
    """
    from semalign_core.baselines import METHODS

    methods = check_list("methods", methods, METHODS)
    tasks = check_list("tasks", tasks, EVAL_TASKS)
    seeds = [seed] if seeds is None else seeds
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InvalidParameterError(f"parameter seeds={seeds!r} must be None or a non-empty list of integers >= 0")
    return methods, tasks, tuple(dict.fromkeys(seeds))


# --------------------------------------------------------------------------- one cell


def run_name(method: str, task: str, seed: int) -> str:
    return f"{method}__{task}__seed{seed}"


def cell_config(prof: Profile, method: str, task: str, seed: int, budget: TransferBudget) -> dict[str, Any]:
    """What determines a cell's numbers (its hash decides whether a stored record is reused)."""
    config = {"profile": prof.name, "method": method, "task": task, "eval_task": EVAL_TASKS[task],
              "seed": seed, "source": prof.semalign_source, "target": prof.semalign_target, "dtype": prof.dtype,
              "eval": {"limit": budget.eval_limit, "max_new_tokens": budget.max_new_tokens, "decoding": "greedy",
                       "prompt_style": "transfer", "batch_size": budget.eval_batch_size},
              "version": VERSION}
    if method not in REFERENCE_ROWS:
        from semalign_core.baselines import make_config

        cfg = make_config(method, None, **budget.method_overrides(method, seed))
        identity = cfg.identity() if hasattr(cfg, "identity") else asdict(cfg)
        identity = {k: v for k, v in identity.items() if k not in ("progress", "checkpoint_dir")}
        config["transfer"] = {"train_split": TRAIN_SPLIT, "n_train": budget.n_train,
                              "attribution_split": ATTRIBUTION_SPLIT, "n_extract": budget.n_extract,
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


def run_cell(prof: Profile, method: str, task: str, seed: int = 0, force: bool = False,
             budget: TransferBudget | None = None) -> dict[str, Any]:
    """One Table 1 cell: train a fresh target with ``method`` on ``task`` (or evaluate ``source`` /
    ``target`` as they are) and evaluate it; returns the (new or reused) record."""
    from semalign_core.baselines import METHODS
    from semalign_core.records import load_valid_record, provenance, write_record

    if method not in (*REFERENCE_ROWS, *METHODS):
        raise InvalidParameterError(f"unknown method {method!r}; choose one of "
                                    f"{', '.join((*REFERENCE_ROWS, *METHODS))}")
    if task not in EVAL_TASKS:
        raise InvalidParameterError(f"unknown transfer task {task!r}; choose one of {', '.join(EVAL_TASKS)}")
    budget = budget or transfer_budget(prof)
    config = cell_config(prof, method, task, seed, budget)
    run = run_name(method, task, seed)
    if not force and (record := load_valid_record(EXPERIMENT, prof.name, run, config)):
        return record

    from semalign_core.evaluation.harness import evaluate

    sources: dict[str, str] = {}
    transfer_cost, transfer_summary = None, None
    if method == "source":
        loaded = _load(prof.semalign_source, prof)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        target = _load(prof.semalign_target, prof)  # fresh per cell: methods train in place
        model, tokenizer = target.model, target.tokenizer
        if method != "target":
            from semalign_core.baselines import run_method
            from semalign_core.data import load_transfer

            source = _load(prof.semalign_source, prof)
            train = load_transfer(task, TRAIN_SPLIT, limit=budget.n_train, seed=seed)
            extract_all = load_transfer(task, ATTRIBUTION_SPLIT)
            extract = load_transfer(task, ATTRIBUTION_SPLIT, limit=min(budget.n_extract, len(extract_all)), seed=seed)
            sources.update(train.sources)
            sources.update(extract.sources)
            t0 = time.perf_counter()
            result = run_method(method, source.model, model, train.records, extract.records, tokenizer=tokenizer,
                                **budget.method_overrides(method, seed))
            transfer_cost = {**_jsonable(result.cost), "wall_s_total": round(time.perf_counter() - t0, 3)}
            model = result.model
            transfer_summary = {"n_train": len(train), "n_extract": len(extract), "notes": list(result.notes),
                                "stages": len(result.stages)}
            del source
    model.eval()
    eval_task = EVAL_TASKS[task]
    t0 = time.perf_counter()
    out = evaluate(model, [eval_task], limit=budget.eval_limit, seed=seed, batch_size=budget.eval_batch_size,
                   prompt_style="transfer", max_new_tokens=budget.max_new_tokens, temperature=0.0,
                   tokenizer=tokenizer)[eval_task]
    eval_wall = round(time.perf_counter() - t0, 3)
    sources.update(out.get("data", {}).get("sources", {}))
    metric = METRICS[eval_task]
    value = out["metrics"].get(metric)
    metrics = {"metric": metric, "value": value, "percent": None if value is None else round(100 * value, 4),
               "stderr": out["stderr"].get(metric), "n": out["n"], "all": out["metrics"],
               "prompt_style": out["prompt_style"], "decoding": out["decoding"], "transfer": transfer_summary}
    write_record(EXPERIMENT, prof.name, run, config, metrics=_jsonable(metrics),
                 cost={"transfer": transfer_cost, "eval_wall_s": eval_wall},
                 prov=provenance(seed=seed, data_sources=sources, device=_device(), dtype=prof.dtype),
                 method=method, task=task, seed=seed)
    return load_valid_record(EXPERIMENT, prof.name, run, config)


def run_table(prof: Profile, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
              seeds: Sequence[int] = (0,), force: bool = False, budget: TransferBudget | None = None,
              verbose: bool = True) -> list[dict[str, Any]]:
    """Every cell of ``source``, ``target`` and ``methods`` × ``tasks`` × ``seeds`` (reused when valid)."""
    methods, tasks, seeds = check_parameters(methods, tasks, seeds=list(seeds))
    out = []
    for task in tasks:
        for seed in seeds:
            for method in (*REFERENCE_ROWS, *methods):
                t0 = time.perf_counter()
                record = run_cell(prof, method, task, seed, force, budget)
                if verbose:
                    m = record["metrics"]
                    print(f"{method:>14} {task:>9} seed {seed}: {m['metric']} = {_pct(m['value'])} "
                          f"(n={m['n']}) [{time.perf_counter() - t0:.1f} s]", flush=True)
                out.append(record)
    return out


# --------------------------------------------------------------------------- table


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def load_records(profile: str) -> list[dict[str, Any]]:
    from semalign_core.paths import results_dir

    folder = results_dir() / EXPERIMENT / profile
    out = []
    for path in sorted(folder.glob("*__*__seed*.json")):
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


def table(profile: str, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
          seeds: Sequence[int] | None = None):
    """Table 1 of ``profile`` from its records: rows source, target, methods; columns MMLU, GSM8K,
    HumanEval, MBPP; cells "mean ± std over seeds (n=examples per seed)" in %, empty where no
    record exists. ``attrs``: caption, notes (chance levels), seeds, models."""
    import pandas as pd

    from semalign_core.baselines import METHODS

    records = [r for r in load_records(profile)
               if (methods is None or r["method"] in (*REFERENCE_ROWS, *methods))
               and (tasks is None or r["task"] in tasks) and (seeds is None or r["seed"] in seeds)]
    cells: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for r in records:
        m = r["metrics"]
        if m.get("value") is None:
            continue
        vals, ns = cells.setdefault((r["method"], r["task"]), ([], []))
        vals.append(m["value"])
        ns.append(m["n"])
    order = [*REFERENCE_ROWS, *METHODS]
    present = {r["method"] for r in records}
    rows = [m for m in order if m in present] + sorted(present - set(order))
    frame = pd.DataFrame({COLUMNS[t]: [_cell(*cells[(m, t)]) if (m, t) in cells else "" for m in rows]
                          for t in COLUMNS}, index=pd.Index(rows, name="method"))
    models = sorted({(r["config"]["source"], r["config"]["target"]) for r in records})
    used_seeds = sorted({r["seed"] for r in records})
    src, tgt = models[0] if models else ("?", "?")
    frame.attrs["caption"] = (f"Reproduced Table 1, profile `{profile}`: {src} → {tgt}; seeds {used_seeds}; "
                              "% (MMLU acc, GSM8K exact match, HumanEval/MBPP pass@1, greedy, zero-shot); "
                              "mean ± sample std over seeds, n = benchmark examples per seed")
    frame.attrs["notes"] = [f"chance level: {COLUMNS[t]} {c:.0f}%" for t, c in CHANCE.items()]
    frame.attrs["seeds"] = used_seeds
    frame.attrs["profile"] = profile
    return frame


def side_by_side_html(ours, published) -> str:
    """Our table and the published one next to each other, each with its caption (for notebooks)."""
    def block(frame, title):
        notes = "".join(f"<br><small>{n}</small>" for n in frame.attrs.get("notes", []))
        return (f"<div style='margin-right:2em'><h4>{title}</h4><p><small>{frame.attrs.get('caption', '')}</small>"
                f"{notes}</p>{frame.to_html()}</div>")

    return ("<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>"
            + block(ours, f"Reproduced (ours, profile {ours.attrs.get('profile', '?')})")
            + block(published, "Published (SemAlign paper, Table 1)") + "</div>")


__all__ = ["CHANCE", "COLUMNS", "EVAL_TASKS", "EXPERIMENT", "TRANSFER_BUDGETS", "TransferBudget", "cell_config",
           "check_parameters", "load_records", "run_cell", "run_name", "run_table", "side_by_side_html", "table",
           "transfer_budget"]
