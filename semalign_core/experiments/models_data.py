"""Models-and-data overview: the model-statistics table (SemAlign Table 3) and the data census.

Both write one result record; a valid record with the same config is reused unless forced.
"""

from __future__ import annotations

import time
from typing import Any

from semalign_core.profiles import Profile
from semalign_core.records import load_valid_record, provenance, write_record

STAT_COLUMNS = ("architecture", "layers", "heads", "kv_heads", "hidden", "intermediate", "vocab", "parameters")


def model_statistics(prof: Profile, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Load every model of the profile once and record its statistics and load time."""
    from semalign_core.models.registry import REGISTRY, load_model

    config = {"profile": prof.name, "models": list(prof.models())}
    if not force and (record := load_valid_record("models", prof.name, "model_stats", config)):
        return record
    rows, cost = {}, {}
    for name in prof.models():
        start = time.perf_counter()
        loaded = load_model(name, dtype="float32")
        cost[name] = {"load_wall_s": round(time.perf_counter() - start, 2)}
        rows[name] = {**{k: loaded.stats[k] for k in STAT_COLUMNS}, "origin": loaded.origin,
                      "description": REGISTRY[name].description}
        del loaded
    write_record("models", prof.name, "model_stats", config, metrics={"models": rows}, cost=cost,
                 prov=provenance(seed=seed))
    return load_valid_record("models", prof.name, "model_stats", config)


def data_census(prof: Profile, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Every benchmark split the experiments read: records and sha256 of the files."""
    from semalign_core import data

    config = {"profile": prof.name, "census": "v1"}
    if not force and (record := load_valid_record("data", prof.name, "census", config)):
        return record
    splits = [data.load_gsm8k("train"), data.load_gsm8k("test"), data.load_mmlu("test"),
              data.load_humaneval(), data.load_mbpp("test"), data.load_mbpp("train")]
    splits += [data.load_transfer(t, s) for t in data.TRANSFER_TASKS for s in data.TRANSFER_SPLITS]
    splits += [data.load_classification(t, s) for t in data.CLASSIFICATION_TASKS
               for s in data.CLASSIFICATION_TASKS[t].labeled_splits]
    rows = {f"{s.benchmark}/{s.split}": {"n": len(s)} for s in splits}
    sources = {k: v for s in splits for k, v in s.sources.items()}
    write_record("data", prof.name, "census", config, metrics={"splits": rows}, cost={},
                 prov=provenance(seed=seed, data_sources=sources))
    return load_valid_record("data", prof.name, "census", config)
