"""Result records: one JSON per run, written atomically, with provenance.

A record holds experiment, profile, method, task, metrics (with the n behind each), cost, the full
config and provenance (git commit, package versions, data sha256, seed, device, dtype, the code's
identity and the identity of every model it was computed with). A run whose config hash and model
identities match a stored record is reused unless forced (:func:`get_or_compute`), which is what
lets an interrupted notebook resume. Records are written into the run folder's results
(:func:`semalign_core.paths.results_dir`); a valid record of the committed reference
(``results/``) is reused too, copied into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock  # transformers' own dependency, pinned in requirements.txt

from semalign_core.paths import REPO_ROOT, reference_results_dir, results_dir, reuse_reference

TRACKED_PACKAGES = ("torch", "transformers", "lm_eval", "peft", "captum", "numpy", "gguf")


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_commit() -> str | None:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it; None outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit.decode().strip() + ("-dirty" if dirty and dirty.strip() else "")


def code_identity() -> dict[str, Any]:
    """The code a record was computed with: HEAD's commit and, for a dirty tree, the sha256 of
    ``git diff HEAD`` (tracked files only: a new file counts once it is added)."""
    commit = _git("rev-parse", "HEAD")
    diff = _git("diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
    dirty = None if diff is None else bool(diff)
    return {
        "git_commit": None if commit is None else commit.decode().strip(),
        "dirty": dirty,
        "diff_sha256": hashlib.sha256(diff).hexdigest() if dirty else None,
    }


def _git(*args: str) -> bytes | None:
    """stdout of a read-only git command in the repo; None outside a git checkout."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(
    seed: int | None = None,
    data_sources: dict[str, str] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
        "device": device,
        "dtype": dtype,
        "threads": torch_threads(),
        "seed": seed,
        "data_sha256": dict(sorted((data_sources or {}).items())),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def torch_threads() -> int | None:
    """The intra-op thread count of the torch in this process (None when torch is not loaded):
    one process with two threads and two with one each give different times on a 2-core box."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.get_num_threads()


def record_path(experiment: str, profile: str, run: str) -> Path:
    return results_dir() / experiment / profile / f"{run}.json"


def atomic_write(path: Path, writer) -> Path:
    """Call ``writer(tmp_path)`` on a temp file beside ``path``, then rename it into place, so a
    killed run never leaves half a file (readers see the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and caches are meant to be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_record(
    experiment: str,
    profile: str,
    run: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    cost: dict[str, Any],
    prov: dict[str, Any],
    **extra: Any,
) -> Path:
    payload = {
        "experiment": experiment,
        "profile": profile,
        "run": run,
        "config": config,
        "config_hash": config_hash(config),
        "metrics": metrics,
        "cost": cost,
        "provenance": prov,
        **extra,
    }
    return write_json_atomic(record_path(experiment, profile, run), payload)


# role -> model identity ({"weights_sha256", "tokenizer_sha256", "origin"}), read from the files
ModelIdentities = Mapping[str, Mapping[str, Any]]


def load_valid_record(
    experiment: str,
    profile: str,
    run: str,
    config: dict[str, Any],
    identities: ModelIdentities | None = None,
) -> dict | None:
    """The valid record of this run: the run folder's, else, only when
    :func:`~semalign_core.paths.reuse_reference` allows it, the reference's (``results/``), which
    is then copied into the run folder so that the run's report sees it.

    Valid: it exists, parses, was made with the same config and, when ``identities`` are given,
    with the same models (:func:`same_models`)."""
    path = record_path(experiment, profile, run)
    record = _valid_record_at(path, config, identities)
    if record is not None:
        return record
    reference = reference_results_dir() / experiment / profile / path.name
    if not reuse_reference() or reference.resolve() == path.resolve():
        return None
    record = _valid_record_at(reference, config, identities)
    if record is not None:
        data = reference.read_bytes()
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return record


def _valid_record_at(
    path: Path, config: dict[str, Any], identities: ModelIdentities | None
) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("config_hash") != config_hash(config):
        return None
    if identities is not None and not same_models(record, identities):
        return None
    return record


def same_models(record: dict[str, Any], identities: ModelIdentities) -> bool:
    """Whether ``record`` was computed with exactly these models. A record that stores none, or a
    model whose files are missing (a None hash), cannot be vouched for."""
    stored = record.get("provenance", {}).get("models")
    hashes = [v for ident in identities.values() for k, v in ident.items() if k.endswith("sha256")]
    return stored == json.loads(json.dumps(identities)) and None not in hashes


@dataclass
class RecordParts:
    """What a computation adds to a record beside its identity (experiment, profile, run, config):
    ``extra`` holds further top-level keys (model, task, seed, ...)."""

    metrics: dict[str, Any]
    cost: dict[str, Any]
    provenance: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


# measure(compute) runs a computation and may add to its cost (the cell runner's own-process
# peak memory, experiments/cells.py); None: computed as it is.
Measure = Callable[[Callable[[], RecordParts]], RecordParts]


def measured(
    compute: Callable[[], RecordParts], measure: Measure | None
) -> Callable[[], RecordParts]:
    """``compute``, run through ``measure`` when one is given."""
    return compute if measure is None else partial(measure, compute)


def is_secondary_process() -> bool:
    """Whether this is one of several FSDP processes (``lm/sharding.py``) other than the first,
    which alone evaluates and writes records. torch is not imported for this: a process that
    joined a process group has imported it already."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def get_or_compute(
    experiment: str,
    profile: str,
    run: str,
    config: dict[str, Any],
    compute: Callable[[], RecordParts],
    force: bool = False,
    models: Callable[[], ModelIdentities] | None = None,
) -> dict[str, Any]:
    """The record of one run: the stored one when it is valid (unless ``force``), else
    ``compute()`` written atomically and read back, so a fresh and a reused record look alike.

    Valid: the same config hash and, when ``models`` is given (a callable returning
    ``{role: identity}`` from the model files, e.g. ``model_pool.record_models``), the same model
    identities. A fresh record stores them (read after ``compute``, which may have made a model's
    cache) in ``provenance["models"]``, and the code's identity in ``provenance["code"]``
    (recorded, not checked: a code change does not invalidate records).

    This is how every notebook resumes: a killed run recomputes only what has no valid record.
    """
    if not force:
        current = models() if models is not None else None
        record = load_valid_record(experiment, profile, run, config, current)
        if record is not None:
            note_in_manifest(record_path(experiment, profile, run))
            return record
    parts = compute()
    if is_secondary_process():  # one of several FSDP processes: only the first writes
        return {"config": config, "metrics": parts.metrics, "cost": parts.cost}
    prov = {**parts.provenance, "code": parts.provenance.get("code") or code_identity()}
    if models is not None:
        prov["models"] = dict(models())
    path = write_record(
        experiment, profile, run, config, parts.metrics, parts.cost, prov, **parts.extra
    )
    note_in_manifest(path)
    return load_valid_record(experiment, profile, run, config)  # as written, whatever it holds


MANIFEST_ENV = "SEMALIGN_RUN_MANIFEST"


def note_in_manifest(path: Path) -> None:
    """Append ``path`` (relative to the results folder) to the run's manifest, the file named by
    ``$SEMALIGN_RUN_MANIFEST`` (set by ``run_notebook`` for its kernel): the records a notebook
    produced or reused, which is exactly what ``promote`` copies."""
    manifest = os.environ.get(MANIFEST_ENV)
    if manifest:
        with open(manifest, "a", encoding="utf-8") as out:
            out.write(f"{Path(path).relative_to(results_dir())}\n")


def read_manifest(manifest: Path, results: Path) -> dict[str, str]:
    """The records a manifest names, each with the sha256 of its file now (sorted by path)."""
    return file_digests(results, Path(manifest).read_text(encoding="utf-8").split())


def file_digests(folder: Path, names) -> dict[str, str]:
    """name → sha256 of ``folder / name`` for each existing file of ``names`` (sorted by name)."""
    paths = {name: Path(folder) / name for name in sorted(set(names))}
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items() if p.is_file()}


def json_rounded(values, decimals: int = 6) -> list:
    """Nested lists (or an array, or a tensor on the CPU) of floats rounded to ``decimals``, as
    plain lists with NaN as None (JSON has no NaN); numpy's rounding, so records stay stable."""
    out = np.round(np.asarray(values, dtype=np.float64), decimals).tolist()

    def clean(x):
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if x != x else x

    return clean(out)


# Keys whose values measure a run (time, memory, machine, code state) rather than define its
# result.
VOLATILE_KEYS = ("wall", "time", "created", "peak", "rss", "load", "git_commit", "_mb", "dirty")
VOLATILE_SUFFIXES = ("_s",)  # seconds; a suffix, so ``*_sha256`` and ``*_steps`` stay compared


def _volatile(key: str) -> bool:
    key = key.lower()
    return any(t in key for t in VOLATILE_KEYS) or key.endswith(VOLATILE_SUFFIXES)


def without_volatile(value):
    """``value`` (a record or part of one) with every measuring key dropped, recursively: what two
    runs of the same config must agree on."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def made_once(path: Path, current: Callable[[], bool], make: Callable[[], Path]) -> Path:
    """``path`` if ``current()``, else ``make()``'s folder, made by one process at a time: the
    processes of one launch (FSDP: one per GPU) load the same models at once, and a second
    maker would replace the folder while the first process reads it. A process that waited
    for the lock finds the folder current and makes nothing."""
    path = Path(path)
    if current():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / f".{path.name}.lock"):
        return path if current() else make()


def atomic_write_dir(path: Path, writer) -> Path:
    """Call ``writer(tmp_dir)`` to fill a temp folder beside ``path`` (a model, its tokenizer, a
    marker), then rename it into place, replacing an old ``path``, so a killed run never leaves a
    half-written folder where a cache looks. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        writer(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; caches are meant to be readable
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path
