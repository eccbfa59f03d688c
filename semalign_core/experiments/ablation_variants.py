"""The variants of the SemAlign ablations: one config field changed at a time around Table 2's run.

Each axis of :data:`~semalign_core.experiments.catalog.AXES` changes one
:class:`~semalign_core.semalign.config.SemAlignConfig` field; :func:`variants` lists the default,
then every other value of each axis. The ablations run on every informative task of a profile
(:func:`~semalign_core.experiments.budgets.informative_tasks`); a variant's record is named after
its task (:meth:`Variant.run`). Torch-free: the report orders and labels its rows by these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from semalign_core.experiments.budgets import informative_tasks, transfer_budget
from semalign_core.experiments.catalog import AXES
from semalign_core.profiles import Profile
from semalign_core.semalign.config import SemAlignConfig

# Fields that change only which source layers are chosen: a variant whose plan equals the
# default's trains identically, so it is not retrained.
PAIRING_ONLY = (
    "pairing",
    "attribution_granularity",
    "attribution_aggregate",
    "attribution_method",
    "window",
)


@dataclass(frozen=True)
class Variant:
    """One ablation variant: an axis, a label for its value, and the config fields it sets."""

    axis: str
    value: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        return not self.overrides

    def label(self) -> dict[str, str]:
        return {"axis": self.axis, "value": self.value}

    def run(self, seed: int, task: str) -> str:
        """The run name of this variant's record on ``task`` at ``seed``."""
        return f"{self.axis}-{self.value}__{task}__seed{seed}"


def default_config(prof: Profile, seed: int = 0, task: str | None = None) -> SemAlignConfig:
    """The SemAlign config of Table 2's ``semalign`` cell of ``task`` at this profile (the default
    run); ``task`` None: the profile's first informative task (the classification tasks share
    one budget)."""
    budget = transfer_budget(prof, informative_tasks(prof)[0] if task is None else task)
    return SemAlignConfig(**budget.method_overrides("semalign", seed, SemAlignConfig))


def value_label(value: Any) -> str:
    """How a variant's value is named in its run name and the table (1.0 → "1")."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def variants(
    prof: Profile, axes: Sequence[str] | None = None, task: str | None = None
) -> list[Variant]:
    """The default, then every non-default value of each axis in ``axes`` (checked names; None:
    all), values equal to the default dropped; around ``task``'s default run (None: see
    :func:`default_config`)."""
    base = default_config(prof, task=task)
    out = [Variant("default", "default")]
    for axis in AXES if axes is None else axes:
        name, values = AXES[axis]
        if axis == "frontier":
            k = base.steps_per_stage
            values = (k, max(1, k // 2), 2 * k)
        seen = {getattr(base, name)}
        for value in values:
            if value in seen:
                continue
            seen.add(value)
            out.append(Variant(axis, value_label(value), {name: value}))
    return out


__all__ = ["PAIRING_ONLY", "Variant", "default_config", "value_label", "variants"]
