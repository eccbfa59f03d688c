"""Every profile is runnable as written: its SemAlign pair passes the pairing's own rule, and its
transfer budgets ask for no more training records than the splits hold. Checked from the
registry's recorded shapes and the data files, without loading or downloading any model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from transformers import AutoConfig

from semalign_core.data import TRANSFER_TASKS, benchmark_path
from semalign_core.data.cls_transfer import load_cls_transfer
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError, UnknownModelError
from semalign_core.experiments.budgets import INFORMATIVE_TASKS, transfer_budget
from semalign_core.experiments.transfer_tables import transfer_data
from semalign_core.models.registry import REGISTRY, model_shape
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import PROFILES, get_profile
from semalign_core.semalign.pairing import floor_pairing

# The committed model-statistics records were measured on loaded models: a reference for the
# shapes the registry records for wheel, derived and tiny models.
MEASURED = [REPO_ROOT / "results" / "models" / p / "model_stats.json" for p in ("smoke", "cpu")]
# transfer task -> records of its train split, counted by hand (shared/benchmarks/README.md)
TRAIN_RECORDS = {"gsm": 1000, "mmlu": 1000, "humaneval": 1000, "mbpp": 300}


def assert_semalign_pair(source: str, target: str) -> None:
    """The checks SemAlign makes before any work (``semalign.result.check_compatible``), on the
    registry's shapes: same vocabulary, and a pairing of the target's layers into the source's."""
    s, t = model_shape(source), model_shape(target)
    assert s["vocab"] == t["vocab"], (source, target, s["vocab"], t["vocab"])
    floor_pairing(s["layers"], t["layers"])  # raises when the target is deeper


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_semalign_pair_of_every_profile_is_valid(profile):
    prof = PROFILES[profile]
    assert_semalign_pair(prof.semalign_source, prof.semalign_target)
    source, target = model_shape(prof.semalign_source), model_shape(prof.semalign_target)
    assert target["layers"] <= source["layers"]


def test_the_former_gpu_small_pair_is_refused():
    with pytest.raises(IncompatibleModelsError, match=r"target is deeper than source \(32 > 24"):
        assert_semalign_pair("smollm2-1.7b-instruct", "smollm2-360m-instruct")


def test_gpu_small_pairs_qwen25_1_5b_into_0_5b():
    prof = get_profile("gpu-small")
    assert (prof.semalign_source, prof.semalign_target) == (
        "qwen2.5-1.5b-instruct",
        "qwen2.5-0.5b-instruct",
    )
    # Qwen2.5's published configs (huggingface.co/Qwen/Qwen2.5-{1.5B,0.5B}-Instruct)
    assert model_shape(prof.semalign_source) == {"layers": 28, "hidden": 1536, "vocab": 151936}
    assert model_shape(prof.semalign_target) == {"layers": 24, "hidden": 896, "vocab": 151936}


def test_recorded_shapes_match_the_measured_model_statistics():
    checked = 0
    for path in MEASURED:
        for name, stats in json.loads(path.read_text())["metrics"]["models"].items():
            want = {k: stats[k] for k in ("layers", "hidden", "vocab")}
            assert model_shape(name) == want, name
            checked += 1
    assert checked >= 5  # tiny pair, both wheels, the derived student


RECORDED_HUB = sorted(name for name, spec in REGISTRY.items() if spec.kind == "hub" and spec.shape)


@pytest.mark.parametrize("name", RECORDED_HUB)
def test_recorded_hub_shapes_match_a_cached_config(name):
    spec = REGISTRY[name]
    try:
        config = AutoConfig.from_pretrained(spec.hub_id, local_files_only=True)
    except OSError:
        pytest.skip(f"{spec.hub_id} is not in the local hub cache")
    config = getattr(config, "text_config", config)
    got = {"layers": config.num_hidden_layers, "hidden": config.hidden_size}
    assert {**got, "vocab": config.vocab_size} == spec.shape


def test_model_shape_of_unknown_or_unrecorded_models_is_one_line(monkeypatch):
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        model_shape("nope")
    unrecorded = replace(REGISTRY["llama2-7b-chat"], name="unrecorded", shape={})
    monkeypatch.setitem(REGISTRY, "unrecorded", unrecorded)
    with pytest.raises(InvalidParameterError, match="records no shape"):
        model_shape("unrecorded")


def count_records(relpath: str) -> int:
    with open(benchmark_path(relpath), encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_train_split_sizes_are_the_readmes():
    for task, n in TRAIN_RECORDS.items():
        assert count_records(f"transfer-splits/{task}_train.jsonl") == n


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_transfer_budgets_fit_the_train_splits(profile):
    prof = PROFILES[profile]
    for task in TRANSFER_TASKS:
        n_train = transfer_budget(prof, task).n_train
        assert n_train is None or n_train <= TRAIN_RECORDS[task], (profile, task, n_train)
    for task in INFORMATIVE_TASKS[profile]:
        n_train = transfer_budget(prof, task).n_train
        pool = len(load_cls_transfer(task, "train"))
        assert n_train is None or n_train <= pool, (profile, task, n_train, pool)


def test_gpu_small_trains_on_whole_splits():
    prof = get_profile("gpu-small")
    for task in TRANSFER_TASKS:
        train, _ = transfer_data(task, transfer_budget(prof, task), seed=0)
        assert len(train) == TRAIN_RECORDS[task]


def test_a_budget_larger_than_its_split_is_one_line():
    budget = replace(transfer_budget(get_profile("gpu-small"), "mbpp"), n_train=1000)
    with pytest.raises(InvalidParameterError) as err:
        transfer_data("mbpp", budget, seed=0)
    assert str(err.value) == "limit=1000 exceeds the 300 records of transfer/mbpp/train"
