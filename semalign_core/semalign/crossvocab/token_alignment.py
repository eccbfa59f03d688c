"""Which positions of two tokenisations of the same text see the same prefix (issue 19, item 1).

The standard boundary-alignment rule: a source position and a target position are aligned when
their tokens end at the same character offset of the text. Both models have then read exactly
the same characters, so their hidden states describe the same prefix and their next-token
distributions describe the same continuation: layer and output losses use aligned positions only.

    src = encode_with_offsets(source_tokenizer, text)
    tgt = encode_with_offsets(target_tokenizer, text)
    al = align_positions(src, tgt, target_mask=span_mask(tgt.offsets, start, len(text)))
    al.source_positions, al.target_positions, al.supervised_share

Tokens without text (BOS, an appended EOS, any special token with an empty offset span) never
align: they read no characters, and their states are each family's own convention. A character
split over several tokens (byte-level BPE pieces of one UTF-8 character, SentencePiece byte
fallback ``<0xNN>``) gives those tokens the same offsets; only the last of them has read the whole
character, so the last token ending at an offset stands for it. Leading spaces do not matter:
only end offsets are compared, and byte-level ``Ġ`` and SentencePiece ``▁`` tokens both end
where their word ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from semalign_core.errors import InvalidParameterError


@dataclass(frozen=True)
class Encoding:
    """Token ids of a text and each token's character span ``(start, end)`` in it."""

    ids: list[int]
    offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class TokenAlignment:
    """Aligned positions (0-based token indices, in text order) of one text.

    ``n_supervised``: target positions the loss would use (all positions without a mask);
    ``supervised_share``: the share of them that align (the positions the cross losses keep).
    """

    source_positions: list[int]
    target_positions: list[int]
    n_supervised: int

    @property
    def supervised_share(self) -> float:
        return len(self.target_positions) / self.n_supervised if self.n_supervised else 0.0

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.source_positions, self.target_positions))


def encode_with_offsets(tokenizer, text: str, add_special_tokens: bool = True) -> Encoding:
    """Ids and character offsets of ``text`` from a fast (Rust-backed) HF tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidParameterError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: offsets need one"
        )
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return Encoding(list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])


def boundary_positions(offsets: Sequence[tuple[int, int]]) -> dict[int, int]:
    """End offset → the last token position ending there; tokens without text are left out."""
    ends: dict[int, int] = {}
    for pos, (start, end) in enumerate(offsets):
        if end > start:
            ends[end] = pos  # a later token with the same end has read the whole character
    return ends


def span_mask(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[bool]:
    """Positions that predict text inside the character span ``[start, end)``.

    The position whose prefix ends at offset e predicts what begins at e, so it is supervised when
    ``start <= e < end``. Tokens without text are not (use the batch's label mask when an
    appended EOS is supervised).
    """
    if not 0 <= start <= end:
        raise InvalidParameterError(f"span must satisfy 0 <= start <= end, got [{start}, {end})")
    return [s < e and start <= e < end for s, e in offsets]


def align_positions(
    source: Encoding, target: Encoding, target_mask: Sequence[bool] | None = None
) -> TokenAlignment:
    """Positions where both tokenisations end a token at the same offset (see module docstring),
    restricted to target positions with ``target_mask`` True (default: all)."""
    if target_mask is not None and len(target_mask) != len(target.offsets):
        raise InvalidParameterError(
            f"target_mask has {len(target_mask)} entries for {len(target.offsets)} target tokens"
        )
    keep = [True] * len(target.offsets) if target_mask is None else [bool(m) for m in target_mask]
    src_ends = boundary_positions(source.offsets)
    tgt_ends = boundary_positions(target.offsets)
    shared = sorted(e for e in tgt_ends.keys() & src_ends.keys() if keep[tgt_ends[e]])
    return TokenAlignment(
        source_positions=[src_ends[e] for e in shared],
        target_positions=[tgt_ends[e] for e in shared],
        n_supervised=sum(keep),
    )


def batch_positions(alignments: Sequence[TokenAlignment]) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, source columns, target columns) of a right-padded batch of aligned examples.

    Right padding (``data.batching.collate``) keeps each token at its unbatched position, so the
    per-example positions index the padded (B, T) tensors directly.
    """
    rows = [i for i, a in enumerate(alignments) for _ in a.target_positions]
    src = [p for a in alignments for p in a.source_positions]
    tgt = [p for a in alignments for p in a.target_positions]
    return tuple(torch.tensor(xs, dtype=torch.long) for xs in (rows, src, tgt))


def supervised_share(alignments: Sequence[TokenAlignment]) -> float:
    """Aligned share of all supervised target positions of several texts (what a run reports)."""
    n = sum(a.n_supervised for a in alignments)
    return sum(len(a.target_positions) for a in alignments) / n if n else 0.0
