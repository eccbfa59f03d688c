"""Fine-tuned teachers (SemAlign Table 2): "the profile's source, fine-tuned on task T", made here.

The paper transfers from teachers that were fine-tuned on the task's domain (CodeLlama-13B-Python,
WizardCoder-Python-13B → Llama-2-7B-Chat on HumanEval/MBPP). Offline on a CPU no such pair exists,
so below ``paper`` a teacher is *made*: the profile's SemAlign source is fine-tuned on a
classification task (plain SFT of its decoder blocks on ``prompt + " " + label word``, the text
the evaluation scores; :mod:`semalign_core.data.cls_transfer`). The teacher then knows the task
much better than the target, which is what lets transfer methods be told apart.

``TEACHERS[profile][task]`` (:mod:`semalign_core.experiments.budgets`) names the teachers of each
profile and task: ``FINETUNED`` (made from ``TEACHER_RECIPES``) or registry names of hub teachers
(``paper``: the two code teachers).

This module makes teachers (fine-tuning with the transfer registry's SFT, evaluating with the
harness before and after); the cache they live in, the report in it and loading a teacher are
:mod:`semalign_core.models.teachers`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from semalign_core.data.cls_transfer import eval_task_options, load_cls_transfer
from semalign_core.devices import default_device
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.evaluation.harness import evaluate
from semalign_core.experiments.budgets import (
    CROSS_FAMILY_BASES,
    CROSS_FAMILY_TASKS,
    TEACHER_RECIPES,
    TEACHERS,
)
from semalign_core.lm import sharding
from semalign_core.models.registry import LoadedModel, load_model
from semalign_core.models.teacher_recipe import FINETUNED, FINETUNED_CROSS, TeacherRecipe
from semalign_core.models.teachers import (
    Teacher,
    load_teacher,
    made_teacher_dir,
    read_report,
    save_teacher,
)
from semalign_core.profiles import get_profile
from semalign_core.records import is_secondary_process
from semalign_core.transfer.registry import run_method

# --------------------------------------------------------------------------- a profile's teachers


def teacher_names(profile: str, task: str) -> tuple[str, ...]:
    """The teachers of ``task`` at ``profile`` (one-line error when there are none)."""
    names = TEACHERS.get(profile, {}).get(task)
    if not names:
        known = ", ".join(f"{t}: {', '.join(v)}" for t, v in TEACHERS.get(profile, {}).items())
        raise InvalidParameterError(
            f"profile {profile!r} has no fine-tuned teacher for task "
            f"{task!r}; it has {known or 'none'}"
        )
    return names


def teacher_tasks(profile: str, name: str | None = None) -> tuple[str, ...]:
    """The tasks teacher ``name`` exists for at ``profile`` (``FINETUNED_CROSS``: the
    cross-family teacher's; None: those with any of the profile's Table 2 teachers)."""
    if name == FINETUNED_CROSS:
        return CROSS_FAMILY_TASKS.get(profile, ())
    return tuple(TEACHERS.get(profile, {}))


def teacher_recipe(profile: str, task: str, **overrides) -> TeacherRecipe:
    """The profile's recipe for ``task`` with ``overrides`` (fields of :class:`TeacherRecipe`)."""
    if profile not in TEACHER_RECIPES:
        raise InvalidParameterError(
            f"profile {profile!r} makes no teachers (it uses hub "
            f"teachers); profiles that do: {', '.join(TEACHER_RECIPES)}"
        )
    unknown = sorted(set(overrides) - set(asdict(TEACHER_RECIPES[profile])))
    if unknown:
        raise InvalidParameterError(f"TeacherRecipe has no field(s) {', '.join(unknown)}")
    return replace(TEACHER_RECIPES[profile], task=task, **overrides)


def cross_family_recipe(profile: str, task: str) -> TeacherRecipe:
    """The recipe of the cross-family teacher of ``task``: the profile's
    :data:`~semalign_core.experiments.budgets.CROSS_FAMILY_BASES` model fine-tuned with the
    profile's teacher settings (one-line error where the profile has no such setting)."""
    tasks = teacher_tasks(profile, FINETUNED_CROSS)
    if task not in tasks:
        raise InvalidParameterError(
            f"profile {profile!r} has no cross-family teacher for task {task!r}; "
            f"it has one for: {', '.join(tasks) or 'no task'} (budgets.CROSS_FAMILY_TASKS)"
        )
    return teacher_recipe(profile, task, base=CROSS_FAMILY_BASES[profile])


def resolve_teacher(profile: str, task: str, name: str = FINETUNED) -> Teacher:
    """What :mod:`semalign_core.models.teachers` takes for teacher ``name`` of ``task``: the
    profile's recipe for ``FINETUNED``, the cross-family recipe for ``FINETUNED_CROSS``, else
    ``name`` itself (a hub teacher's registry name)."""
    if name == FINETUNED_CROSS:
        return cross_family_recipe(profile, task)
    return teacher_recipe(profile, task) if name == FINETUNED else name


def check_teacher(profile: str, task: str, name: str) -> None:
    """One-line error unless ``name`` is a teacher of ``task`` at ``profile``."""
    if name == FINETUNED_CROSS:
        cross_family_recipe(profile, task)
        return
    names = teacher_names(profile, task)
    if name not in names:
        raise InvalidParameterError(
            f"teacher {name!r} is not a teacher of {task!r} at profile "
            f"{profile!r}; choose one of {', '.join(names)}"
        )


def load_profile_teacher(
    profile: str,
    task: str,
    name: str = FINETUNED,
    dtype: str = "float32",
    target_vocab: int | None = None,
    verbose: bool = False,
) -> tuple[LoadedModel, dict | None]:
    """(LoadedModel, marker info or None) of a profile's teacher, made first if it must be
    (``target_vocab``: see :func:`~semalign_core.models.teachers.load_teacher`)."""
    check_teacher(profile, task, name)
    teacher = resolve_teacher(profile, task, name)
    if isinstance(teacher, TeacherRecipe):
        ensure_teacher(teacher, verbose, get_profile(profile).train_engine)
    return load_teacher(
        teacher, dtype=dtype, device=default_device(), target_vocab=target_vocab, verbose=verbose
    )


# --------------------------------------------------------------------------- making a teacher


def evaluate_cls(model, tokenizer, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """Accuracy on the task's held-out split (fixed subset: seed 0), as the tables evaluate it."""
    name = f"semalign_cls_{task}"
    t0 = time.perf_counter()
    out = evaluate(
        model,
        [name],
        limit=limit,
        seed=0,
        batch_size=batch_size,
        prompt_style="plain",
        tokenizer=tokenizer,
        task_options=eval_task_options(task),
    )[name]
    return {
        "acc": out["metrics"].get("acc"),
        "macro_f1": out["metrics"].get("macro_f1"),
        "stderr": out["stderr"].get("acc"),
        "n": out["n"],
        "split": out["data"].get("split"),
        "sources": out["data"].get("sources", {}),
        "wall_s": round(time.perf_counter() - t0, 3),
    }


def finetune(model, tokenizer, recipe: TeacherRecipe):
    """Plain SFT of ``model`` (in place) on the recipe's records; returns (Split, result)."""
    train = load_cls_transfer(
        recipe.task,
        "train",
        limit=recipe.n_train,
        seed=None if recipe.n_train is None else recipe.seed,
    )
    result = run_method(
        "sft",
        model,
        model,
        train.records,
        [],
        tokenizer=tokenizer,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        micro_batch_size=recipe.micro_batch_size,
        lr=recipe.lr,
        max_length=recipe.max_length,
        prompt_style="plain",
        trainable=recipe.trainable,
        seed=recipe.seed,
        progress=False,
    )
    return train, result


def ensure_teacher(
    recipe: TeacherRecipe, verbose: bool = True, train_engine: str = "single"
) -> Path:
    """Folder of the fine-tuned teacher of ``recipe``, made on first use (then reused). Where
    ``train_engine`` is ``"fsdp"`` and several GPUs are visible it is made by one process per
    GPU (:func:`semalign_core.lm.sharding.launch_command`), its SFT sharded over them."""
    cached = made_teacher_dir(recipe)
    if cached is not None:
        return cached
    if verbose:
        print(
            f"fine-tuning {recipe.base} on {recipe.task} (once; cached as {recipe.cache_name()})",
            flush=True,
        )
    if sharding.launches_several(train_engine):
        return _make_in_processes(recipe, train_engine)
    path = _make(recipe)
    engine = sharding.current_engine()
    if engine.sharded:  # one of a launch's processes: the others wait for the first to save
        engine.barrier()
        path = made_teacher_dir(recipe)
    if path is None:
        raise ArtifactError(f"the teacher {recipe.cache_name()} was not saved")
    if verbose:
        after = read_report(recipe)["report"]
        print(
            f"teacher {recipe.cache_name()}: acc {after['before']['acc']:.3f} -> "
            f"{after['after']['acc']:.3f} (n={after['after']['n']}) in {after['wall_s']:.0f} s",
            flush=True,
        )
    return path


def _make(recipe: TeacherRecipe) -> Path | None:
    """Fine-tune, evaluate and save the teacher of ``recipe`` in this process (None: one of a
    launch's processes other than the first, which alone evaluates and saves)."""
    t0 = time.perf_counter()
    base = load_model(recipe.base, dtype=recipe.dtype, device=default_device(), verbose=False)
    evaluation = (recipe.task, recipe.eval_limit, recipe.eval_batch_size)
    first = not is_secondary_process()
    before = evaluate_cls(base.model, base.tokenizer, *evaluation) if first else None
    train, result = finetune(base.model, base.tokenizer, recipe)
    if not first:
        return None
    base.model.eval()
    after = evaluate_cls(base.model, base.tokenizer, *evaluation)
    report = _making_report(train, result.stages[0], before, after, time.perf_counter() - t0)
    return save_teacher(base.model, base.tokenizer, recipe, report)


def _make_in_processes(recipe: TeacherRecipe, train_engine: str) -> Path:
    """Make the teacher by a launch of one process per GPU (this module's command line)."""
    command = [
        *sharding.local_launch_command(train_engine),
        "-m",
        "semalign_core.experiments.teachers",
        json.dumps(asdict(recipe)),
    ]
    rc = subprocess.run(command, check=False).returncode
    path = made_teacher_dir(recipe)
    if rc != 0 or path is None:
        raise ArtifactError(f"making the teacher {recipe.cache_name()} failed (exit {rc})")
    return path


def _making_report(train, stage: dict, before: dict, after: dict, wall_s: float) -> dict:
    """What the teacher's marker says about its making: data, losses, cost, before/after scores."""
    gain = (
        None
        if before["acc"] is None or after["acc"] is None
        else round(100 * (after["acc"] - before["acc"]), 2)
    )
    return {
        "steps": stage["steps"],
        "n_train": len(train),
        "data": train.provenance(),
        "loss_first": stage["losses"][0],
        "loss_last": stage["losses"][-1],
        "losses": [round(x, 5) for x in stage["losses"]],
        "train_wall_s": round(stage["wall_s"], 3),
        "tokens": stage["tokens"],
        "engine": sharding.current_engine().name,  # "single process" or "fsdp xN"
        "before": before,
        "after": after,
        "gain_points": gain,
        "wall_s": round(wall_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m semalign_core.experiments.teachers RECIPE_JSON``: make that teacher (what
    :func:`ensure_teacher` launches, once per GPU, where the profile shards its training)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise InvalidParameterError("usage: python -m semalign_core.experiments.teachers RECIPE")
    sharding.current_engine()  # one of a launch's processes: its GPU, before the model loads
    ensure_teacher(TeacherRecipe(**json.loads(args[0])), verbose=False)
    return 0


__all__ = [
    "TEACHERS",
    "TEACHER_RECIPES",
    "check_teacher",
    "cross_family_recipe",
    "ensure_teacher",
    "evaluate_cls",
    "finetune",
    "load_profile_teacher",
    "resolve_teacher",
    "teacher_names",
    "teacher_recipe",
    "teacher_tasks",
]


if __name__ == "__main__":
    raise SystemExit(main())
