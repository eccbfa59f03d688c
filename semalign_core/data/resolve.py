"""Where benchmark files are found, and what exactly was read (sha256).

Files are looked up, per file, in this order (DESIGN.md, "Data"):

1. the directory named by ``SEMALIGN_DATA_DIR``;
2. ``<repo>/data``;
3. ``<repo>/../shared/benchmarks`` (present in CI).

Each candidate is searched in turn so that a partial ``SEMALIGN_DATA_DIR`` (say, only GSM8K)
still finds the other benchmarks further down the list. The Hugging Face hub is never
contacted here: the loaders read the official file formats only, so a run is reproducible
from the files' sha256 alone. A file found nowhere is downloaded from its official source
(:mod:`semalign_core.data.sources`, sha256-checked) into the first root only when
``SEMALIGN_FETCH_DATA=1`` says so; otherwise ``make data`` does it ahead of time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from semalign_core import paths
from semalign_core.data import sources
from semalign_core.errors import DataNotFoundError

ENV_VAR = "SEMALIGN_DATA_DIR"

# (resolved path, mtime_ns, size) -> hex digest; a file rewritten in place gets a new key.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def candidate_roots() -> list[Path]:
    """The data directories to search, in order (they need not exist, except the env one).

    Raises DataNotFoundError when ``SEMALIGN_DATA_DIR`` is set to a directory that does not
    exist: a typo there should fail loudly rather than silently fall back to other copies.
    """
    roots: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        env_root = Path(env).expanduser()
        if not env_root.is_dir():
            raise DataNotFoundError(
                f"{ENV_VAR} is set to {env_root}, but that directory does not exist; "
                f"create it with the official benchmark files, or unset {ENV_VAR}"
            )
        roots.append(env_root)
    # Read REPO_ROOT at call time (not import time) so tests can point it elsewhere.
    repo = paths.REPO_ROOT
    roots += [repo / "data", repo.parent / "shared" / "benchmarks"]
    return roots


def data_root() -> Path:
    """The first existing data directory in resolution order.

    Raises DataNotFoundError if none exists.
    """
    roots = candidate_roots()
    for root in roots:
        if root.is_dir():
            return root
    raise DataNotFoundError(_not_found_message("any benchmark file", roots))


def benchmark_path(relpath: str) -> Path:
    """Absolute path of ``relpath`` (e.g. ``"gsm8k/test.jsonl"``) in the first root holding it.

    ``relpath`` may also name a directory. Found nowhere and ``SEMALIGN_FETCH_DATA=1``: its
    data set is fetched into the first root, then looked up again. Raises DataNotFoundError
    naming the file, every place searched and how to fix it.
    """
    roots = candidate_roots()
    found = _first_holding(relpath, roots)
    if found is None and os.environ.get(sources.FETCH_VAR) == "1":
        sources.fetch_for(relpath, roots[0])
        found = _first_holding(relpath, roots)
    if found is None:
        raise DataNotFoundError(_not_found_message(relpath, roots))
    return found


def _first_holding(relpath: str, roots: list[Path]) -> Path | None:
    for root in roots:
        candidate = root / relpath
        if candidate.exists():
            return candidate
    return None


def _not_found_message(what: str, roots: list[Path]) -> str:
    """One line: what is missing, where we looked, how to fix it."""
    searched = ", ".join(str(r) for r in roots)
    msg = (
        f"benchmark data not found: {what} (searched: {searched}); "
        f"set {ENV_VAR} to a folder holding it, or copy the official files into "
        f"{paths.REPO_ROOT / 'data'}/ (layout as in shared/benchmarks/README.md); "
        f"`make data` downloads them ({sources.FETCH_VAR}=1: on demand)"
    )
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        # Users online may expect a hub download; say plainly that none is attempted.
        msg += "; the Hugging Face hub is not used by this loader"
    return msg


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, cached per (path, mtime, size) so repeated loads are cheap."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _SHA_CACHE[key] = h.hexdigest()
    return digest
