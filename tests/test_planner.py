"""The preflight memory planner (``experiments/planner.py``) against measurement and arithmetic.

Measured side: each step runs in a fresh spawned process on small random Llama models (fp32,
eager attention, one thread), measured by :mod:`memory_probe`: the peak RSS growth of the step
after a warm-up on a micro model, with glibc returning freed memory at once (the CPU counterpart
of ``torch.cuda.max_memory_allocated``). Planned side: the planner's own step functions, fed the
same configs. Tolerance: 15 %.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from memory_probe import MIB
from memory_probe import measured_peak as measured_step_peak

from semalign_core import cli
from semalign_core.baselines import seeking
from semalign_core.experiments import budgets, planner
from semalign_core.models.tiny import tiny_config, tiny_model
from semalign_core.profiles import get_profile
from semalign_core.semalign import attribution
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.transfer import transfer

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


def _semalign_transfer(source_cfg: dict, target_cfg: dict, config: dict, n_train: int) -> None:
    """A whole SemAlign transfer through the package's code (models made inside the step)."""
    from test_semalign_memory import _records, _word_tokenizer

    source = tiny_model("llama", seed=1, **source_cfg)
    target = tiny_model("llama", seed=2, **target_cfg)
    cfg = SemAlignConfig(**config)
    train, extract = _records(0, n_train), _records(n_train, cfg.attribution_batch)
    transfer(source, target, train, extract, cfg, _word_tokenizer())


def _attribution(source_cfg: dict, target_cfg: dict, batch: int, seq: int) -> None:
    """SemAlign's attribution of the source, through its own code (every position supervised),
    with the target resident beside it."""
    source = tiny_model("llama", **source_cfg)
    target = tiny_model("llama", **target_cfg)
    ids = torch.randint(1, source_cfg["vocab_size"], (batch, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    scores = attribution.grad_x_activation(source, inputs, SemAlignConfig().attribution_method)
    del scores, target


def _sensitivity(cfg: dict, batch: int, seq: int) -> None:
    """Seeking's sensitivity pass through its own code, two batches."""
    model = tiny_model("llama", **cfg)
    batches = []
    for _ in range(2):
        ids = torch.randint(1, cfg["vocab_size"], (batch, seq))
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    seeking.sensitivity(model, batches)


STEPS = {
    "sensitivity": _sensitivity,
    "generate": _generate,
    "finetune": _finetune,
    "semalign": _semalign_transfer,
    "attribution": _attribution,
}
WARM_UP = {
    "sensitivity": dict(cfg=MICRO, batch=2, seq=4),
    "generate": dict(cfg=MICRO, batch=2, prompt=4, new_tokens=3),
    "finetune": dict(cfg=MICRO, batch=2, seq=4),
    "semalign": dict(
        source_cfg=MICRO, target_cfg=MICRO, config=dict(batch_size=2, progress=False), n_train=2
    ),
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


# the whole run: 4 training batches of 8 × 48 tokens (records longer than that), 2 used per
# stage; the planner's heaviest step (host memory included: on the CPU it is the same memory)
SEMALIGN_RUN = dict(batch_size=8, max_length=48, steps_per_stage=2, lr=1e-3, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("micro", [None, 2])
def test_semalign_run_peak_matches_measurement(models, micro):
    run = dict(SEMALIGN_RUN, micro_batch_size=micro)
    steps = planner.semalign_steps(
        "e", "source", "target", n_extract=8, batch=8, seq=48, steps_per_stage=2,
        dtype_bytes=4, config=SemAlignConfig(**run), n_train=32,
    )  # fmt: skip
    assert all(s.resident == ("source", "target") for s in steps)
    measured = measured_peak(
        "semalign", source_cfg=SOURCE, target_cfg=TARGET, config=run, n_train=32
    )
    _close(max(s.total_on_cpu for s in steps), measured)


@pytest.mark.slow
def test_seeking_sensitivity_peak_matches_measurement(models):
    step = planner.seeking_step("e", "eval", micro=8, seq=128, examples=16, dtype_bytes=4)
    measured = measured_peak("sensitivity", cfg=EVAL_MODEL, batch=8, seq=128)
    _close(step.total_on_cpu, measured)


@pytest.mark.slow
def test_semalign_attribution_peak_matches_measurement(models):
    attribution_step = planner.semalign_steps(
        "e", "source", "target", n_extract=8, batch=8, seq=128, steps_per_stage=1, dtype_bytes=4
    )[0]
    measured = measured_peak("attribution", source_cfg=SOURCE, target_cfg=TARGET, batch=8, seq=128)
    # the measured step attributes alone, without the semantic bases a run has made before
    _close(attribution_step.total - attribution_step.parts["semantic bases"], measured)


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
    # attribution and stage steps in micro-batches (the budget's micro-batch size): one card
    gsm = budgets.transfer_budget(prof, "gsm")
    assert gsm.micro_batch_size < gsm.batch_size
    assert all(s.gpus_needed() == 1 for s in semalign)
    # Seeking's sums wait on the CPU: one card; the full-weight controls need FSDP over
    # several cards (the 13B source whole on each, beside the 7B target's shards)
    transfer = plans["semalign_transfer"]
    seeking_pass = next(s for s in transfer.steps if s.step.startswith("Seeking"))
    assert seeking_pass.gpus_needed() == 1 and seeking_pass.host > 40 * 2**30
    assert transfer.gpus_needed > 1 and not transfer.misfits
    controls = [s for s in transfer.steps if "control" in s.step]
    assert {s.step for s in controls} == {
        "output-KL control (target)",
        "hidden-distillation control (target)",
    }
    assert all(s.sharded is not None and s.gpus_needed() > 1 for s in controls)
    # the ablations: SemAlign from the teacher made of the 13B source, on both informative tasks
    ablation = [s for s in plans["semalign_ablations"].steps if s.step.startswith("SemAlign")]
    assert ablation and all(s.parts["weights"] == both for s in ablation)
    made = [s for s in plans["semalign_ablations"].steps if s.step == "teacher fine-tuning"]
    # the 13B teacher: not one card in one process; sharded by FSDP over several
    assert len(made) == 2 and made[0].total > 80 * 2**30 and made[0].gpus_needed() > 1
    text = planner.format_plan(prof, list(plans.values()), [])
    assert "no GPU" in text and "salf_main" in text and "meta-llama/Llama-2-7b-chat-hf" in text
    # SALF's full fine-tuning of Gemma2-9B: over one card in one process; FSDP spreads it, but
    # not the runs FSDP does not train (AutoFreeze; the timing repeats, full_embeddings timed)
    salf = [s for p in ("salf_main", "salf_cost_benefit") for s in plans[p].steps]
    gemma = [s for s in salf if s.step.startswith("SALF full FT") and "gemma2-9b" in s.step]
    sharded = [s for s in gemma if s.sharded is not None]
    alone = [s for s in gemma if "one process" in s.step]
    assert len(sharded) == len(alone) == 2 and all(s.total > 80 * 2**30 for s in gemma)
    assert all(s.gpus_needed() == 3 for s in sharded)
    assert all(s.gpus_needed() is None and s.flops == 0 for s in alone)  # counted above
    assert [s.step for s in plans["salf_main"].misfits] == [
        "SALF full FT, one process: AutoFreeze (gemma2-9b)"
    ]
    assert "the code cannot spread it: salf_cost_benefit, SALF full FT + embeddings, one " in text


def test_per_gpu_divides_only_what_fsdp_shards():
    """Hand arithmetic (GiB): weights 30 stay whole on every card; the sharded plan's states
    40, gradients 8 and temporary 8 divide; so 4 cards hold 30 + 10 + 2 + 2 = 44."""
    g = 2.0**30
    one = planner.StepPlan("e", "s", ("m",), {"weights": 30 * g, "optimizer_state": 20 * g})
    phases = {"update": {"gradients": 8 * g, "optimizer_temporary": 8 * g}}
    fsdp = planner.StepPlan("e", "s", ("m",), {"weights": 30 * g, "optimizer_state": 40 * g}, 0.0,
                            phases)  # fmt: skip
    step = replace(one, sharded=fsdp)
    assert step.per_gpu(1) == 50 * g  # one card: the one-process plan
    assert step.per_gpu(4) == 44 * g
    assert step.gpus_needed(gpu_gib=50 / 0.9) == 1
    assert step.gpus_needed(gpu_gib=48 / 0.9) == 4  # 2 cards: 30 + 20 + 4 + 4 = 58 > 48
    assert one.gpus_needed(gpu_gib=48 / 0.9) is None  # one process: no count of cards helps


def test_fsdp_plan_holds_fp32_shards_and_not_the_model():
    """Under FSDP every parameter has an fp32 shard (4 bytes), the trained ones AdamW's two
    fp32 moments (8) and fp32 reduced gradients (4), all divided over the cards, while the
    bf16 model waits on the CPU (lm/sharding.py); one process keeps bf16 moments beside it."""
    arch = planner.architecture("llama2-7b-chat")
    blocks = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096)
    step = planner.finetune_step(
        "e", "ft", "llama2-7b-chat", ("llama2-7b-chat",), {}, micro=4, seq=512, positions=4,
        runs=1, dtype_bytes=2, fsdp=True,
    )  # fmt: skip
    assert step.parts["optimizer_state"] == blocks * 2 * 2  # one process: bf16 moments
    assert step.parts["weights"] == arch.params * 2
    assert step.sharded.parts["optimizer_state"] == blocks * 8
    assert step.sharded.parts["fp32 shards"] == arch.params * 4
    assert step.sharded.parts["weights"] == 0  # no other model resident
    assert step.sharded.phases["optimizer update"]["gradients"] == blocks * 4
    g = 2.0**30
    divided = (arch.params * 4 + blocks * 8) / 4 / g  # held shards and states on 4 cards
    assert step.per_gpu(4) / g > divided
    # gathered: two blocks and the root unit (embedding and untied head), in bf16
    block = blocks // 32
    assert step.sharded.parts["gathered units"] == (2 * block + 2 * 32000 * 4096) * 2
    # the backward's activations: a micro-batch in each process, or (SALF's loop, which deals
    # a step's examples out) a share of the step, divided like the shards
    dealt = planner.finetune_step(
        "e", "ft", "llama2-7b-chat", ("llama2-7b-chat",), {}, micro=4, seq=512, positions=4,
        runs=1, dtype_bytes=2, fsdp=True, deals_step=True,
    )  # fmt: skip
    backward = step.sharded.phases["backward"]
    assert dealt.sharded.phases["backward"] == {f"{k} (step share)": v for k, v in backward.items()}
    sharded = ("fp32 shards", "optimizer_state")
    held = sum(v / 4 if k in sharded else v for k, v in dealt.sharded.parts.items())
    update = sum(dealt.sharded.phases["optimizer update"].values()) / 4  # fp32 gradients, temp
    expected = held + max(sum(backward.values()) / 4, update)
    assert dealt.per_gpu(4) == pytest.approx(expected) and dealt.per_gpu(4) <= step.per_gpu(4)
    assert dealt.sharded.step_examples == 4 and step.sharded.step_examples == 0


def test_the_largest_share_of_a_dealt_step_is_planned():
    """Hand arithmetic (GiB): 3 examples dealt over 2 cards give the first process 2 of them
    (``Engine.step_chunks``), so its activations are 2/3 of the step's 6, not half: the card
    holds 10 (weights) + 8 / 2 (states) + 4 = 18."""
    g = 2.0**30
    fsdp = planner.StepPlan(
        "e", "s", ("m",), {"weights": 10 * g, "optimizer_state": 8 * g}, 0.0,
        {"backward": {"activations (step share)": 6 * g}}, step_examples=3,
    )  # fmt: skip
    step = planner.StepPlan("e", "s", ("m",), {"weights": 40 * g}, sharded=fsdp)
    assert step.per_gpu(2) == 18 * g
    assert step.per_gpu(3) == (10 + 8 / 3 + 2) * g  # one example each
    micro = replace(fsdp, step_examples=0)  # a micro-batch per process: divided by the cards
    assert replace(step, sharded=micro).per_gpu(2) == (10 + 4 + 3) * g


def test_host_memory_of_each_fsdp_process():
    """Under FSDP each process holds in host memory the model it trains, waiting in bf16 (2
    bytes a parameter), and a bf16 copy (2) that lm/sharding.shard casts to fp32 one unit at a
    time before fully_shard moves it to the card: the blocks first (at the first one, +2 a
    parameter of a block), then the root (4 × its 2 × 32000 × 4096, less than the first
    block's peak); the trained weights come back a parameter at a time. SALF's pool keeps one
    more untrained bf16 copy (2) in each process and in the process that launches them;
    hidden distillation's fp32 maps wait and are copied (4 + 4). A launch starts one process
    per card, so 4 cards hold 4 times that."""
    params = _llama_params(32, 4096, 11008, 32000)
    block = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert 4 * 2 * 32000 * 4096 < params * 2 + block * 2  # the root's peak is the lower
    kw = dict(micro=4, seq=512, positions=4, runs=1, dtype_bytes=2)
    control = planner.finetune_step("e", "ft", "llama2-7b-chat", ("llama2-7b-chat",), {}, **kw,
                                    fsdp=True)  # fmt: skip
    per_process = params * 4 + block * 2
    assert control.host == 0 and control.host_on(4) == 4 * per_process
    assert control.host_on(1) == 0  # one process: the model is loaded onto the card
    salf = planner.finetune_step("e", "ft", "llama2-7b-chat", ("llama2-7b-chat",), {}, **kw,
                                 fsdp=True, pooled=True)  # fmt: skip
    pooled = params * 2
    assert salf.host == pooled and salf.host_on(3) == pooled + 3 * (per_process + pooled)
    maps = 32 * 4096 * 5120
    hidden = planner.finetune_step("e", "ft", "llama2-7b-chat", ("llama2-7b-chat",), {}, **kw,
                                   fsdp=True, maps=maps)  # fmt: skip
    assert hidden.parts["maps"] == 16 * maps and hidden.sharded.host == per_process + maps * 8
    # the preflight's host column under FSDP: every process of the cards the step needs (no
    # GPU here), or of every visible GPU; one GPU: one process
    prof = get_profile("paper")
    plans = {p.experiment: p for p in planner.plan_profile(prof)}
    teacher = next(s for s in plans["semalign_finetuned_teacher"].steps if s.sharded)
    thirteen = _llama_params(40, 5120, 13824, 32000) * 4 + (
        4 * 5120 * 5120 + 3 * 5120 * 13824 + 2 * 5120
    ) * 2  # fmt: skip
    assert teacher.sharded.host == thirteen
    cards = teacher.gpus_needed()

    def host_column(gpus: list) -> float:
        text = planner.format_plan(prof, list(plans.values()), gpus)
        row = next(line for line in text.splitlines() if line.startswith("semalign_finetuned"))
        return float(row.split()[-2])

    assert host_column([]) == pytest.approx(cards * thirteen / 2**30, abs=0.05)
    eight = [(f"H100 {i}", 80.0) for i in range(8)]
    assert host_column(eight) == pytest.approx(8 * thirteen / 2**30, abs=0.05)
    assert host_column(eight[:1]) < 80  # SemAlign's host memory, not a launch's
    text = planner.format_plan(prof, list(plans.values()), [])
    most = max(s.sharded.host for p in plans.values() for s in p.steps if s.sharded)
    assert most >= thirteen and f"each process holds up to {most / 2**30:.1f} GiB" in text


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


def test_semalign_plan_counts_the_same_work_in_micro_batches():
    """Micro-batches change what a stage step holds, not the work: the stage's FLOPs are the
    same, its backward smaller."""
    plans = [
        planner.semalign_steps(
            "e", "llama2-13b-chat", "llama2-7b-chat", n_extract=64, batch=64, seq=512,
            steps_per_stage=4, dtype_bytes=2, config=SemAlignConfig(micro_batch_size=micro),
            n_train=1000,
        )[-1]
        for micro in (None, 4)
    ]  # fmt: skip
    whole, micro = plans
    assert micro.flops == pytest.approx(whole.flops, rel=1e-9)
    backward = [sum(p.phases["backward"].values()) for p in plans]
    assert backward[1] < backward[0] / 8  # 16 times fewer tokens per pass


def test_the_plan_follows_the_dtype_the_gpu_computes_in(monkeypatch, capsys):
    """A bf16 profile loads in fp32 on a GPU without native bf16 (a T4): the preflight plans
    that, and says so. At fp32 every weight takes twice the bytes."""
    prof = get_profile("gpu-small")
    bf16 = planner.architecture(prof.semalign_source).params * 2
    plans = {
        dtype: {
            p.experiment: p for p in planner.plan_profile(prof, planner.PlanSettings(dtype=dtype))
        }
        for dtype in ("bfloat16", "float32")
    }
    assert plans["bfloat16"]["models"].heaviest.total == bf16
    assert plans["float32"]["models"].heaviest.total == 2 * bf16
    # the profile's claim: a 24 GB bf16 card runs all of it; a T4 (15 GiB, fp32) SALF's only
    for name, plan in plans["bfloat16"].items():
        assert all(s.per_gpu(1) <= 24 * 0.9 * 2**30 for s in plan.steps), name
    t4 = {n for n, p in plans["float32"].items() if p.steps and
          all(s.per_gpu(1) <= 15 * 0.9 * 2**30 for s in p.steps)}  # fmt: skip
    assert t4 == {"models", "salf_analysis", "salf_main", "salf_cost_benefit"}
    monkeypatch.setattr(planner, "visible_gpus", lambda: [("Tesla T4", 15.0)])
    monkeypatch.setattr(cli, "compute_dtype", lambda dtype, device: "float32")
    monkeypatch.setattr(cli, "require_models", lambda prof: None)
    monkeypatch.setattr(cli, "data_root", lambda: "data")
    assert cli.main(["check", "--profile", "gpu-small"]) == 0
    assert "(float32, not the profile's bfloat16; GPUs here: Tesla T4" in capsys.readouterr().out
