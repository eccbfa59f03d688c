"""One evaluation API over lm-eval: ``evaluate(model, tasks, ...)`` -> one record per task.

The tasks are the ``semalign_*`` lm-eval configs in :mod:`semalign_core.evaluation.tasks`,
registered by include path (``TaskManager(include_path=TASKS_DIR)``) and fed by our data layer, so
they run offline from any working directory. lm-eval builds the requests, calls the model
(``HFLM`` over the in-memory model) and aggregates the metrics; this module chooses the settings,
checks the input and turns lm-eval's output into result records with provenance.

Settings that move scores are fixed and recorded: batch size, padding side (HFLM pads
log-likelihood batches on the right and generation batches on the left), BOS handling, prompt
style, decoding, backend (``backend="vllm"``: lm-eval's vLLM wrapper over the model written to a
temporary folder, :mod:`semalign_core.evaluation.backends`). Subsets come from the data layer's
rule (``limit``, ``seed``), never from lm-eval's ``--limit``, so the sha256 of every file read and
the selection are in the record.

CLI: ``python -m semalign_core.evaluation.harness --model NAME --tasks a,b --limit N``.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lm_eval.api.model import LM
from lm_eval.evaluator import evaluate as lm_eval_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager, get_task_dict

from semalign_core import paths
from semalign_core.errors import ArtifactError, InvalidParameterError, OfflineError
from semalign_core.evaluation import backends
from semalign_core.evaluation.metrics import macro_f1
from semalign_core.evaluation.tasks import TASKS_DIR, chat_tokenizer
from semalign_core.evaluation.tasks.utils import generation_until, task_family, task_variant
from semalign_core.models.registry import load_model
from semalign_core.records import provenance, write_json_atomic

PROMPT_STYLES = ("transfer", "model", "plain")
# HFLM's fixed padding: right for log-likelihood batches (_loglikelihood_tokens), left for
# generation (tok_batch_encode(padding_side="left")).
PADDING_SIDE = {"multiple_choice": "right", "loglikelihood": "right", "generate_until": "left"}
TASK_GROUPS_PREFIX = {"semalign_cls": "semalign_cls_"}
CODE_TASKS = ("semalign_humaneval", "semalign_mbpp")


def list_tasks() -> list[str]:
    """The semalign_* task names shipped with the package (one YAML each)."""
    return sorted(p.stem for p in TASKS_DIR.glob("semalign_*.yaml"))


def task_groups() -> dict[str, list[str]]:
    """Names that stand for several tasks: ``semalign_cls`` (the suite) and ``semalign`` (all)."""
    names = list_tasks()
    groups = {g: [n for n in names if n.startswith(p)] for g, p in TASK_GROUPS_PREFIX.items()}
    groups["semalign"] = names
    return groups


def resolve_tasks(tasks, allow_builtin: bool = False, builtin_names=None) -> list[str]:
    """Expand groups and validate names; unknown names are an error listing the valid ones
    (or, with ``allow_builtin``, passed on to lm-eval when it knows them)."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    requested = [str(t).strip() for t in (tasks or []) if str(t).strip()]
    if not requested:
        raise InvalidParameterError(f"no task given; valid: {', '.join(list_tasks())}")
    known, groups, out = set(list_tasks()), task_groups(), []
    for name in requested:
        expanded = groups.get(name, [name])
        for task in expanded:
            builtin = allow_builtin and builtin_names and task in builtin_names
            if task not in known and not builtin:
                hint = "" if allow_builtin else " (lm-eval's own tasks need allow_builtin=True)"
                raise InvalidParameterError(
                    f"unknown task {task!r}{hint}; valid: {', '.join(sorted(known))}, "
                    f"or the groups {', '.join(sorted(groups))}"
                )
            if task not in out:
                out.append(task)
    return out


# ---------------------------------------------------------------------------------------------
# Model handling
# ---------------------------------------------------------------------------------------------


def _model_and_tokenizer(model, tokenizer):
    """(lm-eval LM or None, HF model or None, tokenizer, display name) from any accepted input."""
    if isinstance(model, LM):
        return model, None, tokenizer, type(model).__name__
    if isinstance(model, (str, Path)):
        model = load_model(str(model), verbose=False)
    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "stats"):
        return None, model.model, tokenizer or model.tokenizer, model.name
    if tokenizer is None:
        raise InvalidParameterError(
            "an in-memory model needs its tokenizer: evaluate(model, tasks, tokenizer=...) "
            "(or pass a LoadedModel / registry name)"
        )
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return None, model, tokenizer, name


def _tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS in front by default (Llama does, SmolLM2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _model_dtype_device(hf_model) -> tuple[str, str]:
    if hf_model is None:
        return "n/a", "cpu"
    param = next(hf_model.parameters(), None)
    if param is None:
        return "n/a", "cpu"
    return str(param.dtype).removeprefix("torch."), str(param.device)


@contextmanager
def _quiet_lm_eval(level=logging.ERROR):
    """lm-eval warns about every custom dataset and passed-in model; keep its errors only."""
    logger = logging.getLogger("lm_eval")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_settings(prompt_style, batch_size, max_new_tokens, num_samples, temperature):
    if prompt_style not in PROMPT_STYLES:
        raise InvalidParameterError(
            f"unknown prompt_style {prompt_style!r}; valid: {', '.join(PROMPT_STYLES)}"
        )
    for name, value in (
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
        ("num_samples", num_samples),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not number or temperature < 0:
        raise InvalidParameterError(f"temperature must be a number >= 0, got {temperature!r}")
    if num_samples > 1 and temperature == 0:
        raise InvalidParameterError(
            f"num_samples={num_samples} with temperature=0 repeats one greedy answer; "
            "set temperature > 0 (e.g. 0.8) for pass@k"
        )


def _check_chat_template(tokenizer, model_name: str) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidParameterError(
            f"model {model_name} has no chat template (prompt_style='model'); use "
            "prompt_style='transfer' or 'plain', or pass a tokenizer that has one"
        )


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def evaluate(
    model,
    tasks,
    limit: int | None = None,
    seed: int | None = 0,
    batch_size: int = 8,
    prompt_style: str = "transfer",
    max_new_tokens: int = 512,
    keep_samples: bool = False,
    num_samples: int = 1,
    temperature: float = 0.0,
    tokenizer=None,
    task_options: dict[str, dict] | None = None,
    allow_builtin: bool = False,
    bootstrap_iters: int = 1000,
    backend: str = "hf",
) -> dict[str, dict]:
    """Evaluate ``model`` on ``tasks``; return ``{task: record}``.

    ``model``: a :class:`~semalign_core.models.registry.LoadedModel`, a registry name or local
    path (loaded with ``load_model``), an in-memory HF causal LM (pass ``tokenizer``), or an
    ``lm_eval.api.model.LM`` (used as is; for tests and other back-ends).
    ``tasks``: names or a comma-separated string; ``semalign_cls`` and ``semalign`` expand to
    the classification suite and to every task (:func:`list_tasks`).
    ``limit``/``seed``: per-task subset by the data layer's rule (seeded sample of ``limit``
    examples, in file order; ``seed=None`` keeps the first ``limit``). ``seed`` also seeds
    lm-eval's Python/NumPy/torch generators (sampling).
    ``prompt_style``: "transfer" (LaTen's Tulu tags), "model" (the tokenizer's chat template) or
    "plain" (completion prompts); ``semalign_mmlu`` and the classification suite are always
    plain, and each record says which style it used.
    ``num_samples``/``temperature``: code tasks draw ``num_samples`` completions per problem
    (temperature > 0 needed for n > 1) and report pass@k for k in 1, 5, 10, 100 up to n; other
    generation tasks use the same temperature with one sample.
    ``task_options``: per task, e.g. ``{"semalign_mmlu": {"subjects": [...], "split": "val"},
    "semalign_gsm8k": {"answer_order": ["hashes", "last_number"]}}``.
    ``allow_builtin``: also accept lm-eval's own task names (hub data; needs network).
    ``backend``: "hf" (lm-eval's ``HFLM`` over the model) or "vllm" (the model written to a
    temporary folder under the cache, served by lm-eval's vLLM wrapper; a profile's choice is
    resolved by :func:`~semalign_core.evaluation.backends.choose_backend`). An ``LM`` passed in
    runs as it is. Every record names the backend that ran.
    """
    _check_settings(prompt_style, batch_size, max_new_tokens, num_samples, temperature)
    lm, hf_model, tok, model_name = _model_and_tokenizer(model, tokenizer)
    _check_backend(backend, lm)
    if prompt_style == "model":
        _check_chat_template(tok, model_name)
    with _quiet_lm_eval():
        names, ours = _task_names(tasks, allow_builtin, task_options)
        # BOS as the tokenizer does by default, in every style (chat templates that write it
        # themselves lose their copy in the task code), so plain tasks do not change with style.
        add_bos = tok is not None and _tokenizer_adds_bos(tok)
        settings = dict(
            model=model_name,
            batch_size=batch_size,
            add_bos_token=add_bos,
            seed=seed,
            limit=limit,
            max_new_tokens=max_new_tokens,
            num_samples=num_samples,
            temperature=float(temperature),
            prompt_style=prompt_style,
            task_options=task_options or {},
            keep_samples=keep_samples,
            bootstrap_iters=bootstrap_iters,
        )
        settings["max_length"] = _max_length(hf_model, tok)
        with _backend_lm(lm, hf_model, tok, backend, settings) as (lm, settings["backend"]):
            task_objs, output, settings["wall_s"] = _run_tasks(lm, tok, names, ours, settings)
    dtype, device = _model_dtype_device(hf_model)
    return {name: _record(name, task_objs[name], output, settings, dtype, device) for name in names}


def _hflm(hf_model, tokenizer, batch_size: int, add_bos: bool) -> HFLM:
    """lm-eval's wrapper of an in-memory HF model, with our batch size and BOS setting."""
    return HFLM(
        pretrained=hf_model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        add_bos_token=add_bos,
        max_length=_max_length(hf_model, tokenizer),
    )


@contextmanager
def _backend_lm(lm, hf_model, tokenizer, backend: str, settings: dict):
    """(the lm-eval model to run, its backend's name): ``lm`` itself when one was passed in,
    else an ``HFLM`` or, for "vllm", lm-eval's vLLM wrapper over the model exported to a
    temporary folder (removed, and the engine's memory freed, when the run is done)."""
    if lm is not None:
        yield lm, backends.backend_name(lm)
        return
    add_bos = settings["add_bos_token"]
    if backend == "hf":
        yield _hflm(hf_model, tokenizer, settings["batch_size"], add_bos), "hf"
        return
    root = paths.cache_dir() / "vllm-exports"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eval-", dir=root) as tmp:
        folder = backends.export_for_vllm(hf_model, tokenizer, Path(tmp) / "model")
        dtype, _ = _model_dtype_device(hf_model)
        vlm = backends.vllm_lm(
            folder,
            settings["batch_size"],
            dtype,
            settings["max_length"],
            settings["seed"],
            add_bos_token=add_bos,
        )
        try:
            yield vlm, "vllm"
        finally:
            backends.release(vlm)


def _check_backend(backend: str, lm) -> None:
    if backend not in backends.BACKENDS:
        raise InvalidParameterError(
            f"unknown backend {backend!r}; valid: {', '.join(backends.BACKENDS)} (a profile's "
            "'auto' is resolved by evaluation.backends.choose_backend)"
        )
    if lm is not None and backend != "hf":
        raise InvalidParameterError(
            f"backend={backend!r} applies to HF models; an lm-eval LM passed in runs as it is"
        )


def _run_tasks(lm, tokenizer, names: list[str], ours: list[str], settings: dict):
    """Build and configure the tasks, then run them through lm-eval: (task objects by name,
    lm-eval's output, seconds of the run). Our tasks apply ``tokenizer``'s chat template under
    prompt_style "model" and take their subset from the data layer."""
    style = settings["prompt_style"]
    scores_references = any(task_variant(n) == "nll" for n in ours)
    with (
        chat_tokenizer(tokenizer if style == "model" else None) as key,
        chat_tokenizer(tokenizer if scores_references else None) as reference_key,
    ):
        task_objs = _prepared_tasks(names, ours, settings, key, reference_key)
        # lm-eval's limit only when built-in tasks run (the data layer has subset ours)
        limit = settings["limit"] if len(ours) < len(names) else None
        start = time.perf_counter()
        output = _run(lm, task_objs, limit, settings["seed"], settings["bootstrap_iters"])
        return task_objs, output, time.perf_counter() - start


def _prepared_tasks(
    names: list[str], ours: list[str], settings: dict, tokenizer_key, reference_key=None
) -> dict:
    """lm-eval task objects by name: ours read the run's settings from the TaskManager's
    metadata; generation tasks get the decoding settings. ``reference_key``: the tokenizer that
    fits reference solutions into the model's window (the ``_nll`` tasks)."""
    runtime = {
        "prompt_style": settings["prompt_style"],
        "limit": settings["limit"],
        "seed": settings["seed"],
        "tokenizer_key": tokenizer_key,
        "reference_tokenizer_key": reference_key,
        "max_length": settings.get("max_length"),
        "add_bos": settings["add_bos_token"],
        "options": dict(settings["task_options"]),
    }
    manager = TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=len(ours) < len(names),
        metadata={"semalign": runtime},
    )
    task_objs = _build_tasks(manager, names)
    for name, task in task_objs.items():
        _configure_task(
            name,
            task,
            ours,
            settings["prompt_style"],
            settings["max_new_tokens"],
            settings["num_samples"],
            settings["temperature"],
        )
    return task_objs


def _task_names(tasks, allow_builtin: bool, task_options) -> tuple[list[str], list[str]]:
    """(every task to run, those that are ours), checked; lm-eval's names only when allowed."""
    builtin = set(TaskManager(include_defaults=True).all_tasks) if allow_builtin else None
    names = resolve_tasks(tasks, allow_builtin, builtin)
    ours = [n for n in names if n in set(list_tasks())]
    _check_task_options(task_options, ours)
    return names, ours


def _check_task_options(task_options, ours) -> None:
    if not task_options:
        return
    if not isinstance(task_options, dict):
        raise InvalidParameterError("task_options must be a dict {task name: {option: value}}")
    stray = sorted(set(task_options) - set(ours))
    if stray:
        raise InvalidParameterError(
            f"task_options names task(s) not being evaluated: {', '.join(stray)}; "
            f"evaluated: {', '.join(ours)}"
        )


def _max_length(hf_model, tokenizer) -> int | None:
    """The context window HFLM should assume (its own guess falls back to 2048)."""
    config = getattr(hf_model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _build_tasks(manager, names: list[str]) -> dict:
    """lm-eval task objects by name; errors of our data layer propagate unchanged."""
    try:
        task_dict = get_task_dict(names, manager)
    except ArtifactError:
        raise
    except (ConnectionError, OSError) as err:  # lm-eval built-in tasks fetch hub datasets
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OfflineError(
            f"could not load the data of an lm-eval built-in task ({first}); "
            "built-in tasks need the Hugging Face hub or its local cache"
        ) from None
    flat = {}

    def walk(d):
        for value in d.values():
            if isinstance(value, dict):
                walk(value)
            else:
                flat[value.config.task] = value

    walk(task_dict)
    return flat


def _configure_task(name, task, ours, style, max_new_tokens, num_samples, temperature) -> None:
    """Apply decoding settings to a generation task (stop strings by prompt style)."""
    if task.get_config("output_type") != "generate_until":
        return
    gen = {
        "max_gen_toks": max_new_tokens,
        "do_sample": temperature > 0,
        "temperature": float(temperature),
    }
    if name in ours:
        gen["until"] = generation_until(task_family(name), style)
    task.set_config("generation_kwargs", gen, update=True)
    if name in CODE_TASKS:
        task.set_config("repeats", num_samples)


def _run(lm, task_objs: dict, limit, seed, bootstrap_iters) -> dict:
    """lm-eval's ``evaluate`` on ready task objects, seeded as ``simple_evaluate`` seeds.

    (``simple_evaluate`` would also shell out to git and collect environment details that
    :func:`semalign_core.records.provenance` already records.)
    """
    seed_value = 0 if seed is None else seed
    random.seed(seed_value)
    np.random.seed(seed_value)
    torch.manual_seed(seed_value)
    for task in task_objs.values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed_value)
    return lm_eval_evaluate(
        lm=lm,
        task_dict=task_objs,
        limit=limit,
        log_samples=True,
        bootstrap_iters=bootstrap_iters,
        confirm_run_unsafe_code=True,  # generated code runs in semalign_core's sandbox
    )


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _metrics(result: dict) -> tuple[dict, dict]:
    """lm-eval's "metric,filter" keys -> ({metric: value}, {metric: stderr or None})."""
    values, errors = {}, {}
    for key, value in result.items():
        if "," not in key or key == "alias":
            continue
        metric, _filter = key.split(",", 1)
        if metric.endswith("_stderr"):
            number = isinstance(value, (int, float))
            errors[metric.removesuffix("_stderr")] = value if number else None
        else:
            values[metric] = value
    return values, {m: errors.get(m) for m in values}


def _bootstrap_macro_f1(items, iters: int, seed) -> float | None:
    """Bootstrap standard error of macro-F1 (lm-eval gives none for custom aggregations) over
    (gold, prediction) pairs."""
    if len(items) < 2 or iters < 2:
        return None
    rng = np.random.default_rng(0 if seed is None else seed)
    n = len(items)
    stats = []
    for _ in range(iters):
        sample = [items[i] for i in rng.integers(0, n, n)]
        stats.append(macro_f1([g for g, _ in sample], [p for _, p in sample]))
    return float(np.std(stats, ddof=1))


def _decoding(task, settings) -> dict:
    output_type = task.get_config("output_type")
    if output_type == "loglikelihood":  # the _nll tasks: a given text scored, nothing chosen
        return {"method": "reference_loglikelihood"}
    if output_type != "generate_until":
        return {"method": "loglikelihood"}
    gen = dict(task.get_config("generation_kwargs") or {})
    sampled = bool(gen.get("do_sample"))
    return {
        "method": "sampling" if sampled else "greedy",
        "temperature": float(gen.get("temperature", 0.0)) if sampled else 0.0,
        "num_samples": int(task.get_config("repeats") or 1),
        "max_new_tokens": gen.get("max_gen_toks"),
        "until": list(gen.get("until") or []),
    }


def _sample_view(sample: dict, keep_metrics) -> dict:
    """A compact per-example record: id, prompt, target, raw and filtered outputs, metrics."""
    doc = sample.get("doc") or {}
    resps = sample.get("resps") or []
    if sample.get("arguments") and len(sample["arguments"]) > 1:  # multiple choice
        response = [r[0][0] if r and isinstance(r[0], (tuple, list)) else r for r in resps]
    else:
        response = resps[0] if resps else []
    out = {
        "doc_id": doc.get("doc_id", sample.get("doc_id")),
        "prompt": sample["arguments"][0][0] if sample.get("arguments") else None,
        "target": sample.get("target"),
        "response": response,
        "filtered": sample.get("filtered_resps"),
    }
    for metric in keep_metrics:
        if metric in sample:
            value = sample[metric]
            out[metric] = list(value) if isinstance(value, tuple) else value
    return out


def _record(name, task, output, settings, dtype, device) -> dict:
    result = output["results"].get(name, {})
    values, errors = _metrics(result)
    samples = output.get("samples", {}).get(name, [])
    if "macro_f1" in values and errors.get("macro_f1") is None:
        items = [tuple(s["macro_f1"]) for s in samples if "macro_f1" in s]
        errors["macro_f1"] = _bootstrap_macro_f1(
            items, settings["bootstrap_iters"], settings["seed"]
        )
    data = getattr(getattr(task, "dataset", None), "semalign_provenance", None)
    style = task.eval_docs[0].get("prompt_style") if data and len(task.eval_docs) else None
    n_samples = output.get("n-samples", {}).get(name, {})
    record = {
        "task": name,
        "version": output.get("versions", {}).get(name),
        "n": n_samples.get("effective", len(samples)),
        "shots": 0,
        "prompt_style": style or settings["prompt_style"],
        "decoding": _decoding(task, settings),
        "batch_size": settings["batch_size"],
        "padding_side": PADDING_SIDE.get(task.get_config("output_type")),
        "add_bos_token": settings["add_bos_token"],
        "model": settings["model"],
        "backend": settings["backend"],
        "metrics": {k: _finite(v) for k, v in values.items()},
        "stderr": {k: _finite(v) for k, v in errors.items()},
        "data": data or {"benchmark": name, "source": "lm-eval built-in task (hub data)"},
        "settings": {
            k: settings[k]
            for k in (
                "limit",
                "seed",
                "max_new_tokens",
                "num_samples",
                "temperature",
                "task_options",
            )
        },
        "wall_s_all_tasks": round(settings["wall_s"], 3),
        "provenance": provenance(
            seed=settings["seed"],
            data_sources=(data or {}).get("sources", {}),
            device=device,
            dtype=dtype,
        ),
    }
    if settings["keep_samples"]:
        record["samples"] = [_sample_view(s, values) for s in samples]
    return record


def _finite(value):
    """JSON-safe metric value: a plain float, None for NaN/inf or lm-eval's "N/A"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def format_table(records: dict[str, dict]) -> str:
    """One line per task and metric: value ± stderr, n, prompt style, decoding."""
    rows = [("task", "metric", "value", "stderr", "n", "style", "decoding")]
    for name, rec in records.items():
        for metric, value in rec["metrics"].items():
            err = rec["stderr"].get(metric)
            rows.append(
                (
                    name,
                    metric,
                    "-" if value is None else f"{value:.4f}",
                    "-" if err is None else f"{err:.4f}",
                    str(rec["n"]),
                    rec["prompt_style"],
                    rec["decoding"]["method"],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semalign_core.evaluation.harness",
        description="Evaluate a model on the semalign lm-eval tasks (offline).",
    )
    parser.add_argument("--model", required=True, help="registry name or local model directory")
    parser.add_argument(
        "--tasks",
        required=True,
        help=f"comma-separated; tasks: {', '.join(list_tasks())}; groups: semalign_cls, semalign",
    )
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-style", default="transfer", choices=PROMPT_STYLES)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--output", type=Path, default=None, help="write the records as JSON here")
    parser.add_argument("--keep-samples", action="store_true")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model, dtype=args.dtype, verbose=False)
        records = evaluate(
            model,
            args.tasks,
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            prompt_style=args.prompt_style,
            max_new_tokens=args.max_new_tokens,
            num_samples=args.num_samples,
            temperature=args.temperature,
            keep_samples=args.keep_samples,
        )
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(records))
    if args.output:
        write_json_atomic(args.output, {"records": records})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
