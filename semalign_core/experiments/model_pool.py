"""Loading a profile's models for an experiment: its dtype, the default device, each at most once.

:func:`load_for` loads a fresh copy (methods that train in place get their own); a
:class:`ModelPool` loads each model the first time a run needs it, so a notebook whose records
are all valid loads nothing, and keeps it untrained on the CPU, so a GPU holds only the copies
runs use; :func:`record_models` names the models a record depends on (checked from their files,
not loaded); :func:`release_memory` frees what a finished cell left behind.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from semalign_core.devices import default_device, inference_device
from semalign_core.models.registry import LoadedModel, load_model
from semalign_core.models.teachers import Teacher, teacher_model_identity
from semalign_core.profiles import Profile


def load_for(prof: Profile, name: str, read_only: bool = False) -> LoadedModel:
    """Model ``name`` in the profile's dtype on the default device (a fresh copy on every call);
    ``read_only`` (a source or teacher that is never trained): spread over every visible GPU
    where there are several (:func:`~semalign_core.devices.inference_device`)."""
    device = inference_device() if read_only else default_device()
    return load_model(name, dtype=prof.dtype, device=device, verbose=False)


def record_models(**roles: Teacher) -> Callable[[], dict[str, dict[str, Any]]]:
    """The ``models`` argument of :func:`~semalign_core.records.get_or_compute`: a record computed
    with these models (role=registry name or teacher) is valid only while their files are.

    get_or_compute(..., models=record_models(source=prof.semalign_source, target=...))
    """
    return lambda: {role: teacher_model_identity(ref) for role, ref in sorted(roles.items())}


def release_memory() -> None:
    """Free the models nothing refers to any more: collect reference cycles (hooks, wrappers and
    closures keep a model alive past its last name) and hand the GPU's cached blocks back, so
    the next cell starts with the device memory the finished one used."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelPool:
    """Each model loaded at most once (and only when a run needs computing), kept untrained on the
    CPU; runs get copies on the default device, so a GPU never holds the pristine copy beside the
    trained one (on a CPU-only machine the copies are those of the model as loaded).

    pool = ModelPool(prof)
    model, tokenizer = pool.fresh("smollm2-135m-instruct")  # a copy to train
    """

    def __init__(self, prof: Profile):
        self.prof = prof
        self.loaded: dict[str, LoadedModel] = {}  # the pristine models, on the CPU

    def get(self, name: str) -> LoadedModel:
        """The pooled model ``name``, untrained on the CPU (loaded on first use); runs use
        :meth:`fresh` (to train) or :meth:`on_device` (to read)."""
        if name not in self.loaded:
            # loaded as every cell loads a model (device, dtype), then moved: the same weights
            lm = load_for(self.prof, name)
            lm.model.to("cpu")  # in place
            self.loaded[name] = lm
            release_memory()  # the blocks the device copy held
        return self.loaded[name]

    def on_device(self, name: str) -> LoadedModel:
        """Model ``name`` untrained on the default device, to read (not train): the pooled model
        itself on a CPU, a copy of it on an accelerator."""
        lm = self.get(name)
        return lm if default_device() == "cpu" else replace(lm, model=self._copy(lm))

    def fresh(self, name: str):
        """(a copy of the model on the default device, its tokenizer): the pooled original is
        never trained."""
        lm = self.get(name)
        return self._copy(lm), lm.tokenizer

    def num_layers(self, name: str) -> int:
        return int(self.get(name).stats["layers"])

    @staticmethod
    def _copy(lm: LoadedModel):
        return copy.deepcopy(lm.model).to(default_device())


__all__ = ["ModelPool", "load_for", "record_models", "release_memory"]
