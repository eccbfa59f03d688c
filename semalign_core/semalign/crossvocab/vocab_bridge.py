"""A sparse map from a source vocabulary to a target vocabulary, built from token strings
(issue 19, item 2), and the semantic bases restricted to it.

    bridge = build_bridge(source_tokenizer, target_tokenizer, mode="projection")
    q = bridge.map_probs(p_source)                  # (..., V_target)
    bridge.coverage(), bridge.mass_coverage(p_source)
    rows_src, rows_tgt, m = bridged_semantic_maps(source, target, bridge)

Every token is read as the bytes of text it stands for: byte-level BPE strings through the inverse
of GPT-2's ``bytes_to_unicode`` (``Ġ`` is a space), SentencePiece pieces with ``▁`` as a space
and ``<0xNN>`` byte fallbacks as that byte. Two tokens match when their bytes are equal. Special
tokens (``<bos>``, ``<|im_start|>``) are control strings, not text: they match only a special
token with the same content, except that the two end-of-sequence tokens are paired (both
pipelines append their own EOS after a response, so both mean "stop here"). Non-special added
tokens (Gemma's ``\n`` runs, space runs, HTML tags, ``<unusedN>``) are text for exact matching
but are never projected: they are whole strings a vocabulary's owner inserted, and the first
piece of ``<unused0>`` (``<``) does not stand for it.

Modes (``MODES``):

* ``"exact"``: the intersection of the two vocabularies' byte strings, one-to-one.
* ``"projection"``: exact matches, plus every other text token of the source mapped to the
  *first* token of the target's tokenisation of its text, weight 1 (many-to-one). First token and
  not weights split over all pieces, because the bridge maps next-token distributions: a source
  token starting at offset e says the continuation begins with its text, and the target's next
  token at e is then the first piece of that text, not the later ones. Each source row keeps
  unit mass, so a projected distribution still sums to the covered mass.

``casefold=True`` adds, for a source token left unmatched, the target token with the same
ASCII-lowercased bytes when exactly one such target token exists. ASCII only, because Unicode
case mapping can change a string's length and bytes (``İ``); the uniqueness test keeps it from
choosing between ``Apple`` and ``APPLE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from semalign_core.errors import InvalidParameterError
from semalign_core.semalign.supervision import composite_map, decomposition_bases

MODES = ("exact", "projection")
SCHEMES = ("byte_level", "metaspace")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_UNICODE_TO_BYTE = {u: b for b, u in bytes_to_unicode().items()}

# A token's matching key: its text bytes, ("byte", n) for an ASCII byte fallback (a duplicate of
# the ASCII piece, so it stays distinct and a vocabulary bridged to itself is the identity), or
# ("added", content) for special tokens.
Key = bytes | tuple


@dataclass(frozen=True)
class VocabBridge:
    """Sparse |V_source| x |V_target| map as entries (source id, target id, weight), sorted by
    source id; at most one entry per source id in both modes."""

    source_ids: Tensor
    target_ids: Tensor
    weights: Tensor
    source_size: int
    target_size: int
    mode: str
    n_exact: int  # entries that are exact matches (the rest are projections or case folds)

    def matrix(self) -> Tensor:
        """The bridge as a torch sparse COO matrix (V_source x V_target, fp32)."""
        idx = torch.stack([self.source_ids, self.target_ids])
        shape = (self.source_size, self.target_size)
        return torch.sparse_coo_tensor(idx, self.weights, shape, check_invariants=True).coalesce()

    def map_probs(self, probs: Tensor) -> Tensor:
        """A distribution over the source vocabulary (..., V_source) carried to the target
        vocabulary (..., V_target): ``probs @ B``, without forming B. Mass on unmapped source
        tokens is dropped, so the result sums to the covered mass."""
        self._check_width(probs)
        ids = self.source_ids.to(probs.device)
        moved = probs.index_select(-1, ids) * self.weights.to(probs.device, probs.dtype)
        out = probs.new_zeros(*probs.shape[:-1], self.target_size)
        return out.index_add_(-1, self.target_ids.to(probs.device), moved)

    def coverage(self) -> dict[str, float]:
        """Shares of each vocabulary the bridge touches, and its entry counts."""
        return {
            "source_vocab_share": self.source_ids.unique().numel() / self.source_size,
            "target_vocab_share": self.target_ids.unique().numel() / self.target_size,
            "entries": int(self.source_ids.numel()),
            "exact_entries": self.n_exact,
        }

    def mass_coverage(self, probs: Tensor) -> float:
        """Mean over positions of the source probability mass (..., V_source) the bridge keeps."""
        return float(self.map_probs(probs.float()).sum(-1).mean())

    def bridged_bases(self, bases_src: Tensor, bases_tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Index-aligned basis rows (n_entries x d_src, n_entries x d_tgt) for the same-vocabulary
        maps (``supervision.composite_map``, ``semantics.transfer_state``): row i decomposes on
        source token ``source_ids[i]`` and recomposes on ``weights[i]`` times target token
        ``target_ids[i]``'s basis. The identity bridge gives back both bases unchanged."""
        if bases_src.shape[0] != self.source_size or bases_tgt.shape[0] != self.target_size:
            raise InvalidParameterError(
                f"bases have {bases_src.shape[0]} and {bases_tgt.shape[0]} rows; the bridge maps "
                f"{self.source_size} source tokens to {self.target_size} target tokens"
            )
        rows_src = bases_src.index_select(0, self.source_ids.to(bases_src.device))
        rows_tgt = bases_tgt.index_select(0, self.target_ids.to(bases_tgt.device))
        w = self.weights.to(rows_tgt.device, rows_tgt.dtype)
        return rows_src, rows_tgt if bool((w == 1).all()) else rows_tgt * w[:, None]

    def _check_width(self, probs: Tensor) -> None:
        if probs.shape[-1] != self.source_size:
            raise InvalidParameterError(
                f"probabilities cover {probs.shape[-1]} tokens; the source vocabulary has "
                f"{self.source_size}"
            )


# --------------------------------------------------------------------------- token strings


def token_scheme(tokenizer) -> str:
    """How a fast tokenizer spells text in its vocabulary: "byte_level" (GPT-2 byte-to-unicode
    characters, ``Ġ`` for a space) or "metaspace" (SentencePiece, ``▁`` for a space)."""
    backend = tokenizer.backend_tokenizer
    pre, norm = repr(backend.pre_tokenizer), repr(backend.normalizer)
    if "ByteLevel" in pre:
        return "byte_level"
    if "Metaspace" in pre or "▁" in norm:
        return "metaspace"
    raise InvalidParameterError(
        f"{type(tokenizer).__name__}: neither byte-level nor SentencePiece (pre-tokenizer {pre})"
    )


def token_key(token: str, scheme: str) -> Key:
    """The matching key of a vocabulary token (see ``Key``)."""
    if scheme == "byte_level":
        if all(c in _UNICODE_TO_BYTE for c in token):
            return bytes(_UNICODE_TO_BYTE[c] for c in token)
        return ("added", token)  # not a byte-level string: a control token of the vocabulary
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback:
        byte = int(fallback.group(1), 16)
        return bytes([byte]) if byte >= 0x80 else ("byte", byte)
    return token.replace("▁", " ").encode("utf-8")


def added_key(content: str, special: bool, scheme: str) -> Key:
    """The matching key of an added token: its content, as text unless it is special."""
    if special:
        return ("added", content)
    return (content.replace("▁", " ") if scheme == "metaspace" else content).encode("utf-8")


def vocabulary_keys(tokenizer, size: int | None = None) -> list[Key]:
    """Matching key of every token id 0..size-1 (default: the tokenizer's length); ids the
    tokenizer does not know (padding rows of an LM head) get a key nothing matches."""
    scheme = token_scheme(tokenizer)
    n = len(tokenizer)
    size = n if size is None else size
    added = tokenizer.added_tokens_decoder
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(n, size))))
    keys: list[Key] = [
        added_key(added[i].content, added[i].special, scheme)
        if i in added
        else token_key(t, scheme)
        for i, t in enumerate(tokens)
    ]
    return keys + [("absent", i) for i in range(len(keys), size)]


def key_text(key: Key) -> bytes | None:
    """The text bytes a key stands for; None for added tokens (never projected)."""
    if isinstance(key, bytes):
        return key
    return bytes([key[1]]) if key[0] == "byte" else None


# --------------------------------------------------------------------------- building


def build_bridge(
    source_tokenizer,
    target_tokenizer,
    mode: str = "exact",
    casefold: bool = False,
    source_size: int | None = None,
    target_size: int | None = None,
) -> VocabBridge:
    """The bridge from the source's vocabulary to the target's (see module docstring).

    ``source_size`` / ``target_size``: the models' vocabulary sizes (LM-head rows) when they
    differ from the tokenizers' lengths.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"unknown bridge mode {mode!r}; valid: {', '.join(MODES)}")
    src_keys = vocabulary_keys(source_tokenizer, source_size)
    tgt_keys = vocabulary_keys(target_tokenizer, target_size)
    pairs = _exact_pairs(src_keys, tgt_keys, source_tokenizer, target_tokenizer)
    n_exact = len(pairs)
    if casefold:
        pairs.update(_casefold_pairs(src_keys, tgt_keys, pairs, one_to_one=mode == "exact"))
    if mode == "projection":
        skip = set(pairs) | set(source_tokenizer.added_tokens_decoder)
        pairs.update(_projected_pairs(src_keys, tgt_keys, skip, target_tokenizer))
    src = sorted(pairs)
    return VocabBridge(
        source_ids=torch.tensor(src, dtype=torch.long),
        target_ids=torch.tensor([pairs[s] for s in src], dtype=torch.long),
        weights=torch.ones(len(src), dtype=torch.float32),
        source_size=len(src_keys),
        target_size=len(tgt_keys),
        mode=mode,
        n_exact=n_exact,
    )


def _first_index(keys: list[Key]) -> dict[Key, int]:
    index: dict[Key, int] = {}
    for i, k in enumerate(keys):
        index.setdefault(k, i)
    return index


def _exact_pairs(src_keys, tgt_keys, source_tokenizer, target_tokenizer) -> dict[int, int]:
    """One-to-one source id → target id on equal keys, the two EOS tokens paired first."""
    pairs: dict[int, int] = {}
    claimed: set[int] = set()
    eos_s, eos_t = source_tokenizer.eos_token_id, target_tokenizer.eos_token_id
    if eos_s is not None and eos_t is not None:
        pairs[eos_s] = eos_t
        claimed.add(eos_t)
    tgt_index = _first_index(tgt_keys)
    for s, key in enumerate(src_keys):
        t = tgt_index.get(key)
        if s not in pairs and t is not None and t not in claimed:
            pairs[s] = t
            claimed.add(t)
    return pairs


def _casefold_pairs(src_keys, tgt_keys, pairs, one_to_one: bool) -> dict[int, int]:
    """Unmatched source text tokens → the unique target token with the same ASCII-lowercased
    bytes (unclaimed when ``one_to_one``)."""
    folded: dict[bytes, list[int]] = {}
    for t, key in enumerate(tgt_keys):
        if isinstance(key, bytes):
            folded.setdefault(key.lower(), []).append(t)
    claimed = set(pairs.values()) if one_to_one else set()
    out: dict[int, int] = {}
    for s, key in enumerate(src_keys):
        hits = folded.get(key.lower(), []) if isinstance(key, bytes) else []
        if s not in pairs and len(hits) == 1 and hits[0] not in claimed:
            out[s] = hits[0]
            if one_to_one:
                claimed.add(hits[0])
    return out


def _valid_utf8_prefix(data: bytes) -> str:
    """The longest prefix of ``data`` that decodes as UTF-8 (a token may end mid-character)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def _projected_pairs(src_keys, tgt_keys, skip: set[int], target_tokenizer) -> dict[int, int]:
    """Source text tokens not in ``skip`` → the first target token of their text, when that token's
    bytes are a prefix of the text (a tokenizer adding a dummy prefix space would break that);
    a token that starts mid-character goes to the target's token for its first byte."""
    tgt_index = _first_index(tgt_keys)
    todo = [(s, key_text(k)) for s, k in enumerate(src_keys) if s not in skip]
    todo = [(s, data) for s, data in todo if data]
    texts = [_valid_utf8_prefix(data) for _, data in todo]
    with_text = [i for i, text in enumerate(texts) if text]
    firsts = (
        target_tokenizer([texts[i] for i in with_text], add_special_tokens=False)["input_ids"]
        if with_text  # a fast tokenizer fails on an empty batch
        else []
    )
    first_of = {i: ids[0] for i, ids in zip(with_text, firsts) if ids}
    out: dict[int, int] = {}
    for i, (s, data) in enumerate(todo):
        t = first_of.get(i, tgt_index.get(data[:1], tgt_index.get(("byte", data[0]))))
        t_text = key_text(tgt_keys[t]) if t is not None and t < len(tgt_keys) else None
        if t_text and data.startswith(t_text):
            out[s] = t
    return out


# --------------------------------------------------------------------------- semantic bases


def bridged_semantic_maps(
    source: nn.Module, target: nn.Module, bridge: VocabBridge, decomposition: str = "cosine"
) -> tuple[Tensor, Tensor, Tensor]:
    """(source basis rows, target basis rows, composite map) through the bridge: what
    ``supervision.semantic_maps`` gives for one vocabulary, with the bases restricted to the
    bridged tokens (``VocabBridge.bridged_bases``); ``supervision.map_states`` then recomposes
    a source state in the target's latent space."""
    rows_src, rows_tgt = bridge.bridged_bases(
        decomposition_bases(source, decomposition), decomposition_bases(target, decomposition)
    )
    return rows_src, rows_tgt, composite_map(rows_src, rows_tgt, decomposition)
