"""Output distillation across vocabularies (issue 19): the published cross-tokenizer baselines
SemAlign-cross is measured against, on the same batches and aligned positions.

* :func:`uld` — Universal Logit Distillation (Boizard et al., arXiv 2402.12030): the L1 distance
  between the sorted teacher and student distributions, which needs no vocabulary map.
* :func:`bridged_kl` — KL to the teacher's distribution carried to the target's vocabulary by
  the vocabulary bridge (``config.bridge``), renormalised over the mass it covers.

Both train the target like :func:`controls.output_kl` (``controls.fine_tune``: same schedule,
trainable sets, optimizer and cost accounting): per example, ``kl_weight`` times the output
term's mean over its aligned positions (``crossvocab.batches``: the target's supervised
positions where both tokenisations end a token at the same character) plus ``ce_weight`` times
the target's own cross-entropy on all its supervised tokens (ULD's recipe adds it; default 0:
pure distillation, as ``output_kl``). The cost dict adds what was spent before training
(``prepare_s``: bridge and both tokenisations, also counted in ``wall_s``) and the bridge's and
alignment's statistics (``crossvocab.trainer.bridge_stats``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semalign_core import costs
from semalign_core.baselines.controls import (
    OutputKLConfig,
    begin,
    fine_tune,
    per_example_mean,
    source_forward_flops,
    supervised_logits,
    unused_pairing,
)
from semalign_core.errors import InvalidParameterError
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.crossvocab.batches import (
    bridge_for,
    check_style,
    collate_cross,
    examples_for,
    pad_id,
    source_tokenizer_for,
)
from semalign_core.semalign.crossvocab.cross_losses import cross_output_terms
from semalign_core.semalign.crossvocab.trainer import bridge_stats
from semalign_core.semalign.crossvocab.vocab_bridge import MODES
from semalign_core.semalign.result import TransferResult


@dataclass
class CrossDistillConfig(OutputKLConfig):
    """OutputKLConfig across vocabularies (``kl_weight`` weighs the method's output term).

    Attributes:
        bridge: the vocabulary bridge of ``bridged_kl``, "exact" or "projection" (ULD needs
            none; the alignment of positions is the same for both).
        casefold: let the bridge also match tokens that differ in ASCII case only.
        prompt_style: "transfer" or "plain" (both models must read the same text).
    """

    bridge: str = "exact"
    casefold: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bridge not in MODES:
            raise InvalidParameterError(
                f"bridge must be one of {', '.join(MODES)}, got {self.bridge!r}"
            )
        check_style(self.prompt_style)


def cross_distill_loss(source: nn.Module, output_loss: str, bridge, config: CrossDistillConfig):
    """``make_loss`` of the cross-vocabulary distillations (see the module docstring)."""

    def make_loss(model):
        def loss(batch):
            with torch.no_grad():
                teacher, _, _ = supervised_logits(source, batch["source"])
            logits, rows, tgt = supervised_logits(model, batch)
            # aligned ⊆ supervised, both in (row, position) order: select the aligned ones
            on = supervised_positions(batch["aligned_labels"])[0]
            sel = on[supervised_positions(batch["labels"])[0]].to(logits.device)
            values, kept = cross_output_terms(output_loss, teacher, logits[sel], bridge, config.tau)
            n = batch["input_ids"].shape[0]
            kd = per_example_mean(values[kept], rows[sel][kept], n)
            parts = {output_loss: kd}
            total = config.kl_weight * kd
            if config.ce_weight:
                ce = F.cross_entropy(logits, tgt, reduction="none")
                parts["ce"] = per_example_mean(ce, rows, n)
                total = total + config.ce_weight * parts["ce"]
            return total, parts

        return loss

    return make_loss


def _cross_distill(
    method: str,
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    config: CrossDistillConfig,
    tokenizer,
    source_tokenizer,
    resume: bool,
    stop_after_stage: int | None,
) -> TransferResult:
    t_start = time.perf_counter()

    def check(src: nn.Module, tgt: nn.Module) -> None:
        source_tokenizer_for(src, tgt, source_tokenizer, tokenizer)

    begin(method, source, target, config, CrossDistillConfig, resume, check)
    source_tokenizer = source_tokenizer_for(source, target, source_tokenizer, tokenizer)
    bridge = None  # ULD compares sorted distributions: no bridge to build or to charge for
    if method == "bridged_kl":
        bridge = bridge_for(config, source, target, source_tokenizer, tokenizer)
    examples = examples_for(config, train_records, source_tokenizer, tokenizer)
    pads = pad_id(source_tokenizer), pad_id(tokenizer)
    src_shape = costs.model_shape(source)
    prepare_s = time.perf_counter() - t_start
    result = fine_tune(
        method,
        source,
        target,
        train_records,
        config,
        tokenizer,
        stop_after_stage,
        cross_distill_loss(source, method, bridge, config),
        lambda b: source_forward_flops(src_shape, b["source"]),
        unused_pairing(source, target, f"{method} uses only the source's output"),
        examples=examples,
        collate_fn=lambda chunk: collate_cross(chunk, *pads),
    )
    result.cost["wall_s"] += prepare_s
    result.cost.update(prepare_s=prepare_s, **bridge_stats(bridge, examples))
    return result


def uld(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: CrossDistillConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
    source_tokenizer=None,
) -> TransferResult:
    """ULD distillation of ``source`` into ``target`` across vocabularies (see module docstring;
    ``tokenizer`` is the target's, ``source_tokenizer`` the source's, None: the same)."""
    return _cross_distill(
        "uld",
        source,
        target,
        train_records,
        config,
        tokenizer,
        source_tokenizer,
        resume,
        stop_after_stage,
    )


def bridged_kl(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: CrossDistillConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
    source_tokenizer=None,
) -> TransferResult:
    """Bridged-KL distillation of ``source`` into ``target`` across vocabularies (see module
    docstring; ``tokenizer`` is the target's, ``source_tokenizer`` the source's)."""
    return _cross_distill(
        "bridged_kl",
        source,
        target,
        train_records,
        config,
        tokenizer,
        source_tokenizer,
        resume,
        stop_after_stage,
    )
