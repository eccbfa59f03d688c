"""Result records: one JSON per run, written atomically, with provenance.

A record holds experiment, profile, method, task, metrics (with the n behind each), cost, the full
config and provenance (git commit, package versions, data sha256, seed, device, dtype). A run whose
config hash matches a valid existing record is reused unless forced (:func:`get_or_compute`),
which is what lets an interrupted notebook resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from semalign_core.paths import REPO_ROOT, results_dir

TRACKED_PACKAGES = ("torch", "transformers", "lm_eval", "peft", "captum", "numpy", "gguf")


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
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
        "seed": seed,
        "data_sha256": dict(sorted((data_sources or {}).items())),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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


def load_valid_record(
    experiment: str, profile: str, run: str, config: dict[str, Any]
) -> dict | None:
    """The stored record of this run if it exists, parses, and was made with the same config."""
    path = record_path(experiment, profile, run)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("config_hash") == config_hash(config) else None


@dataclass
class RecordParts:
    """What a computation adds to a record beside its identity (experiment, profile, run, config):
    ``extra`` holds further top-level keys (model, task, seed, ...)."""

    metrics: dict[str, Any]
    cost: dict[str, Any]
    provenance: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def get_or_compute(
    experiment: str,
    profile: str,
    run: str,
    config: dict[str, Any],
    compute: Callable[[], RecordParts],
    force: bool = False,
) -> dict[str, Any]:
    """The record of one run: the stored one when it is valid for ``config`` (unless ``force``),
    else ``compute()`` written atomically and read back, so a fresh and a reused record look alike.

    This is how every notebook resumes: a killed run recomputes only what has no valid record.
    """
    if not force and (record := load_valid_record(experiment, profile, run, config)) is not None:
        return record
    parts = compute()
    write_record(
        experiment, profile, run, config, parts.metrics, parts.cost, parts.provenance, **parts.extra
    )
    return load_valid_record(experiment, profile, run, config)


def json_rounded(values, decimals: int = 6) -> list:
    """Nested lists (or an array, or a tensor on the CPU) of floats rounded to ``decimals``, as
    plain lists with NaN as None (JSON has no NaN); numpy's rounding, so records stay stable."""
    out = np.round(np.asarray(values, dtype=np.float64), decimals).tolist()

    def clean(x):
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if x != x else x

    return clean(out)


# Keys whose values measure a run (time, memory, machine, commit) rather than define its result.
VOLATILE_KEYS = ("wall", "time", "created", "_s", "peak", "rss", "load", "git_commit", "_mb")


def without_volatile(value):
    """``value`` (a record or part of one) with every measuring key dropped, recursively: what two
    runs of the same config must agree on."""
    if isinstance(value, dict):
        return {
            k: without_volatile(v)
            for k, v in value.items()
            if not any(t in k.lower() for t in VOLATILE_KEYS)
        }
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


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
