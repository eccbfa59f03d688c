"""Fine-tuned teachers (SemAlign Table 2): "the profile's source, fine-tuned on task T", cached.

The paper transfers from teachers that were fine-tuned on the task's domain (CodeLlama-13B-Python,
WizardCoder-Python-13B → Llama-2-7B-Chat on HumanEval/MBPP). Offline on a CPU no such pair exists,
so below ``paper`` a teacher is *made*: the profile's SemAlign source is fine-tuned on a
classification task (plain SFT of its decoder blocks on ``prompt + " " + label word``, the text
the evaluation scores; :mod:`semalign_core.data.cls_transfer`). The teacher then knows the task
much better than the target, which is what lets transfer methods be told apart.

``TEACHERS[profile][task]`` names the teachers of each profile and task: ``FINETUNED`` (made from
:data:`TEACHER_RECIPES`) or registry names of hub teachers (``paper``: the two code teachers).

A made teacher is cached like the derived student: ``<model cache>/<base>-ft-<task>-<hash>``,
keyed by a hash of its recipe (base model, task, data, optimisation, evaluation protocol), with
``semalign_teacher.json`` holding the recipe and a report (steps, data and its sha256, losses,
wall time, and the score of the base model before and of the teacher after fine-tuning on the
held-out evaluation subset). A changed recipe makes a new directory; an existing one is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from semalign_core.errors import InvalidParameterError

FINETUNED = "ft-source"  # teacher key: the profile's source fine-tuned on the task
MARKER = "semalign_teacher.json"
VERSION = 1


@dataclass(frozen=True)
class TeacherRecipe:
    """How a fine-tuned teacher is made (every field is part of its cache key).

    Attributes:
        base: registry name of the model fine-tuned (the profile's SemAlign source).
        task: classification task (:func:`~semalign_core.data.cls_transfer.cls_transfer_tasks`).
        n_train: records of the task's ``train`` part (seeded subset; None: all of it).
        epochs, batch_size, micro_batch_size, lr, max_length: plain SFT settings.
        trainable: "layers" (decoder blocks + final norm; embeddings and the tied head frozen) or "full".
        seed: data subset, data order and initialisation seed.
        eval_limit, eval_batch_size: the before/after evaluation (held-out split, fixed seed 0).
        dtype: dtype the base is loaded in for fine-tuning (the teacher is saved in it).
    """

    base: str
    task: str = "sst2"
    n_train: int | None = 256
    epochs: int = 1
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 64
    trainable: str = "layers"
    seed: int = 0
    eval_limit: int | None = 200
    eval_batch_size: int = 32
    dtype: str = "float32"

    def key(self) -> str:
        blob = json.dumps({"recipe": asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cache_name(self) -> str:
        return f"{self.base}-ft-{self.task}-{self.key()}"


# A recipe per profile: seconds at smoke, about a minute on 2 CPU cores at cpu. gpu-small fine-tunes
# its source the same way (more data); paper uses the published hub teachers instead (TEACHERS).
# The evaluation settings equal the profile's CLS_BUDGETS (transfer_table), so Table 2's teacher
# row reuses the evaluation made with the teacher instead of repeating it.
TEACHER_RECIPES: dict[str, TeacherRecipe] = {
    "smoke": TeacherRecipe("tiny-source", n_train=16, batch_size=8, micro_batch_size=8, lr=1e-3, eval_limit=8,
                           eval_batch_size=8),
    "cpu": TeacherRecipe("smollm2-135m-instruct", n_train=128, batch_size=8, micro_batch_size=8),
    "gpu-small": TeacherRecipe("smollm2-1.7b-instruct", n_train=None, epochs=2, lr=2e-5, eval_limit=None,
                               dtype="bfloat16"),
}
TEACHERS: dict[str, dict[str, tuple[str, ...]]] = {
    "smoke": {"sst2": (FINETUNED,)},
    "cpu": {"sst2": (FINETUNED,)},
    "gpu-small": {"sst2": (FINETUNED,)},
    "paper": {"humaneval": ("codellama-13b-python", "wizardcoder-python-13b"),
              "mbpp": ("codellama-13b-python", "wizardcoder-python-13b")},
}


def teacher_names(profile: str, task: str) -> tuple[str, ...]:
    """The teachers of ``task`` at ``profile`` (one-line error when there are none)."""
    names = TEACHERS.get(profile, {}).get(task)
    if not names:
        known = ", ".join(f"{t}: {', '.join(v)}" for t, v in TEACHERS.get(profile, {}).items()) or "none"
        raise InvalidParameterError(f"profile {profile!r} has no fine-tuned teacher for task {task!r}; "
                                    f"it has {known}")
    return names


def teacher_recipe(profile: str, task: str, **overrides) -> TeacherRecipe:
    """The profile's recipe for ``task`` with ``overrides`` (fields of :class:`TeacherRecipe`)."""
    if profile not in TEACHER_RECIPES:
        raise InvalidParameterError(f"profile {profile!r} makes no teachers (it uses hub teachers); "
                                    f"profiles that do: {', '.join(TEACHER_RECIPES)}")
    unknown = sorted(set(overrides) - set(asdict(TEACHER_RECIPES[profile])))
    if unknown:
        raise InvalidParameterError(f"TeacherRecipe has no field(s) {', '.join(unknown)}")
    return replace(TEACHER_RECIPES[profile], task=task, **overrides)


def teacher_dir(recipe: TeacherRecipe) -> Path:
    from semalign_core.paths import model_cache_dir

    return model_cache_dir() / recipe.cache_name()


def read_report(recipe: TeacherRecipe) -> dict | None:
    """The cached teacher's marker (recipe, key, report) if it exists and matches the recipe."""
    marker = teacher_dir(recipe) / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if info.get("key") == recipe.key() else None


# --------------------------------------------------------------------------- making a teacher


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_cls(model, tokenizer, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """Accuracy on the task's held-out split (fixed subset: seed 0), as the tables evaluate it."""
    from semalign_core.data.cls_transfer import eval_task_options
    from semalign_core.evaluation.harness import evaluate

    name = f"semalign_cls_{task}"
    t0 = time.perf_counter()
    out = evaluate(model, [name], limit=limit, seed=0, batch_size=batch_size, prompt_style="plain",
                   tokenizer=tokenizer, task_options=eval_task_options(task))[name]
    return {"acc": out["metrics"].get("acc"), "macro_f1": out["metrics"].get("macro_f1"),
            "stderr": out["stderr"].get("acc"), "n": out["n"], "split": out["data"].get("split"),
            "sources": out["data"].get("sources", {}), "wall_s": round(time.perf_counter() - t0, 3)}


def finetune(model, tokenizer, recipe: TeacherRecipe):
    """Plain SFT of ``model`` (in place) on the recipe's records; returns (records Split, result)."""
    from semalign_core.transfer.registry import run_method
    from semalign_core.data.cls_transfer import load_cls_transfer

    train = load_cls_transfer(recipe.task, "train", limit=recipe.n_train,
                              seed=None if recipe.n_train is None else recipe.seed)
    result = run_method("sft", model, model, train.records, [], tokenizer=tokenizer, epochs=recipe.epochs,
                        batch_size=recipe.batch_size, micro_batch_size=recipe.micro_batch_size, lr=recipe.lr,
                        max_length=recipe.max_length, prompt_style="plain", trainable=recipe.trainable,
                        seed=recipe.seed, progress=False)
    return train, result


def ensure_teacher(recipe: TeacherRecipe, verbose: bool = True) -> Path:
    """Directory of the fine-tuned teacher of ``recipe``, made on first use (then reused)."""
    from semalign_core.models.registry import load_model

    out_dir = teacher_dir(recipe)
    if read_report(recipe) is not None:
        return out_dir
    if verbose:
        print(f"fine-tuning {recipe.base} on {recipe.task} (once; cached in {out_dir})", flush=True)
    t0 = time.perf_counter()
    base = load_model(recipe.base, dtype=recipe.dtype, device=_device(), verbose=False)
    before = evaluate_cls(base.model, base.tokenizer, recipe.task, recipe.eval_limit, recipe.eval_batch_size)
    train, result = finetune(base.model, base.tokenizer, recipe)
    base.model.eval()
    after = evaluate_cls(base.model, base.tokenizer, recipe.task, recipe.eval_limit, recipe.eval_batch_size)
    stage = result.stages[0]
    report = {"steps": stage["steps"], "n_train": len(train), "data": train.provenance(),
              "loss_first": stage["losses"][0], "loss_last": stage["losses"][-1],
              "losses": [round(x, 5) for x in stage["losses"]], "train_wall_s": round(stage["wall_s"], 3),
              "tokens": stage["tokens"], "before": before, "after": after,
              "gain_points": None if before["acc"] is None or after["acc"] is None
              else round(100 * (after["acc"] - before["acc"]), 2),
              "wall_s": round(time.perf_counter() - t0, 3)}
    _save(base.model, base.tokenizer, out_dir, {"key": recipe.key(), "recipe": asdict(recipe), "report": report})
    if verbose:
        print(f"teacher {recipe.cache_name()}: acc {before['acc']:.3f} -> {after['acc']:.3f} "
              f"(n={after['n']}) in {report['wall_s']:.0f} s", flush=True)
    return out_dir


def _save(model, tokenizer, out_dir: Path, info: dict) -> None:
    """Save through a temporary directory and rename it into place (a killed run leaves no half teacher)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------- loading


def teacher_identity(profile: str, task: str, name: str = FINETUNED) -> dict[str, Any]:
    """What identifies a teacher in a result's config: the recipe and its key, or the hub model."""
    if name == FINETUNED:
        recipe = teacher_recipe(profile, task)
        return {"teacher": name, "base": recipe.base, "recipe": asdict(recipe), "recipe_key": recipe.key()}
    return {"teacher": name, "model": name}


def load_teacher(profile: str, task: str, name: str = FINETUNED, dtype: str = "float32",
                 target_vocab: int | None = None, verbose: bool = False):
    """(LoadedModel, marker info or None) of a teacher: made (and cached) or a registry/hub model.

    ``target_vocab``: a hub teacher whose vocabulary is larger than the target's (CodeLlama-Python
    has 32,016 rows, Llama-2 32,000) keeps its first ``target_vocab`` rows, as the paper does.
    """
    from semalign_core.models.registry import load_model

    if name not in teacher_names(profile, task):
        raise InvalidParameterError(f"teacher {name!r} is not a teacher of {task!r} at profile {profile!r}; "
                                    f"choose one of {', '.join(teacher_names(profile, task))}")
    if name != FINETUNED:
        loaded = load_model(name, dtype=dtype, device=_device(), verbose=verbose)
        if target_vocab is not None:
            truncate_vocab(loaded.model, target_vocab)
        return loaded, None
    recipe = teacher_recipe(profile, task)
    path = ensure_teacher(recipe, verbose=verbose)
    loaded = load_model(str(path), dtype=dtype, device=_device(), verbose=False)
    loaded.name, loaded.origin = f"{recipe.base}+ft-{task}", "finetuned"
    return loaded, read_report(recipe)


def truncate_vocab(model, n: int) -> None:
    """Keep the first ``n`` rows of the embedding and LM head (no-op when it has ``n`` or fewer)."""
    if model.get_input_embeddings().weight.shape[0] > n:
        model.resize_token_embeddings(n)


__all__ = ["FINETUNED", "TEACHERS", "TEACHER_RECIPES", "TeacherRecipe", "ensure_teacher", "evaluate_cls",
           "finetune", "load_teacher", "read_report", "teacher_dir", "teacher_identity", "teacher_names",
           "teacher_recipe", "truncate_vocab"]
