"""Transfer methods by name: SemAlign, the published baselines and the controls.

Every entry point has SemAlign's signature
``(source, target, train_records, attribution_records, config, tokenizer, resume=False,
stop_after_stage=None) -> TransferResult``, trains ``target`` in place, and records per-stage /
per-step losses and costs (wall s, peak memory, tokens, analytic FLOPs), so a notebook swaps
methods by changing one name::

    result = run_method("seeking", source, target, train, extract, tokenizer=tok, epochs=1)

=================  ===================================  =========================
name               entry point                          config
=================  ===================================  =========================
semalign           semalign.transfer                    SemAlignConfig
seeking            baselines.seeking.transfer           SeekingConfig
laten              baselines.laten.transfer             LatenConfig
sft                baselines.controls.sft               SFTConfig
output_kl          baselines.controls.output_kl         OutputKLConfig
hidden_distill     baselines.controls.hidden_distill    HiddenDistillConfig
semalign_cross     semalign.crossvocab.trainer          CrossSemAlignConfig
uld                baselines.cross_distill.uld          CrossDistillConfig
bridged_kl         baselines.cross_distill.bridged_kl   CrossDistillConfig
=================  ===================================  =========================

The last three (:data:`CROSS_METHODS`, not in :data:`METHODS`: the transfer tables run all of
those) span two vocabularies; they take the target's tokenizer as ``tokenizer`` and the
source's as the keyword ``source_tokenizer``::

    run_method("semalign_cross", gemma, smollm2, train, extract, tokenizer=smol_tok,
               source_tokenizer=gemma_tok, bridge="projection", output_loss="uld")

:data:`NEEDS_SOURCE` says which methods of METHODS read the source; the others take
``source=None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

from semalign_core.baselines import controls, cross_distill, laten, seeking
from semalign_core.errors import InvalidParameterError
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.crossvocab.trainer import CrossSemAlignConfig, transfer_cross
from semalign_core.semalign.result import TransferResult
from semalign_core.semalign.transfer import transfer as semalign_transfer

METHODS: dict[str, Callable[..., TransferResult]] = {
    "semalign": semalign_transfer,
    "seeking": seeking.transfer,
    "laten": laten.transfer,
    "sft": controls.sft,
    "output_kl": controls.output_kl,
    "hidden_distill": controls.hidden_distill,
}

CONFIGS: dict[str, type] = {
    "semalign": SemAlignConfig,
    "seeking": seeking.SeekingConfig,
    "laten": laten.LatenConfig,
    "sft": controls.SFTConfig,
    "output_kl": controls.OutputKLConfig,
    "hidden_distill": controls.HiddenDistillConfig,
}


# Whether a method reads the source model; a table cell loads the source only for those that do.
# sft trains the target alone; output_kl reads the source's logits, hidden_distill its hidden
# states, seeking, laten and semalign its weights and activations.
NEEDS_SOURCE: dict[str, bool] = {
    "semalign": True,
    "seeking": True,
    "laten": True,
    "sft": False,
    "output_kl": True,
    "hidden_distill": True,
}

# Methods whose source and target may have different vocabularies (``source_tokenizer=``); all
# read the source. Kept out of METHODS: the transfer tables run every method of METHODS.
CROSS_METHODS: dict[str, Callable[..., TransferResult]] = {
    "semalign_cross": transfer_cross,
    "uld": cross_distill.uld,
    "bridged_kl": cross_distill.bridged_kl,
}

CROSS_CONFIGS: dict[str, type] = {
    "semalign_cross": CrossSemAlignConfig,
    "uld": cross_distill.CrossDistillConfig,
    "bridged_kl": cross_distill.CrossDistillConfig,
}


def needs_source(name: str) -> bool:
    """Whether method ``name`` reads the source (False: it runs with ``source=None``)."""
    _check_name(name)
    return name in CROSS_METHODS or NEEDS_SOURCE[name]


def _check_name(name: str) -> None:
    if name not in METHODS and name not in CROSS_METHODS:
        valid = ", ".join((*METHODS, *CROSS_METHODS))
        raise InvalidParameterError(f"unknown method {name!r}; choose one of {valid}")


def config_class(name: str) -> type:
    """The config dataclass of method ``name`` (a cross-vocabulary method's too)."""
    return CONFIGS[name] if name in CONFIGS else CROSS_CONFIGS[name]


def make_config(name: str, config: Any = None, **overrides) -> Any:
    """The config of method ``name``: ``config`` (an instance, a dict of fields, or None for the
    defaults) with ``overrides`` applied. Unknown fields are a one-line InvalidParameterError."""
    _check_name(name)
    cls = config_class(name)
    if config is None:
        config = {}
    if isinstance(config, dict):
        config = {**config, **overrides}
        overrides = {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InvalidParameterError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**config)
    if not (is_dataclass(config) and isinstance(config, cls)):
        raise InvalidParameterError(
            f"method {name!r} needs a {cls.__name__}, got {type(config).__name__}"
        )
    return replace(config, **overrides) if overrides else config


def run_method(
    name: str,
    source,
    target,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: Any = None,
    tokenizer=None,
    **kwargs,
) -> TransferResult:
    """Run method ``name``. ``kwargs`` that are fields of its config override them; the rest
    (``resume``, ``stop_after_stage``, method-specific keywords) go to the entry point."""
    _check_name(name)
    if tokenizer is None:
        raise InvalidParameterError("run_method needs the tokenizer")
    known = {f.name for f in fields(config_class(name))}
    overrides = {k: v for k, v in kwargs.items() if k in known}
    rest = {k: v for k, v in kwargs.items() if k not in known}
    cfg = make_config(name, config, **overrides)
    method = METHODS[name] if name in METHODS else CROSS_METHODS[name]
    return method(source, target, train_records, attribution_records, cfg, tokenizer, **rest)


__all__ = [
    "CONFIGS",
    "CROSS_CONFIGS",
    "CROSS_METHODS",
    "METHODS",
    "NEEDS_SOURCE",
    "config_class",
    "make_config",
    "needs_source",
    "run_method",
]
