"""SemAlign across vocabularies (issue 19): the same-family trainer on the batches of
:mod:`.batches`, with the semantic bases restricted by a vocabulary bridge.

    result = transfer_cross(source, target, train, extract, CrossSemAlignConfig(bridge="exact"),
                            target_tokenizer, source_tokenizer=source_tokenizer)

What differs from :func:`semalign_core.semalign.transfer.transfer`, and nothing else:

* data: each record is read by both tokenizers (:mod:`.batches`); the target's batches keep
  only the supervised positions aligned with a source position, the source's batches mark the
  source positions aligned with them (same order), and attribution runs on the source's own
  SFT batches (attribution scores the source alone);
* the composite map: source states are decomposed on the source bases of the bridged tokens
  and recomposed on the target bases they are bridged to (``bridged_semantic_maps``), so the
  bridge runs source → target, the direction the supervision flows;
* the supervision: the one source pass reads the source's batches; each stage reads a state at
  the target position it is aligned with (:class:`TargetGridSupervision`);
* the output term compares the teacher's and the target's logits in their own vocabularies
  (``cross_losses``: bridged KL or ULD);
* a target deeper than the source is paired many-to-one (``pairing``).

The stage loop, optimizer, checkpoints, resume and cost accounting are the same-family ones
(``transfer.run_transfer`` / ``prepare_run``). The bridge and the alignment are reported in
the cost dict: ``bridge_s``, ``bridge_*`` coverage, ``aligned_share`` (the share of the
target's supervised positions that align, i.e. that any loss sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from semalign_core.data.batching import sft_batches
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.crossvocab.batches import (
    CrossExample,
    bridge_for,
    check_style,
    collate_cross,
    examples_for,
    pad_id,
    source_tokenizer_for,
)
from semalign_core.semalign.crossvocab.cross_losses import CROSS_OUTPUT_LOSSES, cross_output_loss
from semalign_core.semalign.crossvocab.token_alignment import supervised_share
from semalign_core.semalign.crossvocab.vocab_bridge import (
    MODES,
    VocabBridge,
    bridged_semantic_maps,
)
from semalign_core.semalign.frontier import LayerInputs
from semalign_core.semalign.objective import StageLoss
from semalign_core.semalign.result import TransferResult
from semalign_core.semalign.supervision import Supervision
from semalign_core.semalign.transfer import prepare_run, run_transfer, timed


@dataclass
class CrossSemAlignConfig(SemAlignConfig):
    """SemAlignConfig across vocabularies (``objective="acl"`` only: the v1/v2 terms read
    states at every token, and only aligned positions have a source state).

    Attributes:
        bridge: vocabulary bridge, "exact" (string intersection, one-to-one) or "projection"
            (plus every other source token onto the first target token of its text).
        output_loss: the output term, "bridged_kl" (KL to the teacher's distribution carried
            through the bridge) or "uld" (sorted-probability optimal transport, no bridge).
        casefold: let the bridge also match tokens that differ in ASCII case only.
        prompt_style: "transfer" or "plain" (both models must read the same text).
        pairing: default "interpolate": a target deeper than its source has more layers than
            attribution can choose among, and interpolation gives consecutive target layers
            distinct mixtures of neighbouring source layers (``pairing``) where the floor grid
            repeats one; "attributed" still works (the many-to-one floor grid when deeper).
    """

    pairing: Literal["attributed", "floor", "uniform", "interpolate"] = "interpolate"
    bridge: str = "exact"
    output_loss: str = "bridged_kl"
    casefold: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("bridge", MODES), ("output_loss", CROSS_OUTPUT_LOSSES)):
            if getattr(self, name) not in allowed:
                raise InvalidParameterError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.objective != "acl":
            raise InvalidParameterError(
                f"semalign_cross supports objective='acl' only, got {self.objective!r}"
            )
        check_style(self.prompt_style)


class TargetGridSupervision:
    """The source supervision (states on the source's token grid) read on the target's grid:
    the state of each aligned source position lands at its target position, zeros elsewhere
    (never read: the stage loss reads aligned positions only). Teacher outputs are already in
    aligned order."""

    def __init__(self, sup: Supervision, source_batches: list[dict], batches: list[dict]):
        self.sup, self.teacher_kind = sup, sup.teacher_kind
        self.index = []
        for i, (src, tgt) in enumerate(zip(source_batches, batches)):
            s_rows, s_cols = supervised_positions(src["labels"])[0].nonzero(as_tuple=True)
            t_rows, t_cols = supervised_positions(tgt["labels"])[0].nonzero(as_tuple=True)
            if not torch.equal(s_rows, t_rows):
                raise InvalidParameterError(f"batch {i}: source and target positions disagree")
            self.index.append((s_rows, s_cols, t_cols, tuple(tgt["input_ids"].shape)))

    def state(self, j: int, i: int, device: torch.device) -> Tensor:
        rows, s_cols, t_cols, shape = self.index[i]
        src = self.sup.state(j, i, device)
        out = src.new_zeros(*shape, src.shape[-1])
        rows, s_cols, t_cols = rows.to(device), s_cols.to(device), t_cols.to(device)
        out[rows, t_cols] = src[rows, s_cols]
        return out

    def teacher_at(self, i: int, device: torch.device) -> Tensor:
        return self.sup.teacher_at(i, device)


class CrossStageLoss(StageLoss):
    """StageLoss on the target's grid whose output term spans two vocabularies (the arguments
    of StageLoss, then the source's batches, the bridge and the output loss's name)."""

    def __init__(
        self,
        target: nn.Module,
        sup: Supervision,
        inputs: LayerInputs,
        batches: list[dict],
        config: SemAlignConfig,
        bases_src: Tensor,
        bases_tgt: Tensor,
        source_unembed: surgery.Unembed,
        *,
        source_batches: list[dict],
        bridge: VocabBridge,
        output_loss: str,
    ):
        on_grid = TargetGridSupervision(sup, source_batches, batches)
        super().__init__(
            target, on_grid, inputs, batches, config, bases_src, bases_tgt, source_unembed
        )
        self.bridge, self.output_loss = bridge, output_loss

    def output_term(self, teacher: Tensor, student: Tensor) -> Tensor:
        return cross_output_loss(self.output_loss, teacher, student, self.bridge, self.config.tau)


def cross_batches(
    examples: Sequence[CrossExample], batch_size: int, source_pad: int, target_pad: int
) -> tuple[list[dict], list[dict]]:
    """(source batches, target batches) of SemAlign-cross: the target's labels kept at aligned
    positions only, the source's marking the positions aligned with them."""
    pairs = [
        collate_cross(examples[i : i + batch_size], source_pad, target_pad)
        for i in range(0, len(examples), batch_size)
    ]
    targets = [
        {
            "input_ids": p["input_ids"],
            "attention_mask": p["attention_mask"],
            "labels": p["aligned_labels"],
        }
        for p in pairs
    ]
    return [p["source"] for p in pairs], targets


def bridge_stats(bridge: VocabBridge | None, examples: Sequence[CrossExample]) -> dict:
    """What a run reports of its bridge (None: a method without one) and its alignment."""
    cover = {} if bridge is None else {f"bridge_{k}": v for k, v in bridge.coverage().items()}
    mode = {} if bridge is None else {"bridge_mode": bridge.mode}
    return {**mode, **cover, "aligned_share": supervised_share([e.alignment for e in examples])}


def transfer_cross(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: CrossSemAlignConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
    source_tokenizer=None,
) -> TransferResult:
    """SemAlign from ``source`` into ``target`` across vocabularies (trained in place; see the
    module docstring). ``tokenizer`` is the target's; ``source_tokenizer`` the source's (None:
    the same one, which gives the identity bridge and the same-family numbers)."""
    if not isinstance(config, CrossSemAlignConfig):
        raise InvalidParameterError(
            f"semalign_cross needs a CrossSemAlignConfig, got {type(config).__name__}"
        )
    source_tokenizer = source_tokenizer_for(source, target, source_tokenizer, tokenizer)
    prepare = partial(
        _prepare_cross,
        source,
        target,
        train_records,
        attribution_records,
        config,
        source_tokenizer,
        tokenizer,
        resume,
    )
    return run_transfer(source, target, config, resume, stop_after_stage, prepare)


def _prepare_cross(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: CrossSemAlignConfig,
    source_tokenizer,
    tokenizer,
    resume: bool,
):
    """The bridge and both sides' batches, then ``prepare_run`` with the bridged maps."""
    timings: dict = {}
    with timed(timings, "bridge_s"):
        bridge = bridge_for(config, source, target, source_tokenizer, tokenizer)
    examples = examples_for(config, train_records, source_tokenizer, tokenizer)
    pads = pad_id(source_tokenizer), pad_id(tokenizer)
    source_batches, batches = cross_batches(examples, config.micro, *pads)
    attr_batches = sft_batches(  # attribution scores the source on its own tokens
        attribution_records,
        source_tokenizer,
        config.attribution_batch,
        config.max_length,
        config.prompt_style,
        config.loss_on,
    )
    timings.update(bridge_stats(bridge, examples))
    key_parts = [b[k] for b in source_batches for k in ("input_ids", "labels")]
    key_parts += [bridge.source_ids, bridge.target_ids, bridge.weights]
    return prepare_run(
        source,
        target,
        config,
        resume,
        batches,
        attr_batches,
        partial(bridged_semantic_maps, source, target, bridge, config.decomposition),
        source_batches=source_batches,
        stage_loss=partial(
            CrossStageLoss,
            source_batches=source_batches,
            bridge=bridge,
            output_loss=config.output_loss,
        ),
        key_parts=key_parts,
        timings=timings,
    )
