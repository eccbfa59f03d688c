"""Teachers on disk: the cache of made (fine-tuned) teachers, and loading any teacher.

A teacher is either a :class:`~semalign_core.models.teacher_recipe.TeacherRecipe` (a model made by
fine-tuning, cached in ``<model cache>/<base>-ft-<task>-<key>``) or the registry name of a hub
teacher (the paper's code teachers). A made teacher's folder holds ``semalign_teacher.json`` with
its key, recipe and the report of its making; a changed recipe is another folder. Making teachers
(fine-tuning and evaluating, which need higher layers) is :mod:`semalign_core.experiments.teachers`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semalign_core.errors import ArtifactError
from semalign_core.models.identity import folder_identity
from semalign_core.models.registry import LoadedModel, is_standin, load_model, model_identity
from semalign_core.models.standins import standin_root
from semalign_core.models.teacher_recipe import FINETUNED, TeacherRecipe
from semalign_core.paths import model_cache_dir
from semalign_core.records import atomic_write_dir

MARKER = "semalign_teacher.json"
Teacher = TeacherRecipe | str  # a made teacher's recipe, or a hub teacher's registry name


def teacher_dir(recipe: TeacherRecipe) -> Path:
    """Where the teacher of ``recipe`` is cached (whether or not it was made); a stand-in's
    teachers apart from the real model's (same recipe, other weights)."""
    root = standin_root() if is_standin(recipe.base) else model_cache_dir()
    return root / recipe.cache_name()


def read_report(recipe: TeacherRecipe) -> dict | None:
    """The cached teacher's marker (key, recipe, report) if it exists and matches the recipe."""
    try:
        info = json.loads((teacher_dir(recipe) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if info.get("key") == recipe.key() else None


def made_teacher_dir(recipe: TeacherRecipe) -> Path | None:
    """The folder of the teacher of ``recipe`` if it was made, else None."""
    return teacher_dir(recipe) if read_report(recipe) is not None else None


def save_teacher(model, tokenizer, recipe: TeacherRecipe, report: dict[str, Any]) -> Path:
    """Write a made teacher and its marker into its cache folder, atomically; returns the folder."""
    info = {"key": recipe.key(), "recipe": asdict(recipe), "report": report}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    return atomic_write_dir(teacher_dir(recipe), write)


def load_teacher(
    teacher: Teacher,
    dtype: str = "float32",
    device: str = "cpu",
    target_vocab: int | None = None,
    verbose: bool = False,
) -> tuple[LoadedModel, dict | None]:
    """(LoadedModel, marker info or None) of a made teacher (it must exist) or a hub teacher.

    ``target_vocab``: a teacher whose vocabulary is larger than the target's (CodeLlama-Python has
    32,016 rows, Llama-2 32,000) keeps its first ``target_vocab`` rows, as the paper does.
    """
    if isinstance(teacher, TeacherRecipe):
        info = read_report(teacher)
        if info is None:
            raise ArtifactError(
                f"teacher {teacher.cache_name()} was never made; make it with "
                "semalign_core.experiments.teachers.ensure_teacher(recipe)"
            )
        loaded = load_model(str(teacher_dir(teacher)), dtype=dtype, device=device, verbose=False)
        loaded.name, loaded.origin = f"{teacher.base}+ft-{teacher.task}", "finetuned"
    else:
        loaded, info = load_model(teacher, dtype=dtype, device=device, verbose=verbose), None
    if target_vocab is not None:
        truncate_vocab(loaded.model, target_vocab)
    return loaded, info


def teacher_identity(teacher: Teacher) -> dict[str, Any]:
    """What identifies a teacher in a result's config: the recipe and its key, or the hub model."""
    if isinstance(teacher, TeacherRecipe):
        return {
            "teacher": FINETUNED,
            "base": teacher.base,
            "recipe": asdict(teacher),
            "recipe_key": teacher.key(),
        }
    return {"teacher": teacher, "model": teacher}


def teacher_model_identity(teacher: Teacher) -> dict[str, Any]:
    """The files' identity (:func:`~semalign_core.models.registry.model_identity`) of a teacher:
    a made teacher's folder (None hashes when it was never made), or the hub teacher's."""
    if isinstance(teacher, TeacherRecipe):
        origin = f"made {teacher.cache_name()}"
        if is_standin(teacher.base):
            origin = f"{origin} from a standin"
        return folder_identity(made_teacher_dir(teacher), origin=origin)
    return model_identity(teacher)


def truncate_vocab(model, n: int) -> None:
    """Keep the first ``n`` rows of the embedding and LM head (no-op when it has ``n`` or fewer)."""
    if model.get_input_embeddings().weight.shape[0] > n:
        model.resize_token_embeddings(n)
