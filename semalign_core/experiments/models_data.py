"""Notebook 00: the model-statistics table (SemAlign Table 3) and the data census.

Each writes one result record (``results/models/<profile>/model_stats.json``,
``results/data/<profile>/census.json``); a valid record with the same config is reused unless
forced.
"""

from __future__ import annotations

import time
from typing import Any

from semalign_core import data
from semalign_core.experiments.catalog import DATA, MODELS
from semalign_core.experiments.model_pool import record_models
from semalign_core.models.registry import REGISTRY, load_model
from semalign_core.profiles import Profile
from semalign_core.records import RecordParts, get_or_compute, provenance

STAT_COLUMNS = (
    "architecture",
    "layers",
    "heads",
    "kv_heads",
    "hidden",
    "intermediate",
    "vocab",
    "parameters",
)


def model_statistics(prof: Profile, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Load every model of the profile once and record its statistics and load time."""
    config = {"profile": prof.name, "models": list(prof.models())}

    def compute() -> RecordParts:
        rows, cost = {}, {}
        for name in prof.models():
            start = time.perf_counter()
            loaded = load_model(name, dtype="float32")
            cost[name] = {"load_wall_s": round(time.perf_counter() - start, 2)}
            rows[name] = {
                **{k: loaded.stats[k] for k in STAT_COLUMNS},
                "origin": loaded.origin,
                "description": REGISTRY[name].description,
            }
            del loaded  # one model in memory at a time
        return RecordParts({"models": rows}, cost, provenance(seed=seed))

    models = record_models(**{name: name for name in prof.models()})
    return get_or_compute(MODELS, prof.name, "model_stats", config, compute, force, models)


def census_splits() -> list:
    """Every benchmark split the experiments read."""
    splits = [
        data.load_gsm8k("train"),
        data.load_gsm8k("test"),
        data.load_mmlu("test"),
        data.load_humaneval(),
        data.load_mbpp("test"),
        data.load_mbpp("train"),
    ]
    splits += [data.load_transfer(t, s) for t in data.TRANSFER_TASKS for s in data.TRANSFER_SPLITS]
    splits += [
        data.load_classification(t, s)
        for t in data.CLASSIFICATION_TASKS
        for s in data.CLASSIFICATION_TASKS[t].labeled_splits
    ]
    return splits


def data_census(prof: Profile, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Every benchmark split the experiments read: records and sha256 of the files."""
    config = {"profile": prof.name, "census": "v1"}

    def compute() -> RecordParts:
        splits = census_splits()
        rows = {f"{s.benchmark}/{s.split}": {"n": len(s)} for s in splits}
        sources = {k: v for s in splits for k, v in s.sources.items()}
        return RecordParts({"splits": rows}, {}, provenance(seed=seed, data_sources=sources))

    return get_or_compute(DATA, prof.name, "census", config, compute, force)


__all__ = ["STAT_COLUMNS", "census_splits", "data_census", "model_statistics"]
