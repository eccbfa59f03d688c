"""Full fine-tuning under FSDP (``lm/sharding.py``) on 2 CPU processes (gloo): the real SFT and
output-KL loops, launched by ``torch.distributed.run`` (what ``accelerate launch --multi_gpu``
runs), give the one-process loss curve and weights. The 7 training examples make steps of 4 and
3, so one process runs a zero-weight filler pass; ``micro_batch_size=1`` accumulates over passes;
gradient clipping acts on the sharded gradients; ``layers`` leaves the embedding frozen inside
the root FSDP unit."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import cells, teachers
from semalign_core.lm import sharding
from semalign_core.lm.sharding import Engine
from semalign_core.models.registry import load_model
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import get_profile
from semalign_core.records import RecordParts, get_or_compute

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int, **env_extra: str) -> None:
    """Run ``python ARGS`` alone (one process) or under ``torch.distributed.run`` (what
    ``accelerate launch --multi_gpu`` calls) with ``processes`` gloo processes, with the package
    under test whatever the environment's editable install points at."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **env_extra}
    env.pop("WORLD_SIZE", None)
    launcher = (
        ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
        if processes > 1
        else []
    )  # fmt: skip
    command = [sys.executable, *launcher, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-20000:]


def _train(tmp_path: Path, method: str, trainable: str, processes: int) -> dict:
    out = tmp_path / f"{method}-{trainable}-{processes}.json"
    _launch([str(WORKER), str(out), method, trainable], processes)
    return {**json.loads(out.read_text()), "state": torch.load(f"{out}.pt")}


@pytest.mark.slow  # two trainings in 3 fresh processes: ~1.5 min on 2 cores
@pytest.mark.parametrize(
    ("method", "trainable"),
    [("sft", "full"), ("output_kl", "layers"), ("hidden_distill", "layers")],
)
def test_two_fsdp_processes_train_as_one(tmp_path, method, trainable):
    one = _train(tmp_path, method, trainable, 1)
    two = _train(tmp_path, method, trainable, 2)
    assert len(one["losses"]) == len(two["losses"]) == 4  # 2 epochs x (4 + 3 examples)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert two["tokens"] == one["tokens"]
    assert two["flops"] == pytest.approx(one["flops"], rel=1e-12)
    assert two["notes"][-1] == "trained with fsdp x2" and "fsdp" not in " ".join(one["notes"])
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=0, atol=2e-6, msg=name)
    # the weights moved (equal weights are not two untouched models), the frozen ones did not
    initial = load_model("tiny-target", verbose=False).model.state_dict()
    moved = {name: float((two["state"][name] - v).abs().max()) for name, v in initial.items()}
    embedding = next(name for name in moved if "embed_tokens" in name)
    assert max(moved.values()) > 1e-3
    assert (moved[embedding] > 1e-3) == (trainable == "full")
    if method == "hidden_distill":  # the maps trained beside the target, sharded like it
        maps = [name for name in one["state"] if name.startswith("maps.")]
        assert maps and all(name in two["state"] for name in maps)


def _make_teacher(cache: Path, processes: int, recipe) -> tuple[dict, dict]:
    """Make ``recipe``'s teacher by the command :func:`teachers.ensure_teacher` launches, in
    ``processes`` gloo processes, into the cache ``cache``: (its marker, its weights)."""
    recipe_json = json.dumps(asdict(recipe))
    module = ["-m", "semalign_core.experiments.teachers", recipe_json]
    _launch(module, processes, SEMALIGN_CACHE_DIR=str(cache))
    (folder,) = [p for p in (cache / "models").iterdir() if p.name == recipe.cache_name()]
    marker = json.loads((folder / "semalign_teacher.json").read_text())
    return marker, load_file(folder / "model.safetensors")


@pytest.mark.slow  # two teacher makings in 3 fresh processes
def test_a_teacher_made_by_two_fsdp_processes_is_the_one_process_teacher(tmp_path):
    """The made teacher (Table 2's and the ablations'): its SFT sharded over 2 processes gives
    the one-process losses and weights, and only the first process evaluates and saves it."""
    recipe = teachers.teacher_recipe("smoke", "sst2")
    one, one_weights = _make_teacher(tmp_path / "one", 1, recipe)
    two, two_weights = _make_teacher(tmp_path / "two", 2, recipe)
    np.testing.assert_allclose(two["report"]["losses"], one["report"]["losses"], rtol=1e-4)
    assert two["report"]["after"]["acc"] == one["report"]["after"]["acc"]
    assert two["recipe"] == one["recipe"] == asdict(recipe)
    assert (one["report"]["engine"], two["report"]["engine"]) == ("single process", "fsdp x2")
    for name, value in one_weights.items():
        torch.testing.assert_close(two_weights[name], value, rtol=0, atol=2e-6, msg=name)


def test_each_process_runs_the_same_number_of_passes():
    steps = [list(range(n)) for n in range(1, 12)]
    for micro in (1, 2, 3):
        for ids in steps:
            a, b = Engine(0, 2).step_chunks(ids, micro), Engine(1, 2).step_chunks(ids, micro)
            assert len(a) == len(b)
            real = sorted(i for chunk, w in a + b if w for i in chunk)
            assert real == ids  # every example once, with weight 1
            assert all(w in (0.0, 1.0) for _, w in a + b)
    assert Engine().step_chunks([5, 6, 7], 2) == [([5, 6], 1.0), ([7], 1.0)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP would place the shards on the GPU")
def test_shards_are_fp32_copies_made_one_unit_at_a_time(tmp_path, monkeypatch):
    """``shard`` of a bf16 model (tied embeddings): every shard holds the bf16 weight in fp32
    exactly, the tie survives, the forward computes in bf16 as the original does, and the fp32
    copy is made unit by unit: when a unit is sharded, no other unit's fp32 tensors exist whole
    in host memory (the whole model in fp32 would be 4 bytes a parameter per process)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from semalign_core.models.tiny import tiny_model

    original = tiny_model("llama", num_hidden_layers=3, tie_word_embeddings=True).bfloat16()
    work = copy.deepcopy(original)
    unsharded_fp32 = []

    def watched(module, **kw):
        whole = [t for t in work.parameters() if not isinstance(t, DTensor)]
        unsharded_fp32.append(sum(t.numel() for t in whole if t.dtype == torch.float32))
        assert sum(t.numel() for t in module.parameters() if not isinstance(t, DTensor)) > 0
        return fully_shard(module, **kw)

    monkeypatch.setattr(torch.distributed.fsdp, "fully_shard", watched)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        sharding.shard(work, torch.bfloat16)
        states = {n: p.full_tensor() for n, p in work.named_parameters()}
        ids = torch.randint(0, original.config.vocab_size, (2, 7))
        with torch.no_grad():
            logits, expected = work(ids).logits, original(ids).logits
    finally:
        torch.distributed.destroy_process_group()
    blocks = [sum(p.numel() for p in b.parameters()) for b in original.model.layers]
    root = sum(p.numel() for p in original.parameters()) - sum(blocks)
    # before each block: only that block is fp32 (the earlier ones are shards); then the root
    assert unsharded_fp32 == [*blocks, root]
    assert work.lm_head.weight is work.model.embed_tokens.weight
    for name, param in original.named_parameters():
        assert states[name].dtype == torch.float32
        assert torch.equal(states[name], param.float()), name
    assert all(b.dtype == torch.float32 for b in work.buffers() if b.is_floating_point())
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_cells_run_one_process_per_gpu_only_where_the_profile_trains_with_fsdp():
    paper, cpu = get_profile("paper"), get_profile("cpu")
    assert paper.train_engine == "fsdp"
    launcher = sharding.launch_command  # how a cell's fresh process starts (cell_process)
    assert launcher(paper.train_engine, 1) == launcher(cpu.train_engine, 8) == [sys.executable]
    command = launcher(paper.train_engine, 4)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and "--num_processes=4" in command
    assert not cells.in_own_processes(cpu, 1) and cells.in_own_processes(cpu, 2)
    # only full fine-tuning through fine_tune (hidden distillation's maps sharded beside it)
    controls = ["sft__gsm__seed0", "output_kl__mbpp__seed1", "hidden_distill__gsm__seed0"]
    assert cells.sharded_cells("semalign_transfer", controls)
    assert cells.sharded_cells("semalign_finetuned_teacher", ["ft-source__sft__sst2__seed0"])
    for other in ("seeking__gsm__seed0", "semalign__gsm__seed0", "target__gsm"):
        assert not cells.sharded_cells("semalign_transfer", ["sft__gsm__seed0", other])
    # SALF: every policy FSDP trains (fixed trainable sets of the model's own weights)
    salf = ["m__trec__full__seed0", "m__trec__salf__seed1", "m__trec__random_matched__seed0"]
    assert cells.sharded_cells("salf_main", salf)
    assert cells.sharded_cells("salf_cost_benefit", ["m__trec__eof_3__seed0"])
    for other in ("m__trec__zero_shot", "m__trec__lisa__seed0", "m__trec__lora_all__seed0"):
        assert not cells.sharded_cells("salf_main", [*salf, other])
    with pytest.raises(InvalidParameterError, match="train_engine"):
        replace(cpu, train_engine="deepspeed")


def test_only_the_first_process_writes_the_record(folders, monkeypatch):
    run_results, _ = folders
    compute = lambda: RecordParts(metrics={"x": 1.0}, cost={}, provenance={})  # noqa: E731
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    record = get_or_compute("e", "smoke", "r", {"a": 1}, compute)
    assert record["metrics"] == {"x": 1.0}
    assert not any(run_results.rglob("*.json"))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    get_or_compute("e", "smoke", "r", {"a": 1}, compute)
    assert [p.name for p in run_results.rglob("*.json")] == ["r.json"]


SALF_WORKER = Path(__file__).with_name("fsdp_salf_worker.py")


def _salf_runs(tmp_path: Path, processes: int) -> dict:
    out = tmp_path / f"salf-{processes}.json"
    _launch([str(SALF_WORKER), str(out)], processes)
    runs = json.loads(out.read_text())
    return {name: {**run, "state": torch.load(f"{out}.{name}.pt")} for name, run in runs.items()}


@pytest.mark.slow  # five SALF runs in 3 fresh processes: ~40 s on 2 cores
def test_two_fsdp_processes_run_the_salf_loop_as_one(tmp_path):
    """SALF's own loop (block replay, the root unit around each step, the prefix cache, a filler
    pass in the one-example step, uneven shares by examples and by label tokens) under 2 gloo
    processes: the one-process losses, scores and weights; real tokens, the updated parameters
    and the optimizer's FLOPs summed over the processes (padding differs, so the passes' FLOPs
    may)."""
    one, two = _salf_runs(tmp_path, 1), _salf_runs(tmp_path, 2)
    assert set(one) == set(two) == {"full", "full_embeddings", "eof2", "eof2_sgd", "eof1_lm_sgd"}
    initial = load_model("tiny-source", verbose=False).model.state_dict()
    for name, run in one.items():
        other = two[name]
        assert len(run["losses"]) == 6  # 2 epochs x 3 steps (of 4, 4 and 1, or of 3 examples)
        np.testing.assert_allclose(other["losses"], run["losses"], rtol=2e-6, err_msg=name)
        assert other["metrics"] == run["metrics"] and run["metrics"]["n"] == 6
        assert other["real_tokens"] == run["real_tokens"]
        assert other["updated_params_steps"] == pytest.approx(run["updated_params_steps"])
        assert other["optimizer_flops"] == pytest.approx(run["optimizer_flops"], rel=1e-12)
        assert isinstance(run["updated_params_steps"], int)  # one process: counts stay integers
        assert other["cache_hits"] == run["cache_hits"] == (3 if name.startswith("eof") else 0)
        for key, value in run["state"].items():
            torch.testing.assert_close(other["state"][key], value, rtol=0, atol=1e-4, msg=key)
        moved = {k: float((run["state"][k] - v).abs().max()) for k, v in initial.items()}
        embedding = next(k for k in moved if "embed_tokens" in k)
        assert max(moved.values()) > 1e-2, name
        assert (moved[embedding] > 0) == (name == "full_embeddings"), name


@pytest.mark.parametrize("label", ["lisa", "lora"])
def test_salf_refuses_fsdp_for_a_changing_set_or_adapters(monkeypatch, label):
    from semalign_core.lm import sharding
    from semalign_core.salf import finetune as ft
    from semalign_core.salf import policies

    monkeypatch.setattr(sharding, "current_engine", lambda: Engine(rank=0, world_size=2))
    lm = load_model("tiny-source", verbose=False)
    policy = policies.make_policy(label, **({"eof": 0} if label == "lora" else {}))
    records = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    with pytest.raises(InvalidParameterError, match="runs in one process, not under FSDP"):
        ft.finetune(
            lm.model, lm.tokenizer, records, None, policy, label_words=("negative", "positive")
        )


def test_salf_grid_launches_the_policies_fsdp_trains_where_the_profile_says(folders, monkeypatch):
    """Where several GPUs would take a launch, the grid has the cell runner train each run FSDP
    can (once: a valid record is read, not relaunched) and computes the rest itself; a grid with
    its own budget (which the cell runner would not use) computes everything itself; a launch
    that leaves no valid record is an error, not a silent run in this process."""
    from semalign_core.errors import ArtifactError
    from semalign_core.experiments import cell_process, salf_cells
    from semalign_core.lm import sharding

    smoke = get_profile("smoke")  # trains in one process: the patched check says "single" here
    model, launched, inside = smoke.salf_models[0], [], [False]
    monkeypatch.setattr(sharding, "launches_several", lambda e: e == "single" and not inside[0])

    def launch(exp, run, profile, force, threads, **kw):  # the cell runner, in this process
        launched.append((exp, run, kw))
        inside[0] = True
        try:
            salf_cells.SalfGrid(smoke, verbose=False).run(model, "sst2", label_of(run), 0, force)
        finally:
            inside[0] = False

    label_of = salf_cells.label_of
    monkeypatch.setattr(cell_process, "spawn", launch)
    grid = salf_cells.SalfGrid(smoke, budget=salf_cells.run_budget(smoke), verbose=False)
    for label in ("zero_shot", "full", "lisa", "full"):
        grid.run(model, "sst2", label, 0)
    assert launched == [("salf_main", f"{model}__sst2__full__seed0", {"sharded": True})]
    launched.clear()
    grid.run(model, "sst2", "full", 0, force=True)  # forced: launched again, with --force
    assert [run for _, run, _ in launched] == [f"{model}__sst2__full__seed0"]
    launched.clear()
    own = salf_cells.SalfGrid(smoke, budget=salf_cells.run_budget(smoke, n_train=4), verbose=False)
    own.run(model, "sst2", "full", 0)
    assert launched == []
    monkeypatch.setattr(cell_process, "spawn", lambda *a, **kw: None)  # a launch that failed
    with pytest.raises(ArtifactError, match="left no valid record"):
        grid.run(model, "sst2", "salf", 0)
