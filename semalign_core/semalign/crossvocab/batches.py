"""Training batches of one text seen by two tokenizers, with its aligned supervised positions
(issue 19): what every cross-vocabulary method (SemAlign-cross, ULD, bridged KL) trains on.

    examples = cross_examples(records, source_tokenizer, target_tokenizer, "transfer", ...)
    batch = collate_cross(examples[:4], source_pad, target_pad)
    batch["labels"]          # the target's SFT labels, as the same-family methods have them
    batch["aligned_labels"]  # kept only where the predicting position is aligned
    batch["source"]          # the source's batch; its labels mark its aligned positions

Both models read the same characters: the conversation is rendered once, by a prompt style
whose text does not depend on the tokenizer ("transfer" tags or "plain"; a model's own chat
template would give each model other characters), and each tokenizer adds its own BOS and, in
the transfer style, its own EOS. Each side's ids are exactly ``build_sft_example``'s (checked),
so the target's batches are the ones the same-family methods train on. The response span is
decided by each side's own labels; a target position trains only when it is supervised there
(``supervised_positions`` of its labels) and a source position ends a token at the same
character offset (``token_alignment``). Marking an aligned position ``p`` means keeping the
label of token ``p+1``, so every consumer that reads ``supervised_positions(labels)`` (the
stage loss, the teacher pass, the FLOP count) sees the aligned positions alone, in text order
on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from semalign_core.data.batching import collate
from semalign_core.data.formatting import IGNORE_INDEX, _render_pair, build_sft_example
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.crossvocab.token_alignment import (
    Encoding,
    TokenAlignment,
    align_positions,
    encode_with_offsets,
)
from semalign_core.semalign.crossvocab.vocab_bridge import VocabBridge, build_bridge

SAME_TEXT_STYLES = ("transfer", "plain")  # styles whose text is the same for every tokenizer


@dataclass(frozen=True)
class CrossExample:
    """One record as each model sees it (``build_sft_example`` dicts) and the target's
    supervised positions that align with a source position."""

    source: dict
    target: dict
    alignment: TokenAlignment


def source_tokenizer_for(source: nn.Module, target: nn.Module, source_tokenizer, tokenizer):
    """The source's tokenizer (None: the target's ``tokenizer``, for one shared vocabulary),
    after one-line errors before any work: each model's head must cover its tokenizer, and
    models with different vocabularies need the source's own."""
    if source_tokenizer is None:
        v_s, v_t = surgery.vocab_size(source), surgery.vocab_size(target)
        if v_s != v_t:
            raise IncompatibleModelsError(
                f"the source tokenizer is missing: the LM heads differ ({v_s} vs {v_t} rows); "
                "pass the source's tokenizer as source_tokenizer="
            )
        source_tokenizer = tokenizer
    for name, model, tok in (("source", source, source_tokenizer), ("target", target, tokenizer)):
        if len(tok) > surgery.vocab_size(model):
            raise IncompatibleModelsError(
                f"the {name} tokenizer has {len(tok)} tokens but its model's LM head "
                f"{surgery.vocab_size(model)} rows: pass each model its own tokenizer"
            )
    return source_tokenizer


def check_style(style: str) -> None:
    if style not in SAME_TEXT_STYLES:
        raise InvalidParameterError(
            f"cross-vocabulary methods need a prompt style that gives both models the same text "
            f"({', '.join(SAME_TEXT_STYLES)}), got {style!r}"
        )


def _side(tokenizer, messages, text, style, loss_on, max_length) -> tuple[dict, Encoding]:
    """``build_sft_example`` of one side and the offsets of its tokens (an appended EOS gets an
    empty span at the end of the text: it reads no characters)."""
    example = build_sft_example(
        tokenizer, messages, style=style, loss_on=loss_on, max_length=max_length
    )
    enc = encode_with_offsets(tokenizer, text)
    ids, n = example["input_ids"], len(enc.ids)
    if ids[:n] != enc.ids or len(ids) - n not in (0, 1):
        raise InvalidParameterError(
            f"{type(tokenizer).__name__}: the example is not the whole text ({len(ids)} ids for "
            f"{n} text tokens; max_length={max_length} truncates it?): alignment needs all of it"
        )
    end = len(text)
    return example, Encoding(ids, enc.offsets + [(end, end)] * (len(ids) - n))


def cross_example(
    messages: list[dict],
    source_tokenizer,
    target_tokenizer,
    style: str = "transfer",
    loss_on: str = "response",
    max_length: int = 512,
) -> CrossExample:
    """One conversation tokenised by both sides, with its aligned supervised positions."""
    check_style(style)
    _, text = _render_pair(target_tokenizer, messages, style)  # the same text for both
    src, src_enc = _side(source_tokenizer, messages, text, style, loss_on, max_length)
    tgt, tgt_enc = _side(target_tokenizer, messages, text, style, loss_on, max_length)
    mask = supervised_positions(torch.tensor([tgt["labels"]]))[0][0].tolist()
    al = align_positions(src_enc, tgt_enc, target_mask=mask)
    # a source position is marked through its next token's label: the last one has none
    keep = [k for k, s in enumerate(al.source_positions) if s + 1 < len(src["input_ids"])]
    al = TokenAlignment(
        [al.source_positions[k] for k in keep],
        [al.target_positions[k] for k in keep],
        al.n_supervised,
    )
    return CrossExample(src, tgt, al)


def cross_examples(
    records: Sequence[dict],
    source_tokenizer,
    target_tokenizer,
    style: str = "transfer",
    loss_on: str = "response",
    max_length: int = 512,
) -> list[CrossExample]:
    """:func:`cross_example` of every record's ``messages``."""
    if not records:
        raise InvalidParameterError("no records to build batches from")
    return [
        cross_example(r["messages"], source_tokenizer, target_tokenizer, style, loss_on, max_length)
        for r in records
    ]


def marked_labels(input_ids: list[int], positions: Sequence[int]) -> list[int]:
    """Labels that make exactly ``positions`` supervised (position p predicts token p+1)."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for p in positions:
        labels[p + 1] = input_ids[p + 1]
    return labels


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _marked(example: dict, positions: Sequence[int]) -> dict:
    ids = example["input_ids"]
    return {"input_ids": ids, "labels": marked_labels(ids, positions)}


def collate_cross(examples: Sequence[CrossExample], source_pad: int, target_pad: int) -> dict:
    """A right-padded batch of both sides (see the module docstring for its keys)."""
    aligned = [_marked(e.target, e.alignment.target_positions) for e in examples]
    source = [_marked(e.source, e.alignment.source_positions) for e in examples]
    return {
        **collate([e.target for e in examples], target_pad),
        "aligned_labels": collate(aligned, target_pad)["labels"],
        "source": collate(source, source_pad),
    }


def bridge_for(
    config, source: nn.Module, target: nn.Module, source_tokenizer, tokenizer
) -> VocabBridge:
    """The bridge a cross-vocabulary method's ``config`` asks for (``bridge``, ``casefold``),
    sized to the two models' LM heads."""
    return build_bridge(
        source_tokenizer,
        tokenizer,
        config.bridge,
        config.casefold,
        surgery.vocab_size(source),
        surgery.vocab_size(target),
    )


def examples_for(config, records: Sequence[dict], source_tokenizer, tokenizer) -> list:
    """:func:`cross_examples` of ``records`` with a method config's prompt style, supervised span
    and length."""
    return cross_examples(
        records, source_tokenizer, tokenizer, config.prompt_style, config.loss_on, config.max_length
    )
