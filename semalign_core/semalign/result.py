"""What every transfer method returns, and the check every method makes before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from semalign_core.errors import IncompatibleModelsError
from semalign_core.lm import surgery
from semalign_core.semalign.pairing import Pairing


@dataclass
class TransferResult:
    """The trained target, the pairing, per-stage loss records with costs, and run totals."""

    model: nn.Module
    pairing: Pairing
    scores: list[float] | None
    stages: list[dict]
    cost: dict
    config: dict
    resumed_after_stage: int = 0
    notes: list[str] = field(default_factory=list)


def check_compatible(source: nn.Module, target: nn.Module) -> None:
    """One-line IncompatibleModelsError unless the pair can be aligned (before any work)."""
    n_s, n_t = surgery.num_layers(source), surgery.num_layers(target)
    if n_t > n_s:
        raise IncompatibleModelsError(
            f"target is deeper than source ({n_t} > {n_s} layers): "
            "SemAlign pairs one source layer per target layer ('semalign_cross' pairs them "
            "many-to-one)"
        )
    v_s, v_t = surgery.vocab_size(source), surgery.vocab_size(target)
    if v_s != v_t:
        raise IncompatibleModelsError(
            f"vocabularies differ: source LM head has {v_s} rows, target {v_t}; "
            "SemAlign needs index-aligned vocabularies (across vocabularies use 'semalign_cross', "
            "or 'uld' / 'bridged_kl' for output distillation)"
        )
