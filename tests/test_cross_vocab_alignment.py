"""Boundary alignment of two tokenisations (issue 19, item 1): expected pairs written by hand
from the offsets, on made-up encodings and on the real Gemma-3 and SmolLM2 tokenizers."""

from __future__ import annotations

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.semalign.crossvocab.token_alignment import (
    Encoding,
    align_positions,
    batch_positions,
    encode_with_offsets,
    span_mask,
    supervised_share,
)

TEXT_WORDS = "Hello world, naïve café"
TEXT_SPACES = "x = 12345\n  y"


@pytest.fixture(scope="module")
def gemma_tok():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def smol_tok():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def test_same_end_offsets_align_and_specials_never_do():
    # source: BOS, "ab", "c", "de";  target: "a", "bc", "d", "e", EOS
    src = Encoding([0, 1, 2, 3], [(0, 0), (0, 2), (2, 3), (3, 5)])
    tgt = Encoding([0, 1, 2, 3, 4], [(0, 1), (1, 3), (3, 4), (4, 5), (5, 5)])
    al = align_positions(src, tgt)
    assert al.pairs == [(2, 1), (3, 3)]  # ends 3 and 5; BOS and EOS have no text
    assert al.n_supervised == 5 and al.supervised_share == pytest.approx(2 / 5)


def test_a_character_split_over_tokens_aligns_at_its_last_piece():
    # source splits the 2-byte "é" at characters 1..2 into two byte tokens with equal offsets
    src = Encoding([9, 7, 8, 6], [(0, 1), (1, 2), (1, 2), (2, 5)])
    tgt = Encoding([1, 2, 3, 4], [(0, 1), (1, 2), (2, 3), (3, 5)])
    assert align_positions(src, tgt).pairs == [(0, 0), (2, 1), (3, 3)]


def test_real_tokenizers_words(gemma_tok, smol_tok):
    # Gemma: <bos> Hello ▁world , ▁naïve ▁café      ends 5 11 12 18 23 at positions 1..5
    # SmolLM2: <|im_start|> Hello Ġworld , Ġna Ã¯ve ĠcafÃ©   ends 5 11 12 15 18 23 at 1..6
    gem = encode_with_offsets(gemma_tok, TEXT_WORDS)
    smol = encode_with_offsets(smol_tok, TEXT_WORDS)
    assert gem.offsets == [(0, 0), (0, 5), (5, 11), (11, 12), (12, 18), (18, 23)]
    assert smol.offsets == [(0, 0), (0, 5), (5, 11), (11, 12), (12, 15), (15, 18), (18, 23)]
    al = align_positions(gem, smol)
    assert al.pairs == [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6)]
    assert al.n_supervised == 7  # BOS counts as a target position that cannot align
    # the other direction
    assert align_positions(smol, gem).pairs == [(1, 1), (2, 2), (3, 3), (5, 4), (6, 5)]


def test_real_tokenizers_leading_spaces(gemma_tok, smol_tok):
    # Gemma: "\n"(9,10) "▁▁"(10,12) "y"(12,13);  SmolLM2: "ĊĠ"(9,11) "Ġy"(11,13)
    gem = encode_with_offsets(gemma_tok, TEXT_SPACES)
    smol = encode_with_offsets(smol_tok, TEXT_SPACES)
    assert gem.offsets[9:] == [(9, 10), (10, 12), (12, 13)]
    assert smol.offsets[9:] == [(9, 11), (11, 13)]
    expected = [(k, k) for k in range(1, 9)] + [(11, 10)]  # x ▁= ▁ 1 2 3 4 5, then y
    assert align_positions(gem, smol).pairs == expected


def test_span_mask_and_supervised_share(gemma_tok, smol_tok):
    gem = encode_with_offsets(gemma_tok, TEXT_WORDS)
    smol = encode_with_offsets(smol_tok, TEXT_WORDS)
    # response " naïve café" = [12, 23): SmolLM2 positions ending at 12, 15, 18 predict inside it
    mask = span_mask(smol.offsets, 12, 23)
    assert mask == [False, False, False, True, True, True, False]
    al = align_positions(gem, smol, target_mask=mask)
    assert al.pairs == [(3, 3), (4, 5)] and al.n_supervised == 3
    assert al.supervised_share == pytest.approx(2 / 3)
    with pytest.raises(InvalidParameterError):
        align_positions(gem, smol, target_mask=mask[:-1])
    with pytest.raises(InvalidParameterError):
        span_mask(smol.offsets, 5, 2)


def test_batch_positions_index_a_right_padded_batch():
    a = align_positions(Encoding([1, 2], [(0, 1), (1, 2)]), Encoding([1, 2], [(0, 1), (1, 2)]))
    b = align_positions(Encoding([1], [(0, 2)]), Encoding([1, 2], [(0, 1), (1, 2)]))
    rows, src, tgt = batch_positions([a, b])
    assert rows.tolist() == [0, 0, 1] and src.tolist() == [0, 1, 0] and tgt.tolist() == [0, 1, 1]
    assert rows.dtype == torch.long
    assert supervised_share([a, b]) == pytest.approx(3 / 4)
    empty = batch_positions([])
    assert all(t.numel() == 0 and t.dtype == torch.long for t in empty)
