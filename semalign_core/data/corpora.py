"""Plain English text for calibration, healing and perplexity (``../shared/corpora``).

Resolution: ``SEMALIGN_CORPUS_DIR``, ``<repo>/data/corpora``, ``<repo>/../shared/corpora``;
``make data`` downloads them into ``<repo>/data/corpora`` (:mod:`semalign_core.data.sources`).
Gutenberg files keep their licence header/footer on disk; only the body between the START and
END markers is used. The held-out text (Sherlock Holmes) is never used for calibration or healing.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from semalign_core import paths
from semalign_core.data import sources
from semalign_core.errors import DataNotFoundError, InvalidParameterError

CORPUS_FILES = {
    "shakespeare": "tinyshakespeare/input.txt",
    "pride_and_prejudice": "gutenberg/1342-0.txt",
    "sherlock_holmes": "gutenberg/1661.txt",
    "war_and_peace": "gutenberg/2600-0.txt",
    "moby_dick": "gutenberg/2701-0.txt",
}
TRAIN_CORPORA = ("pride_and_prejudice", "shakespeare", "moby_dick")
HELDOUT_CORPUS = "sherlock_holmes"
# The corpora's data set in sources.json: ``make data`` writes them to <repo>/data/corpora.
FETCHED_DATASET = "corpora"


def corpus_path(name: str) -> Path:
    """Path of corpus ``name`` in the first root holding it (order: module docstring).

    Found nowhere and ``SEMALIGN_FETCH_DATA=1``: the ``corpora`` data set is fetched into
    ``<repo>/data`` (as ``make data`` does), then looked up again. Raises DataNotFoundError
    naming the file and every place searched.
    """
    if name not in CORPUS_FILES:
        raise InvalidParameterError(
            f"unknown corpus {name!r}; choose one of: {', '.join(CORPUS_FILES)}"
        )
    relpath = CORPUS_FILES[name]
    roots = _corpus_roots()
    found = _first_holding(relpath, roots)
    if found is None and os.environ.get(sources.FETCH_VAR) == "1":
        sources.fetch_for(f"{FETCHED_DATASET}/{relpath}", paths.REPO_ROOT / "data")
        found = _first_holding(relpath, roots)
    if found is None:
        raise DataNotFoundError(
            f"corpus file {relpath} not found in {', '.join(map(str, roots))}; "
            "set SEMALIGN_CORPUS_DIR or run `make data` (it fetches them into data/corpora; "
            f"{sources.FETCH_VAR}=1: on demand)"
        )
    return found


def _corpus_roots() -> list[Path]:
    env = os.environ.get("SEMALIGN_CORPUS_DIR")
    roots = [Path(env)] if env else []
    # Read REPO_ROOT at call time (not import time) so tests can point it elsewhere.
    repo = paths.REPO_ROOT
    return roots + [repo / "data" / FETCHED_DATASET, repo.parent / "shared" / "corpora"]


def _first_holding(relpath: str, roots: list[Path]) -> Path | None:
    return next((root / relpath for root in roots if (root / relpath).is_file()), None)


def corpus_text(name: str) -> str:
    text = corpus_path(name).read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start >= 0 and end > start:  # strip the Gutenberg header and licence footer
        text = text[text.index("\n", start) + 1 : end]
    return text.strip()


_TOKEN_CACHE: dict[tuple, list[int]] = {}


def corpus_ids(tokenizer, name: str) -> list[int]:
    """Token ids of a whole corpus, memoised per tokenizer (tokenising 3 MB takes seconds)."""
    key = (tokenizer.name_or_path, len(tokenizer), type(tokenizer).__name__, name)
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = tokenizer(corpus_text(name), add_special_tokens=False)["input_ids"]
    return _TOKEN_CACHE[key]


def token_blocks(tokenizer, names, seq_len: int, n_blocks: int, seed: int = 0) -> torch.Tensor:
    """``n_blocks`` random windows of ``seq_len`` tokens from the named corpora, seeded."""
    ids: list[int] = []
    for name in names:
        ids += corpus_ids(tokenizer, name)
    if len(ids) < seq_len + 1:
        raise InvalidParameterError(
            f"corpora {names} hold {len(ids)} tokens, fewer than seq_len={seq_len}"
        )
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seq_len) for _ in range(n_blocks)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.long)
