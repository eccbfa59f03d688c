"""What every notebook's first cells call: parameter checks, short errors, profile availability.

Notebooks stay thin: a ``parameters`` cell, then ``prof = start(...)``, then calls into
semalign_core. ``start`` validates the common parameters before any work begins, so a bad value
stops the notebook in its first cell with one clear line instead of a traceback an hour later.

Every experiment module with several seeds has one parameter check of the same shape,
``check_parameters(prof, seed, seeds, **selections)``: each selection (methods, tasks, axes, ...)
None means all of them or the profile's default, ``seeds`` None means the profile's default seeds
counted from ``seed`` (:func:`check_seeds`); it returns the checked selections in the order of
its signature, then the seeds, each a tuple with duplicates dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from huggingface_hub import try_to_load_from_cache

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments.budgets import default_seeds
from semalign_core.models.registry import REGISTRY, hub_offline
from semalign_core.models.standins import standins_enabled
from semalign_core.profiles import Profile, get_profile


def short_errors() -> None:
    """In IPython, show ArtifactError as one line (the cell still fails, so papermill stops)."""
    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return

    def _one_line(shell, etype, value, tb, tb_offset=None):
        shell.showtraceback((etype, value, tb), exception_only=True)

    shell.set_custom_exc((ArtifactError,), _one_line)


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise InvalidParameterError(
            f"parameter {name}={value!r} is invalid; choose one of: {', '.join(map(str, choices))}"
        )


def check_int(name: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"parameter {name}={value!r} must be an integer >= {minimum}")


def check_optional_int(name: str, value: Any, minimum: int = 1) -> None:
    """None (the profile's default) or an integer >= ``minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(
            f"parameter {name}={value!r} must be None (profile default) or an integer >= {minimum}"
        )


def check_seeds(
    seeds: Sequence[int] | None, seed: int, experiment: str, profile: str
) -> tuple[int, ...]:
    """``seeds`` checked (a non-empty list of integers >= 0, duplicates dropped); None: the
    profile's default seeds of ``experiment`` counted from ``seed``
    (:func:`~semalign_core.experiments.budgets.default_seeds`)."""
    check_int("seed", seed)
    seeds = default_seeds(experiment, profile, seed) if seeds is None else seeds
    if (
        isinstance(seeds, (str, bytes))
        or not isinstance(seeds, (list, tuple))
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
    ):
        raise InvalidParameterError(
            f"parameter seeds={seeds!r} must be None or a non-empty list of integers >= 0"
        )
    return tuple(dict.fromkeys(seeds))


def start(
    profile: str,
    seed: int,
    force: bool = False,
    need_models: bool = True,
    **choices: tuple[Any, tuple],
) -> Profile:
    """Validate the common parameters (and ``name=(value, allowed)`` pairs); return the profile.

    ``need_models``: stop here when the profile's models cannot be had (False for notebooks that
    only read results)."""
    short_errors()
    prof = get_profile(profile)
    check_int("seed", seed)
    if not isinstance(force, bool):
        raise InvalidParameterError(f"parameter force={force!r} must be True or False")
    for name, (value, allowed) in choices.items():
        check_choice(name, value, allowed)
    if need_models:
        require_models(prof)
    return prof


def require_models(prof: Profile) -> None:
    """Stop cleanly when a hub profile runs offline without the models in the local cache
    (stand-ins, ``SEMALIGN_STANDINS=1``, are built locally: nothing to check)."""
    if not (prof.needs_hub and hub_offline()) or standins_enabled():
        return
    missing = [REGISTRY[m].hub_id for m in prof.models() if not _in_hub_cache(REGISTRY[m].hub_id)]
    if missing:
        raise ArtifactError(
            f"profile '{prof.name}' needs hub models that are not cached and the hub is offline "
            f"(HF_HUB_OFFLINE=1): {', '.join(missing)}. Get them online with "
            "`huggingface-cli download <id>` (gated Llama/Gemma models need an accepted licence "
            "and `huggingface-cli login`), then rerun; data: see README 'Data'."
        )


def _in_hub_cache(hub_id: str) -> bool:
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def check_list(
    name: str, value: Any, allowed, none_means_all: bool = True, what: str = "value(s)"
) -> tuple:
    """A non-empty list whose every element is allowed, duplicates dropped (None: all of them)."""
    allowed = tuple(allowed)
    if value is None and none_means_all:
        return allowed
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise InvalidParameterError(
            f"parameter {name}={value!r} must be a non-empty list; "
            f"choose from: {', '.join(map(str, allowed))}"
        )
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise InvalidParameterError(
            f"parameter {name} has unknown {what} {unknown}; "
            f"choose from: {', '.join(map(str, allowed))}"
        )
    return tuple(dict.fromkeys(value))
