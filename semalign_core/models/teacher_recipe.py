"""What a made teacher is: the recipe it is fine-tuned by, whose hash keys its cache folder.

Torch-free on purpose: the per-profile recipes sit in the budgets table, which the report reads
without torch. Teachers on disk: :mod:`semalign_core.models.teachers`; making them:
:mod:`semalign_core.experiments.teachers`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

FINETUNED = "ft-source"  # teacher name: the profile's source fine-tuned on the task
# teacher name: the profile's model of another family fine-tuned on the task (cross-family setting)
FINETUNED_CROSS = "ft-cross"
TEACHER_VERSION = 1  # part of every recipe key: bump it when making a teacher changes


@dataclass(frozen=True)
class TeacherRecipe:
    """How a fine-tuned teacher is made (every field is part of its cache key).

    Attributes:
        base: registry name of the model fine-tuned (the profile's SemAlign source).
        task: classification task (:func:`~semalign_core.data.cls_transfer.cls_transfer_tasks`).
        n_train: records of the task's ``train`` part (seeded subset; None: all of it).
        epochs, batch_size, micro_batch_size, lr, max_length: plain SFT settings.
        trainable: "layers" (decoder blocks + final norm; embeddings and the tied head frozen)
            or "full".
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
        """12 hex digits of the recipe's hash: a changed field is another teacher."""
        blob = json.dumps({"recipe": asdict(self), "version": TEACHER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cache_name(self) -> str:
        return f"{self.base}-ft-{self.task}-{self.key()}"
