"""Plain English text for calibration, healing and perplexity (``../shared/corpora``).

Resolution: ``SEMALIGN_CORPUS_DIR``, ``<repo>/data/corpora``, ``<repo>/../shared/corpora``.
Gutenberg files keep their licence header/footer on disk; only the body between the START and
END markers is used. The held-out text (Sherlock Holmes) is never used for calibration or healing.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from semalign_core import paths
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


def corpus_path(name: str) -> Path:
    if name not in CORPUS_FILES:
        raise InvalidParameterError(
            f"unknown corpus {name!r}; choose one of: {', '.join(CORPUS_FILES)}"
        )
    env = os.environ.get("SEMALIGN_CORPUS_DIR")
    roots = [Path(env)] if env else []
    roots += [paths.REPO_ROOT / "data" / "corpora", paths.REPO_ROOT.parent / "shared" / "corpora"]
    for root in roots:
        if (root / CORPUS_FILES[name]).is_file():
            return root / CORPUS_FILES[name]
    raise DataNotFoundError(
        f"corpus file {CORPUS_FILES[name]} not found in {', '.join(map(str, roots))}; "
        "set SEMALIGN_CORPUS_DIR or copy the corpora into data/corpora"
    )


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
