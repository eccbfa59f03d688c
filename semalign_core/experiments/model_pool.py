"""Loading a profile's models for an experiment: its dtype, the default device, each at most once.

:func:`load_for` loads a fresh copy (methods that train in place get their own); a
:class:`ModelPool` loads each model the first time a run needs it, so a notebook whose records
are all valid loads nothing; :func:`record_models` names the models a record depends on (checked
from their files, not loaded).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from semalign_core.devices import default_device
from semalign_core.models.registry import LoadedModel, load_model
from semalign_core.models.teachers import Teacher, teacher_model_identity
from semalign_core.profiles import Profile


def load_for(prof: Profile, name: str) -> LoadedModel:
    """Model ``name`` in the profile's dtype on the default device (a fresh copy on every call)."""
    return load_model(name, dtype=prof.dtype, device=default_device(), verbose=False)


def record_models(**roles: Teacher) -> Callable[[], dict[str, dict[str, Any]]]:
    """The ``models`` argument of :func:`~semalign_core.records.get_or_compute`: a record computed
    with these models (role=registry name or teacher) is valid only while their files are.

    get_or_compute(..., models=record_models(source=prof.semalign_source, target=...))
    """
    return lambda: {role: teacher_model_identity(ref) for role, ref in sorted(roles.items())}


class ModelPool:
    """Each model loaded at most once (and only when a run needs computing); runs train copies.

    pool = ModelPool(prof)
    model, tokenizer = pool.fresh("smollm2-135m-instruct")  # a copy to train
    """

    def __init__(self, prof: Profile):
        self.prof = prof
        self.loaded: dict[str, Any] = {}

    def get(self, name: str) -> LoadedModel:
        if name not in self.loaded:
            self.loaded[name] = load_for(self.prof, name)
        return self.loaded[name]

    def fresh(self, name: str):
        """(a deep copy of the model, its tokenizer): the pooled original is never trained."""
        lm = self.get(name)
        return copy.deepcopy(lm.model), lm.tokenizer

    def num_layers(self, name: str) -> int:
        return int(self.get(name).stats["layers"])


__all__ = ["ModelPool", "load_for", "record_models"]
