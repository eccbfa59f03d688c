"""The preflight memory planner (``experiments/planner.py``) against measurement and arithmetic.

Measured side: each step runs in a fresh spawned process on small random Llama models (fp32,
eager attention, one thread), measured by :mod:`memory_probe`: the peak RSS growth of the step
after a warm-up on a micro model, with glibc returning freed memory at once (the CPU counterpart
of ``torch.cuda.max_memory_allocated``). Planned side: the planner's own step functions, fed the
same configs. Tolerance: 15 %.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from memory_probe import MIB
from memory_probe import measured_peak as measured_step_peak

from semalign_core import cli
from semalign_core.experiments import planner
from semalign_core.models.tiny import tiny_config, tiny_model
from semalign_core.profiles import get_profile
from semalign_core.semalign import attribution
from semalign_core.semalign.config import SemAlignConfig

TOLERANCE = 0.15

# An 8-layer d=512 Llama with Llama-2's vocabulary: ~60 M parameters, 240 MB in fp32.
EVAL_MODEL = dict(
    vocab_size=32000,
    hidden_size=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    intermediate_size=1536,
)
SOURCE = dict(
    vocab_size=8192,
    hidden_size=512,
    num_layers=10,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=1536,
)
TARGET = dict(
    vocab_size=8192,
    hidden_size=384,
    num_layers=8,
    num_heads=6,
    num_kv_heads=2,
    intermediate_size=1024,
)
MICRO = dict(vocab_size=256, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2)


# --------------------------------------------------------------------------- measured steps


def _generate(cfg: dict, batch: int, prompt: int, new_tokens: int) -> None:
    """Greedy generation through transformers' ``generate`` (KV cache on), as evaluation runs."""
    model = tiny_model("llama", **cfg)
    ids = torch.randint(1, cfg["vocab_size"], (batch, prompt))
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def _finetune(cfg: dict, batch: int, seq: int) -> None:
    """Two AdamW steps training every decoder block (embeddings and head frozen), loss on the
    last position's label token (SALF's loss)."""
    model = tiny_model("llama", **cfg).train()
    model.model.embed_tokens.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):
        ids = torch.randint(1, cfg["vocab_size"], (batch, seq))
        logits = model(ids, logits_to_keep=1).logits[:, -1].float()
        F.cross_entropy(logits, ids[:, 0]).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)


def _semalign_stage(source_cfg: dict, target_cfg: dict, batch: int, seq: int) -> None:
    """A SemAlign-like stage: the source (no grad) supplies the fp32 state block 1 of the target
    is pulled to; block 1 trains with AdamW; losses read the head after block 1 and at the top
    on every position, so the blocks above run their backward."""
    source = tiny_model("llama", **source_cfg)
    target = tiny_model("llama", **target_cfg).train()
    target.requires_grad_(False)
    block = target.model.layers[0].requires_grad_(True)
    optim = torch.optim.AdamW(block.parameters(), lr=1e-4)
    width = target_cfg["hidden_size"]
    for _ in range(2):
        ids = torch.randint(1, target_cfg["vocab_size"], (batch, seq))
        with torch.no_grad():
            state = source(ids, output_hidden_states=True).hidden_states[2]
            supervision = state[..., :width].float().contiguous()
            del state
        out = target(ids, output_hidden_states=True)
        h1 = out.hidden_states[1]
        readout = target.lm_head(target.model.norm(h1)).float()
        labels = ids.flatten()
        loss = F.mse_loss(h1, supervision) + F.cross_entropy(readout.flatten(0, 1), labels)
        loss = loss + F.cross_entropy(out.logits.float().flatten(0, 1), labels)
        loss.backward()
        del out, h1, readout, loss
        optim.step()
        optim.zero_grad(set_to_none=True)


def _attribution(source_cfg: dict, target_cfg: dict, batch: int, seq: int) -> None:
    """SemAlign's attribution of the source, through its own code (every position supervised),
    with the target resident beside it."""
    source = tiny_model("llama", **source_cfg)
    target = tiny_model("llama", **target_cfg)
    ids = torch.randint(1, source_cfg["vocab_size"], (batch, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    scores = attribution.grad_x_activation(source, inputs, SemAlignConfig().attribution_method)
    del scores, target


STEPS = {
    "generate": _generate,
    "finetune": _finetune,
    "semalign": _semalign_stage,
    "attribution": _attribution,
}
WARM_UP = {
    "generate": dict(cfg=MICRO, batch=2, prompt=4, new_tokens=3),
    "finetune": dict(cfg=MICRO, batch=2, seq=4),
    "semalign": dict(source_cfg=MICRO, target_cfg=MICRO, batch=2, seq=4),
    "attribution": dict(source_cfg=MICRO, target_cfg=MICRO, batch=2, seq=4),
}


def measured_peak(kind: str, **kwargs) -> float:
    """Bytes the step adds to a fresh process's RSS at its peak (see :mod:`memory_probe`)."""
    return measured_step_peak(STEPS[kind], kwargs, WARM_UP[kind])


@pytest.fixture
def models(monkeypatch):
    """The planner sees the test's configs under names, as it sees registry models."""
    archs = {
        name: planner.architecture_from_config(tiny_config("llama", **cfg))
        for name, cfg in (("eval", EVAL_MODEL), ("source", SOURCE), ("target", TARGET))
    }
    monkeypatch.setattr(planner, "architecture", archs.__getitem__)
    return archs


def _close(planned: float, measured: float) -> None:
    ratio = planned / measured
    print(f"planned {planned / MIB:.0f} MiB, measured {measured / MIB:.0f} MiB, x{ratio:.3f}")
    assert abs(ratio - 1) <= TOLERANCE


@pytest.mark.slow
def test_evaluation_peak_matches_measurement(models):
    step = planner.eval_step(
        "e", "eval", batch=16, prompt=128, new_tokens=64, items=1, dtype_bytes=4
    )
    _close(
        step.total, measured_peak("generate", cfg=EVAL_MODEL, batch=16, prompt=128, new_tokens=64)
    )


@pytest.mark.slow
def test_full_finetuning_peak_matches_measurement(models):
    step = planner.finetune_step(
        "e", "ft", "eval", ("eval",), {}, micro=8, seq=128, positions=8, runs=1, dtype_bytes=4
    )
    _close(step.total, measured_peak("finetune", cfg=EVAL_MODEL, batch=8, seq=128))


@pytest.mark.slow
def test_semalign_two_model_stage_peak_matches_measurement(models):
    _, stage = planner.semalign_steps(
        "e", "source", "target", n_extract=1, batch=8, seq=128, steps_per_stage=1, dtype_bytes=4
    )
    assert stage.resident == ("source", "target")
    measured = measured_peak("semalign", source_cfg=SOURCE, target_cfg=TARGET, batch=8, seq=128)
    _close(stage.total, measured)


@pytest.mark.slow
def test_semalign_attribution_peak_matches_measurement(models):
    attribution_step, _ = planner.semalign_steps(
        "e", "source", "target", n_extract=8, batch=8, seq=128, steps_per_stage=1, dtype_bytes=4
    )
    measured = measured_peak("attribution", source_cfg=SOURCE, target_cfg=TARGET, batch=8, seq=128)
    _close(attribution_step.total, measured)


# --------------------------------------------------------------------------- the paper table


def _llama_params(layers: int, hidden: int, inter: int, vocab: int) -> int:
    """Llama-2 (no GQA, untied): embedding + head, q/k/v/o, gate/up/down, two norms per block,
    the final norm."""
    block = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + layers * block + hidden


def test_llama2_parameter_counts_from_configs():
    assert _llama_params(32, 4096, 11008, 32000) == 6_738_415_616  # "6.74 B"
    assert _llama_params(40, 5120, 13824, 32000) == 13_015_864_320  # "13.0 B"
    assert planner.architecture("llama2-7b-chat").params == _llama_params(32, 4096, 11008, 32000)
    assert planner.architecture("llama2-13b-chat").params == _llama_params(40, 5120, 13824, 32000)


def test_paper_table():
    prof = get_profile("paper")
    plans = {p.experiment: p for p in planner.plan_profile(prof)}
    weights = plans["models"]
    # the largest model loaded alone: WizardCoder-13B (one more vocabulary row), bf16
    wizard = _llama_params(40, 5120, 13824, 32001) * 2
    assert weights.heaviest.total == wizard
    # SemAlign keeps 13B + 7B resident: at least their bf16 weights in every SemAlign step
    both = (_llama_params(40, 5120, 13824, 32000) + _llama_params(32, 4096, 11008, 32000)) * 2
    semalign = [s for s in plans["semalign_transfer"].steps if s.step.startswith("SemAlign")]
    assert semalign and all(s.parts["weights"] == both for s in semalign)
    assert plans["semalign_transfer"].peak_gib > 80  # does not fit one card as the code is
    # the ablations: SemAlign from the teacher made of the 13B source, on both informative tasks
    ablation = [s for s in plans["semalign_ablations"].steps if s.step.startswith("SemAlign")]
    assert ablation and all(s.parts["weights"] == both for s in ablation)
    made = [s for s in plans["semalign_ablations"].steps if s.step == "teacher fine-tuning"]
    assert len(made) == 2 and made[0].total > 80 * 2**30  # the 13B teacher: not one GPU as it is
    text = planner.format_plan(prof, list(plans.values()), [])
    assert "no GPU" in text and "salf_main" in text and "meta-llama/Llama-2-7b-chat-hf" in text
    assert planner.gpus_needed(72.0) == 1 and planner.gpus_needed(72.1) == 2


def test_fp32_master_weights_and_states():
    arch = planner.architecture("llama2-7b-chat")
    spec = planner._all_blocks(arch)
    blocks = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096)
    as_coded, phases = planner.train_memory(arch, spec, 512, 512, 1, dtype_bytes=2)
    master, _ = planner.train_memory(arch, spec, 512, 512, 1, dtype_bytes=2, fp32_master=True)
    assert as_coded["optimizer_state"] == blocks * 2 * 2  # two bf16 moments
    assert master["optimizer_state"] == blocks * 3 * 4  # fp32 master + two fp32 moments
    assert phases["optimizer update"]["gradients"] == blocks * 2
    assert "gradients" not in phases["backward"]  # freed activations make room for them


def test_download_command_targets_the_run_cache(monkeypatch):
    monkeypatch.setenv("HF_HOME", "/some where/hf")
    (line,) = planner.download_command(["meta-llama/Llama-2-7b-chat-hf"]).splitlines()
    assert line.startswith("HF_HOME='/some where/hf' HF_HUB_OFFLINE=0 huggingface-cli download ")


def test_check_refuses_paper_without_gpu(monkeypatch, capsys):
    monkeypatch.setattr(cli, "require_models", lambda prof: None)
    monkeypatch.setattr(planner, "visible_gpus", lambda: [])
    monkeypatch.delenv("SEMALIGN_STANDINS", raising=False)
    assert cli.main(["check", "--profile", "paper"]) == 2
    assert "--allow-cpu" in capsys.readouterr().err
    monkeypatch.setattr(cli, "data_root", lambda: "data")
    assert cli.main(["check", "--profile", "paper", "--allow-cpu"]) == 0
    assert "memory plan of profile paper" in capsys.readouterr().out
