"""Preflight plan of a profile: peak memory of each experiment's heaviest step, the GPUs it
needs, disk for the hub weights and a GPU-hours estimate, from model configs and budgets alone.

    prof = get_profile("paper")
    print(format_plan(prof, plan_profile(prof), visible_gpus()))

Nothing is downloaded: each registry model is built on the ``meta`` device from its real config
class (published widths below), so parameter counts are exact, and
:func:`semalign_core.costs.train_memory_bytes` / :func:`~semalign_core.costs.step_flops` (the
package's one memory and FLOP model) cost every training step. What each step keeps on the device
follows the code as it is (docs/decisions.md, "Memory planner"): weights in the profile's dtype,
AdamW states in the parameters' dtype (no fp32 master copy unless ``fp32_master``), SemAlign's
source beside its target, its attribution in batches of the training batch size.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field, replace
from functools import cache

import psutil
import torch
from transformers import AutoModelForCausalLM

from semalign_core import costs
from semalign_core.experiments import budgets
from semalign_core.experiments.catalog import (
    CLS_TASKS,
    EVAL_TASKS,
    FINETUNED_TEACHER,
    MODELS,
    SALF_ANALYSIS,
    SALF_COST_BENEFIT,
    SALF_MAIN,
    SEMALIGN_ABLATIONS,
    SEMALIGN_ANALYSES,
    SEMALIGN_CROSS_FAMILY,
    SEMALIGN_TRANSFER,
    SHARDED_EXPERIMENTS,
)
from semalign_core.models.registry import ATTN_IMPLEMENTATION, REGISTRY, model_shape
from semalign_core.models.teacher_recipe import FINETUNED
from semalign_core.models.tiny import tiny_config
from semalign_core.profiles import Profile
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.flops import stage_spec
from semalign_core.semalign.objective import aligned_logits_fit

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_GIB = 80.0  # the card the "GPUs needed" column counts in (A100/H100 80 GB)
MAX_GPUS = 8  # the most cards one node offers: a step that needs more does not fit
# What FSDP divides over the cards (StepPlan.per_gpu): the fp32 shards, AdamW's states, their
# gradients and the update's temporary, and hidden distillation's maps (sharded beside the
# target with their own states).
SHARDED_PARTS = ("fp32 shards", "optimizer_state", "gradients", "optimizer_temporary", "maps")
# a part of a process's share of the step's examples (SALF's loop deals them out): divided too
STEP_SHARE = " (step share)"
LOSS_TENSORS = 4  # (position × vocabulary) tensors a SemAlign loss term saves (semalign_steps)
# Share of a card a step may plan to use: the CUDA context, allocator fragmentation, and
# kernels' workspaces take the rest.
USABLE_SHARE = 0.9
# Hub organisations whose models need an accepted licence (and a logged-in token) to download.
GATED_OWNERS = ("meta-llama", "google")
# For GPU-hours only: items of each test set (SST-2: its dev set) when a budget evaluates all of
# it, and records of each train split when a budget trains on all of it (others: 1,000).
BENCHMARK_ITEMS = {"gsm": 1319, "mmlu": 14042, "humaneval": 164, "mbpp": 500, "sst2": 872}
TRAIN_RECORDS = {"mbpp": 300}
DEFAULT_TRAIN_RECORDS = 1000
DEFAULT_EVAL_ITEMS = 500

# Config fields the registry's ``shape`` does not record, from each model's published
# config.json: attention heads, key/value heads, MLP width, head_dim where it is not
# hidden / heads, and for wheel models (no ``arch`` in the registry) architecture and tying.
PUBLISHED_WIDTHS: dict[str, dict] = {
    "smollm2-135m-instruct": dict(
        arch="llama", tied=True, num_heads=9, num_kv_heads=3, intermediate=1536
    ),
    "gemma3-270m": dict(
        arch="gemma3", tied=True, num_heads=4, num_kv_heads=1, intermediate=2048, head_dim=256
    ),
    "smollm2-1.7b-instruct": dict(num_heads=32, num_kv_heads=32, intermediate=8192),
    "smollm2-360m-instruct": dict(num_heads=15, num_kv_heads=5, intermediate=2560),
    "qwen2.5-1.5b-instruct": dict(num_heads=12, num_kv_heads=2, intermediate=8960),
    "qwen2.5-0.5b-instruct": dict(num_heads=14, num_kv_heads=2, intermediate=4864),
    "llama2-13b-chat": dict(num_heads=40, num_kv_heads=40, intermediate=13824),
    "llama2-7b-chat": dict(num_heads=32, num_kv_heads=32, intermediate=11008),
    "codellama-13b-python": dict(num_heads=40, num_kv_heads=40, intermediate=13824),
    "wizardcoder-python-13b": dict(num_heads=40, num_kv_heads=40, intermediate=13824),
    "qwen2-7b": dict(num_heads=28, num_kv_heads=4, intermediate=18944),
    "gemma2-9b": dict(num_heads=16, num_kv_heads=8, intermediate=14336, head_dim=256),
    "llama3-8b": dict(num_heads=32, num_kv_heads=8, intermediate=14336),
}


@dataclass(frozen=True)
class Throughput:
    """What a GPU-hour buys: ``peak_flops`` (dense bf16; A100: 312e12, H100 SXM: 989e12) at
    ``utilisation`` (model FLOPs utilisation; generation, memory-bound, runs slower than this)."""

    peak_flops: float = 312e12
    utilisation: float = 0.4

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.peak_flops * self.utilisation) / 3600.0


@dataclass(frozen=True)
class Architecture:
    """A model's config (real class, real widths) and its cost shape (:class:`costs.ModelShape`)."""

    config: object
    shape: costs.ModelShape

    @property
    def params(self) -> int:
        return self.shape.total_params

    def kv_bytes_per_token(self, dtype_bytes: int) -> float:
        """Bytes the KV cache holds per token (every layer's keys and values)."""
        cfg = self.config
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return 2.0 * cfg.num_hidden_layers * kv * head_dim * dtype_bytes


def architecture_from_config(config, eager: bool = True) -> Architecture:
    """The cost shape of ``config``'s model, built on the meta device (no memory, no weights).
    ``eager=False`` (SDPA): the attention probabilities are not saved for the backward, so the
    blocks' ``heads`` (used only by the activation estimate) are 0."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = costs.model_shape(model)
    if not eager:
        shape = replace(shape, blocks=tuple(replace(b, heads=0) for b in shape.blocks))
    return Architecture(config, shape)


@cache
def architecture(name: str) -> Architecture:
    """A registry model's :class:`Architecture` from its published shape and widths."""
    spec = REGISTRY[name]
    shape = model_shape(name)
    if spec.kind == "tiny":
        params = {k: v for k, v in spec.tiny.items() if k not in ("arch", "seed")}
        return architecture_from_config(tiny_config(spec.tiny["arch"], **params))
    if spec.kind == "derived":
        source = architecture(spec.derived_from).config
        head_dim = source.hidden_size // source.num_attention_heads
        widths = dict(
            arch=source.model_type,
            num_heads=spec.derive["hidden_size"] // head_dim,
            num_kv_heads=spec.derive.get("num_kv_groups") or source.num_key_value_heads,
            intermediate=spec.derive["intermediate_size"],
            tied=source.tie_word_embeddings,
        )
    else:
        widths = PUBLISHED_WIDTHS[name]
    arch = spec.arch or widths["arch"]
    tied = spec.tied_embeddings if spec.kind == "hub" else widths["tied"]
    head_dim = widths.get("head_dim", shape["hidden"] // widths["num_heads"])
    config = tiny_config(
        arch,
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_layers=shape["layers"],
        num_heads=widths["num_heads"],
        num_kv_heads=widths["num_kv_heads"],
        intermediate_size=widths["intermediate"],
        head_dim=head_dim,
        tie_word_embeddings=tied,
    )
    # the kernel the run loads the model with (registry.ATTN_IMPLEMENTATION; default SDPA)
    return architecture_from_config(config, eager=ATTN_IMPLEMENTATION.get(arch) == "eager")


# --------------------------------------------------------------------------- step memory


@dataclass(frozen=True)
class StepPlan:
    """The device memory of one step of an experiment (bytes) and its FLOPs over the whole run
    (``flops``: one step's FLOPs × how many times it runs).

    ``parts`` are held through the step (weights, optimizer states); ``phases`` are what comes
    and goes within it (a training step's backward, its optimizer update), each by component:
    the step peaks at ``parts`` plus its largest phase. ``host``: what the step keeps in CPU
    memory beside (on a CPU run, the same memory: :attr:`total_on_cpu`). ``sharded``: the
    step as FSDP runs it over several cards, where the profile shards it (:meth:`per_gpu`), its
    ``host`` what each process keeps in CPU memory (:meth:`host_on`) and ``step_examples`` the
    examples it deals out per step (SALF's loop; 0: a micro-batch in each process)."""

    experiment: str
    step: str
    resident: tuple[str, ...]
    parts: dict[str, float]
    flops: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    host: float = 0.0
    sharded: StepPlan | None = None
    step_examples: int = 0

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda k: sum(self.phases[k].values()), default=None)

    @property
    def total(self) -> float:
        top = sum(self.phases[self.peak_phase].values()) if self.phases else 0.0
        return float(sum(self.parts.values()) + top)

    @property
    def total_on_cpu(self) -> float:
        return self.total + self.host

    def per_gpu(self, gpus: int) -> float:
        """Peak bytes on each of ``gpus`` cards: the one-process plan on one card; under FSDP
        (``sharded``, the step's plan with fp32 shards) the sharded state, its gradients, the
        optimizer's temporary and a process's share of the step's examples (SALF) divided over
        the cards, everything else on each of them, with the gathered FSDP units (two blocks and
        the root). The largest share of ``b`` examples is ceil(b / cards) of them (the first
        process's, ``Engine.step_chunks``)."""
        if gpus <= 1 or self.sharded is None:
            return self.total
        plan = self.sharded
        dealt = plan.step_examples
        step_share = math.ceil(dealt / gpus) / dealt if dealt else 1 / gpus

        def share(key: str) -> float:
            if key.endswith(STEP_SHARE):
                return step_share
            return 1 / gpus if key in SHARDED_PARTS else 1.0

        def divided(part: dict[str, float]) -> dict[str, float]:
            return {k: v * share(k) for k, v in part.items()}

        parts = divided(plan.parts)
        phases = {name: divided(phase) for name, phase in plan.phases.items()}
        return replace(plan, parts=parts, phases=phases, sharded=None).total

    def gpus_needed(self, gpu_gib: float = GPU_GIB, most: int = MAX_GPUS) -> int | None:
        """Fewest cards of ``gpu_gib`` the step fits as the code runs it (one card unless FSDP
        shards it), or None when no count up to ``most`` does."""
        usable = gpu_gib * USABLE_SHARE * GIB
        counts = range(1, most + 1) if self.sharded is not None else (1,)
        return next((n for n in counts if self.per_gpu(n) <= usable), None)

    def host_on(self, gpus: int) -> float:
        """Host RAM of the step on ``gpus`` cards: one process's (:attr:`host`); under FSDP
        (a launch starts one process per card) each process's times the cards, beside what the
        launching process keeps (its one-process host memory: SALF's pooled copy)."""
        if gpus <= 1 or self.sharded is None:
            return self.host
        return self.host + gpus * self.sharded.host


def weights_bytes(names: tuple[str, ...], dtype_bytes: int) -> float:
    return float(sum(architecture(n).params for n in names) * dtype_bytes)


def train_memory(
    arch: Architecture,
    spec: costs.TrainableSpec,
    tokens: int,
    seq_len: int,
    logit_positions: int,
    dtype_bytes: int,
    fp32_master: bool = False,
    accumulate: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(held, phases) of one step training ``spec`` on ``arch`` with AdamW, from
    ``costs.train_memory_bytes`` (its weights are left to the caller's resident models).

    Held: the optimizer states (``fp32_master``: an fp32 copy of the trained weights and fp32
    states) and LoRA adapters. Phases: the backward, which starts with every saved activation,
    the loss's logits and one block's workspace, and frees a block's activations as it writes its
    gradients (so the two add up only when ``accumulate``: gradients of earlier micro-batches
    wait through the next forward); and the optimizer update, gradients plus the one temporary
    as large as the states that torch's multi-tensor (CUDA default) AdamW makes."""
    trained = trained_params(arch.shape, spec)
    mem = costs.train_memory_bytes(
        arch.shape, spec, trained, tokens, seq_len, dtype_bytes, logit_positions=logit_positions
    )
    state = mem["optimizer_state"]
    if fp32_master and dtype_bytes < 4:
        state = float(trained * 4 * (costs.OPTIMIZER_STATE_PER_PARAM["adamw"] + 1))
    held = {"optimizer_state": state, "lora_weights": mem["weights"] - arch.params * dtype_bytes}
    backward = {
        "activations": mem["activations"],
        "logits": logits_bytes(arch, spec, logit_positions),
        "workspace": block_workspace(arch, tokens, seq_len, dtype_bytes),
    }
    if accumulate:
        backward["gradients"] = mem["gradients"]
    update = {"gradients": mem["gradients"], "optimizer_temporary": mem["gradients"]}
    return held, {"backward": backward, "optimizer update": update}


def block_workspace(arch: Architecture, tokens: int, seq_len: int, dtype_bytes: int) -> float:
    """What one block's forward or backward allocates and frees again: its MLP's intermediate
    tensors and one attention score matrix."""
    cfg = arch.config
    per_token = 3 * cfg.intermediate_size + cfg.num_attention_heads * seq_len
    return float(tokens * per_token * dtype_bytes)


def logits_bytes(arch: Architecture, spec: costs.TrainableSpec, positions: int) -> float:
    """The fp32 logits a loss holds through the backward (one per read-out), and the gradient
    of one of them that the backward starts with: beside what autograd saves, which
    ``costs.activation_bytes`` counts (the log-softmax output)."""
    readouts = 1 if spec.readouts is None else len(spec.readouts)
    return 4.0 * (readouts + min(readouts, 1)) * positions * arch.shape.vocab


def trained_params(shape: costs.ModelShape, spec: costs.TrainableSpec) -> int:
    """Parameters a step trains: its blocks (or their adapters), embeddings, an untied head."""
    blocks = sum(shape.blocks[k].params for k in spec.trained_blocks)
    emb = shape.embedding_params if spec.embeddings else 0
    head = shape.head_params if spec.head and not shape.tied else 0
    return blocks + sum(spec.lora_params.values()) + emb + head


def eval_parts(
    arch: Architecture, batch: int, prompt: int, new_tokens: int, dtype_bytes: int
) -> dict[str, float]:
    """Inference beside the weights: the KV cache of ``batch`` sequences of ``prompt +
    new_tokens``, the fp32 logits (every prompt position when scoring, ``new_tokens == 1``; the
    last one when generating) and one layer's forward workspace over the prompt."""
    positions = prompt if new_tokens <= 1 else 1
    return {
        "kv_cache": arch.kv_bytes_per_token(dtype_bytes) * batch * (prompt + new_tokens),
        "logits": 4.0 * batch * positions * arch.config.vocab_size,
        "workspace": block_workspace(arch, batch * prompt, prompt, dtype_bytes),
    }


def eval_flops(arch: Architecture, items: int, prompt: int, new_tokens: int) -> float:
    """Forward FLOPs of evaluating ``items`` items (prompt once, then one token at a time)."""
    seq = prompt + new_tokens
    per_item = costs.prefix_forward_flops(arch.shape, arch.shape.num_layers, seq, seq)
    return items * (per_item + costs.head_flops(arch.shape, max(new_tokens, 1)))


# --------------------------------------------------------------------------- experiment steps


@dataclass(frozen=True)
class PlanSettings:
    """How the plan counts: ``fp32_master`` (an fp32 master copy and fp32 AdamW states beside
    16-bit weights; the code today keeps AdamW states in the weights' dtype), ``throughput``,
    and ``dtype``, the dtype the models compute in (None: the profile's; a GPU without native
    bf16 loads a bf16 profile in fp32: ``devices.compute_dtype``)."""

    fp32_master: bool = False
    throughput: Throughput = field(default_factory=Throughput)
    dtype: str | None = None

    def compute_dtype(self, prof: Profile) -> str:
        return self.dtype or prof.dtype


def _all_blocks(arch: Architecture, **kw) -> costs.TrainableSpec:
    return costs.TrainableSpec(trained_blocks=frozenset(range(arch.shape.num_layers)), **kw)


def semalign_steps(
    exp: str,
    source: str,
    target: str,
    n_extract: int,
    batch: int,
    seq: int,
    steps_per_stage: int,
    dtype_bytes: int,
    fp32_master: bool = False,
    attribution_batch: int | None = None,
    config: SemAlignConfig | None = None,
    n_train: int | None = None,
) -> list[StepPlan]:
    """SemAlign with source and target resident, as the code runs it (``config``: the run's
    SemAlign settings; default the package's).

    Attribution: the extract set in passes of ``attribution_batch`` (default ``batch``)
    examples, gradients at every source block output, weights frozen, per-token loss. Stages:
    each trains one target block on its cached input (:func:`semalign.flops.stage_spec`); the
    heaviest of stage 1 and the last stage is planned. A stage holds the inputs of the batches
    it steps on (``frontier.LayerInputs``), the semantic bases and map, the kept aligned
    logits, and while a step runs one micro-batch (``config.micro``) its recomposed state and,
    with the output KL, the teacher's logits; the source pass's supervision waits in host
    memory (``host``).
    ``n_train``: training examples (None: as many batches as steps per stage). Every sequence
    counts ``seq`` tokens, every position a logit (upper bounds)."""
    config = replace(
        config or SemAlignConfig(),
        batch_size=batch,
        steps_per_stage=steps_per_stage,
        attribution_batch_size=attribution_batch,
    )
    src, tgt = architecture(source), architecture(target)
    resident = (source, target)
    weights = weights_bytes(resident, dtype_bytes)
    # fp32 bases of both heads, twice (lm.semantics keeps the raw ones in its in-process cache
    # beside the normalised ones a run holds), and the composite map
    bases = 4.0 * (
        2 * src.shape.vocab * src.shape.hidden
        + 2 * tgt.shape.vocab * tgt.shape.hidden
        + src.shape.hidden * tgt.shape.hidden
    )
    micro = min(n_extract, config.attribution_batch)
    tokens = micro * seq
    attr = costs.TrainableSpec(grad_outputs_from=0)
    attr_flops = costs.step_flops(src.shape, attr, tokens, seq, tokens)["total"]
    backward = {
        "activations": costs.activation_bytes(src.shape, attr, tokens, seq, dtype_bytes, tokens),
        "logits": logits_bytes(src, attr, tokens),
        "workspace": block_workspace(src, tokens, seq, dtype_bytes),
    }
    attribution = StepPlan(
        exp,
        "SemAlign attribution (source)",
        resident,
        {"weights": weights, "semantic bases": bases},
        math.ceil(n_extract / micro) * attr_flops,
        {"backward": backward},
    )
    layers = tgt.shape.num_layers
    tokens = config.micro * seq  # a stage step and the source pass run a micro-batch at a time
    per_step = batch // config.micro
    n_batches = math.ceil(n_train / config.micro) if n_train else steps_per_stage * per_step
    used_tokens = len(config.batches_used(n_batches)) * tokens
    teacher = 4.0 * tokens * src.shape.vocab  # one micro-batch's teacher logits, at a KL stage
    held = {
        "weights": weights,
        "semantic bases": bases,
        "layer inputs": float(used_tokens * tgt.shape.hidden * dtype_bytes),
        "supervision": 4.0 * tokens * tgt.shape.hidden,
    }
    if aligned_logits_fit(used_tokens, tgt.shape.vocab, config):
        held["aligned logits"] = 4.0 * used_tokens * tgt.shape.vocab
    kept_teacher = used_tokens * src.shape.vocab * 4 <= config.max_cached_logits_bytes
    host = 4.0 * used_tokens * (layers * tgt.shape.hidden)
    host += 4.0 * used_tokens * (src.shape.vocab if kept_teacher else src.shape.hidden)
    source_pass = StepPlan(
        exp,
        "SemAlign source pass (source)",
        resident,
        {
            "weights": weights,
            "semantic bases": bases,
            # one batch: the source's fp32 logits, and its paired states recomposed in fp32
            "batch supervision": 4.0 * tokens * (src.shape.vocab + layers * tgt.shape.hidden),
            "forward": float(2 * tokens * src.shape.hidden * dtype_bytes)
            + block_workspace(src, tokens, seq, dtype_bytes),
        },
        host=host,
    )
    best = None
    for stage in sorted({1, layers}):
        spec = stage_spec(config, stage, layers)
        opt, phases = train_memory(
            tgt, spec, tokens, seq, tokens, dtype_bytes, fp32_master, per_step > 1
        )
        # fp32 (position × vocabulary) tensors each loss term saves for its backward (the
        # Fisher surrogate: p~, δ, its centred form and square; the KL: both log-softmaxes,
        # p and their difference), beyond the logits train_memory counts
        terms = (config.layer_readout is not None) + config.kl_at(stage, layers)
        phases["backward"]["loss tensors"] = terms * LOSS_TENSORS * 4.0 * tokens * tgt.shape.vocab
        parts = {**held, **opt}
        if config.kl_at(stage, layers):
            parts["teacher logits"] = teacher
        plan = StepPlan(exp, "SemAlign stage step (target)", resident, parts, 0.0, phases, host)
        best = plan if best is None or plan.total > best.total else best
    step = sum(
        costs.step_flops(tgt.shape, stage_spec(config, k, layers), tokens, seq, tokens)["total"]
        for k in range(1, layers + 1)
    )
    # every stage runs steps_per_stage steps, each over per_step micro-batches
    return [attribution, source_pass, replace(best, flops=steps_per_stage * per_step * step)]


def budget_semalign_steps(
    exp: str, prof: Profile, source: str, task: str, dtype_bytes: int, fp32_master: bool
) -> list[StepPlan]:
    """:func:`semalign_steps` of one transfer cell: the SemAlign config its budget makes."""
    budget = budgets.transfer_budget(prof, task)
    config = SemAlignConfig(**budget.method_overrides("semalign", 0, SemAlignConfig))
    return semalign_steps(
        exp, source, prof.semalign_target, budget.n_extract, config.batch_size,
        config.max_length, config.steps_per_stage, dtype_bytes, fp32_master,
        config.attribution_batch, config,
        budget.n_train or TRAIN_RECORDS.get(task, DEFAULT_TRAIN_RECORDS),
    )  # fmt: skip


def finetune_step(
    exp: str,
    label: str,
    model: str,
    resident: tuple[str, ...],
    spec_kw: dict,
    micro: int,
    seq: int,
    positions: int,
    runs: int,
    dtype_bytes: int,
    fp32_master: bool = False,
    accumulate: bool = False,
    fsdp: bool = False,
    maps: int = 0,
    deals_step: bool = False,
    pooled: bool = False,
) -> StepPlan:
    """Full fine-tuning of ``model``'s decoder blocks (``spec_kw``: e.g. embeddings) with AdamW
    on ``micro × seq`` tokens, ``positions`` logit positions per step, ``runs`` micro-steps in
    all (``accumulate``: several per optimizer step), beside every ``resident`` model and
    ``maps`` fp32 parameters trained with it (hidden distillation's maps: weights, gradients and
    AdamW's states); ``fsdp``: the profile may shard it over several cards, each process
    running one micro-batch at a time, or (``deals_step``, SALF's loop) its share of the step's
    examples in one pass; ``pooled``: the model trained is a copy of one the pool keeps
    untrained in host memory (SALF, ``experiments/model_pool``)."""
    arch = architecture(model)
    spec = _all_blocks(arch, **spec_kw)
    tokens = micro * seq
    held, phases = train_memory(
        arch, spec, tokens, seq, positions, dtype_bytes, fp32_master, accumulate
    )
    parts = {"weights": weights_bytes(resident, dtype_bytes), **held}
    if maps:
        parts["maps"] = 16.0 * maps
    flops = runs * costs.step_flops(arch.shape, spec, tokens, seq, positions)["total"]
    pristine = float(arch.params * dtype_bytes) if pooled else 0.0
    plan = StepPlan(exp, label, resident, parts, flops, phases, host=pristine)
    if not fsdp:
        return plan
    # lm/sharding.sharded_copy: the model waits on the CPU while its fp32 shards (every
    # parameter), the trained ones' AdamW states and their gradients (reduced in fp32) are
    # divided over the cards
    held, phases = train_memory(arch, spec, tokens, seq, positions, dtype_bytes, True, accumulate)
    trained = trained_params(arch.shape, spec)
    fp32_grads = 4.0 * trained
    others = tuple(name for name in resident if name != model)
    held = {
        **held,
        "optimizer_state": 8.0 * trained,
        "fp32 shards": 4.0 * arch.params,
        "weights": weights_bytes(others, dtype_bytes),
    }
    batch_parts = ("activations", "logits", "workspace")
    phases = {
        name: {
            (k + STEP_SHARE if deals_step and k in batch_parts else k):
                fp32_grads if k in ("gradients", "optimizer_temporary") else v
            for k, v in phase.items()
        }
        for name, phase in phases.items()
    }  # fmt: skip
    # two block units (one computing, one prefetched) and the root unit (embedding, final norm,
    # an untied head), which stays gathered through the step
    shape = arch.shape
    root = shape.embedding_params + (0 if shape.tied else shape.head_params)
    units = (2.0 * max(b.params for b in shape.blocks) + root) * dtype_bytes
    # each process's host memory: the model it trains waits there in its dtype beside a copy
    # that sharding.shard casts to fp32 one unit at a time before fully_shard moves the unit's
    # shards over, the blocks first (the peak: the whole copy, one block in fp32), the root last
    # (hidden distillation's fp32 maps: waiting, and copied whole); the trained weights come
    # back a parameter at a time
    block = max(b.params for b in shape.blocks)
    waiting = arch.params * dtype_bytes
    sharding_peak = max(waiting + (4.0 - dtype_bytes) * block, 4.0 * root)
    host = pristine + waiting + sharding_peak + 8.0 * maps
    sharded = replace(
        plan,
        parts={**parts, **held, "gathered units": units},
        phases=phases,
        host=host,
        step_examples=micro if deals_step else 0,
    )
    return replace(plan, sharded=sharded)


def seeking_step(
    exp: str, source: str, micro: int, seq: int, examples: int, dtype_bytes: int
) -> StepPlan:
    """Seeking's sensitivity pass over ``examples``: the source's backward, each block weight's
    gradient turned into its fp32 term |θ ⊙ ∇θ| and added to a sum in host memory as soon as
    it is written, then freed (so at most one weight's gradient and term are on the device)."""
    arch = architecture(source)
    spec = _all_blocks(arch)
    tokens = micro * seq
    _, phases = train_memory(arch, spec, tokens, seq, tokens, dtype_bytes)
    cfg = arch.config
    largest = cfg.hidden_size * max(cfg.intermediate_size, cfg.hidden_size)
    backward = {**phases["backward"], "one gradient": float(largest * (dtype_bytes + 8))}
    step = costs.step_flops(arch.shape, spec, tokens, seq, tokens)["total"]
    return StepPlan(
        exp,
        "Seeking sensitivities (source)",
        (source,),
        {"weights": weights_bytes((source,), dtype_bytes)},
        math.ceil(examples / micro) * step,
        {"backward": backward},
        host=4.0 * trained_params(arch.shape, spec),
    )


def eval_step(
    exp: str, model: str, batch: int, prompt: int, new_tokens: int, items: int, dtype_bytes: int
) -> StepPlan:
    """Evaluating ``items`` items with ``model`` alone on the device, ``batch`` at a time: prompts
    of ``prompt`` tokens (the budget's ``max_length``), ``new_tokens`` generated (1: scoring)."""
    arch = architecture(model)
    parts = {
        "weights": weights_bytes((model,), dtype_bytes),
        **eval_parts(arch, batch, prompt, new_tokens, dtype_bytes),
    }
    kind = "generation" if new_tokens > 1 else "scoring"
    flops = eval_flops(arch, items, prompt, new_tokens)
    return StepPlan(exp, f"evaluation, {kind} ({model})", (model,), parts, flops)


def _transfer_task_steps(
    exp: str, prof: Profile, source: str, task: str, dtype_bytes: int, fp32_master: bool
) -> list[StepPlan]:
    """One Table 1/2 cell: SemAlign, Seeking, the output-KL control (source resident; SFT is the
    same step without it), hidden distillation (output KL's step plus its fp32 maps, one per
    target layer, with gradients and AdamW states), the three sharded where the profile trains
    with FSDP, and the evaluation of source and target."""
    budget = budgets.transfer_budget(prof, task)
    target, seq = prof.semalign_target, budget.max_length
    n_train = budget.n_train or TRAIN_RECORDS.get(task, DEFAULT_TRAIN_RECORDS)
    micro = budget.micro_batch_size
    runs = budget.epochs * math.ceil(n_train / micro)
    new_tokens = 1 if task in ("mmlu", *CLS_TASKS) else budget.max_new_tokens
    positions = micro if task in CLS_TASKS else micro * seq
    items = budget.eval_limit or BENCHMARK_ITEMS.get(task, DEFAULT_EVAL_ITEMS)
    extract = budget.n_extract
    b, fp32 = dtype_bytes, fp32_master
    src, tgt = architecture(source), architecture(target)
    return [
        *budget_semalign_steps(exp, prof, source, task, b, fp32),
        seeking_step(exp, source, micro, seq, extract, b),
        finetune_step(
            exp, "output-KL control (target)", target, (source, target), {}, micro, seq,
            positions, 2 * runs, b, fp32, budget.batch_size > micro,  # SFT and output KL
            fsdp=prof.train_engine == "fsdp" and exp in SHARDED_EXPERIMENTS,
        ),
        finetune_step(
            exp, "hidden-distillation control (target)", target, (source, target), {}, micro,
            seq, positions, runs, b, fp32, budget.batch_size > micro,
            fsdp=prof.train_engine == "fsdp" and exp in SHARDED_EXPERIMENTS,
            maps=tgt.shape.num_layers * tgt.shape.hidden * src.shape.hidden,
        ),
        *(
            eval_step(exp, m, budget.eval_batch_size, seq, new_tokens, items, b)
            for m in (source, target)
        ),
    ]  # fmt: skip


def _salf_steps(
    exp: str, prof: Profile, embeddings: bool, dtype_bytes: int, fp32_master: bool
) -> list[StepPlan]:
    """Every SALF run of a model (each task and policy): full fine-tuning (the costliest policy)
    with the label-token loss (one logit position per example), sharded where the profile
    trains with FSDP (each process its share of a step); the same step in one process, where
    runs that FSDP does not train (AutoFreeze, which starts as full fine-tuning; the timing
    repeats of notebook 07, ``full_embeddings`` among them) need it; and scoring the held-out
    examples."""
    defaults = budgets.SALF_DEFAULTS[prof.name]
    budget = budgets.salf_run_budget(prof)
    runs_per_model = len(defaults.tasks) * len(budgets.TIMING_POLICIES)
    steps_per_run = budget.epochs * math.ceil(budget.n_train / budget.batch_size)
    label = "full FT" + (" + embeddings" if embeddings else "")
    alone = "timing repeats" if embeddings else "AutoFreeze"
    fsdp = prof.train_engine == "fsdp"
    out = []
    for model in defaults.models or prof.salf_models:
        step = finetune_step(
            exp, f"SALF {label} ({model})", model, (model,), {"embeddings": embeddings},
            budget.batch_size, budget.max_length, budget.batch_size,
            runs_per_model * steps_per_run, dtype_bytes, fp32_master, fsdp=fsdp, deals_step=True,
            pooled=True,
        )  # fmt: skip
        out.append(step)
        if fsdp:  # its FLOPs are already in the step above (every policy counted as `full`)
            one = f"SALF {label}, one process: {alone} ({model})"
            out.append(replace(step, step=one, flops=0.0, sharded=None))
        out.append(
            eval_step(
                exp, model, budget.eval_batch_size, budget.max_length, 1,
                runs_per_model * budget.n_eval, dtype_bytes,
            )
        )  # fmt: skip
    return out


def _salf_analysis_steps(prof: Profile, dtype_bytes: int) -> list[StepPlan]:
    """SALF's transition trace: a forward pass keeping every layer's fp32 hidden states."""
    budget = budgets.salf_run_budget(prof)
    batch, seq = budget.eval_batch_size, budget.max_length
    out = []
    for model in prof.salf_models:
        arch = architecture(model)
        examples = budgets.SALF_ANALYSIS_EXAMPLES[prof.name] or budget.n_train
        step = eval_step(SALF_ANALYSIS, model, batch, seq, 1, examples, dtype_bytes)
        hidden = 4.0 * (arch.shape.num_layers + 1) * batch * seq * arch.shape.hidden
        out.append(
            StepPlan(
                SALF_ANALYSIS,
                f"transition trace ({model})",
                (model,),
                {**step.parts, "hidden": hidden},
                step.flops,
            )
        )
    return out


def _teacher_steps(exp: str, prof: Profile, b: int, fp32: bool) -> list[StepPlan]:
    """Table 2: a fine-tuned teacher (trained here, then SemAlign from it) or the hub teachers."""
    out = []
    for task, teachers in budgets.TEACHERS[prof.name].items():
        for teacher in teachers:
            if teacher == FINETUNED:
                out.append(_made_teacher_step(exp, prof, b, fp32))
                teacher = budgets.TEACHER_RECIPES[prof.name].base
            out += _transfer_task_steps(exp, prof, teacher, task, b, fp32)
    return out


def _made_teacher_step(
    exp: str, prof: Profile, b: int, fp32: bool, base: str | None = None
) -> StepPlan:
    """Fine-tuning the profile's teacher from its recipe (Table 2 and the ablations; ``base``:
    another model fine-tuned with the same recipe, the cross-family teacher)."""
    recipe = budgets.TEACHER_RECIPES[prof.name]
    if base is not None:
        recipe = replace(recipe, base=base)
    runs = recipe.epochs * math.ceil(
        (recipe.n_train or DEFAULT_TRAIN_RECORDS) / recipe.micro_batch_size
    )
    return finetune_step(
        exp, "teacher fine-tuning", recipe.base, (recipe.base,), {},
        recipe.micro_batch_size, recipe.max_length, recipe.micro_batch_size,
        runs, b, fp32, recipe.batch_size > recipe.micro_batch_size,
        fsdp=prof.train_engine == "fsdp",  # teachers.ensure_teacher launches it sharded
    )  # fmt: skip


def _ablation_steps(prof: Profile, b: int, fp32: bool) -> list[StepPlan]:
    """One SemAlign run per ablated setting, in Table 2's informative settings, from the made
    teacher (fine-tuned once per task)."""
    out = []
    for task in budgets.INFORMATIVE_TASKS[prof.name]:
        out.append(_made_teacher_step(SEMALIGN_ABLATIONS, prof, b, fp32))
        source = budgets.TEACHER_RECIPES[prof.name].base
        out += budget_semalign_steps(SEMALIGN_ABLATIONS, prof, source, task, b, fp32)
    return out


def _cross_family_steps(prof: Profile, b: int, fp32: bool) -> list[StepPlan]:
    """The cross-family teacher's fine-tuning and one SemAlign run from it per task (its
    heaviest row: the other rows train the target alone or against the teacher's logits)."""
    out = []
    base = budgets.CROSS_FAMILY_BASES.get(prof.name)
    for task in budgets.CROSS_FAMILY_TASKS.get(prof.name, ()):
        out.append(_made_teacher_step(SEMALIGN_CROSS_FAMILY, prof, b, fp32, base))
        out += budget_semalign_steps(SEMALIGN_CROSS_FAMILY, prof, base, task, b, fp32)
    return out


def experiment_steps(prof: Profile, settings: PlanSettings | None = None) -> dict[str, list]:
    """Experiment → the steps planned for it at ``prof`` (an experiment the profile does not run
    has none)."""
    settings = settings or PlanSettings()
    b, fp32 = DTYPE_BYTES[settings.compute_dtype(prof)], settings.fp32_master
    analysis = budgets.SEMALIGN_ANALYSIS_BUDGETS[prof.name]
    source, target = prof.semalign_source, prof.semalign_target
    return {
        MODELS: [
            StepPlan(MODELS, f"load {m}", (m,), {"weights": weights_bytes((m,), b)})
            for m in prof.models()
        ],
        SEMALIGN_ANALYSES: semalign_steps(
            SEMALIGN_ANALYSES, source, target, analysis.n_align, analysis.batch_size,
            analysis.max_length, analysis.steps_per_stage, b, fp32,
        ),
        SALF_ANALYSIS: _salf_analysis_steps(prof, b),
        SEMALIGN_TRANSFER: [
            s for task in EVAL_TASKS
            for s in _transfer_task_steps(SEMALIGN_TRANSFER, prof, source, task, b, fp32)
        ],
        FINETUNED_TEACHER: _teacher_steps(FINETUNED_TEACHER, prof, b, fp32),
        SEMALIGN_ABLATIONS: _ablation_steps(prof, b, fp32),
        SEMALIGN_CROSS_FAMILY: _cross_family_steps(prof, b, fp32),
        SALF_MAIN: _salf_steps(SALF_MAIN, prof, False, b, fp32),
        SALF_COST_BENEFIT: _salf_steps(SALF_COST_BENEFIT, prof, True, b, fp32),
    }  # fmt: skip


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ExperimentPlan:
    """One experiment at a profile: its heaviest step and the GPU-hours of all its steps."""

    experiment: str
    steps: tuple[StepPlan, ...]
    gpu_hours: float

    @property
    def heaviest(self) -> StepPlan | None:
        return max(self.steps, key=lambda s: s.total, default=None)

    @property
    def peak_gib(self) -> float:
        return self.heaviest.total / GIB if self.steps else 0.0

    @property
    def gpus_needed(self) -> int | None:
        """Cards of 80 GB every step fits as the code runs it (None: some step fits none)."""
        counts = [s.gpus_needed() for s in self.steps]
        return None if None in counts else max(counts, default=1)

    @property
    def misfits(self) -> list[StepPlan]:
        """Steps that fit no number of 80 GB cards as the code runs them, heaviest first."""
        out = {s.step: s for s in self.steps if s.gpus_needed() is None}
        return sorted(out.values(), key=lambda s: -s.total)


def plan_profile(prof: Profile, settings: PlanSettings | None = None) -> list[ExperimentPlan]:
    """Every experiment's plan at ``prof`` (see the module docstring for what is counted); its
    GPU-hours count every default seed (``budgets.DEFAULT_SEEDS``)."""
    settings = settings or PlanSettings()
    plans = []
    for exp, steps in experiment_steps(prof, settings).items():
        seeds = len(budgets.DEFAULT_SEEDS.get(exp, {}).get(prof.name, (0,)))
        hours = settings.throughput.gpu_hours(seeds * sum(s.flops for s in steps))
        plans.append(ExperimentPlan(exp, tuple(steps), hours))
    return plans


def hub_models(prof: Profile) -> tuple[str, ...]:
    return tuple(m for m in prof.models() if REGISTRY[m].kind == "hub")


def weights_disk_bytes(prof: Profile) -> float:
    """Disk for one 16-bit copy of every hub model's weights (a repository that ships both
    safetensors and .bin files downloads both unless told otherwise)."""
    return weights_bytes(hub_models(prof), 2)


def gated(prof: Profile) -> tuple[str, ...]:
    ids = (REGISTRY[m].hub_id for m in hub_models(prof))
    return tuple(i for i in ids if i.split("/")[0] in GATED_OWNERS)


def download_command(hub_ids: tuple[str, ...] | list[str]) -> str:
    """Shell commands, one a line, that put ``hub_ids`` where this run looks: its ``HF_HOME``
    (under ``make``, the Makefile's repo cache), online even where ``HF_HUB_OFFLINE=1`` is
    exported. Weights in other formats (original checkpoints, GGUF, TF/Flax) are skipped."""
    home = shlex.quote(os.environ.get("HF_HOME", ""))
    skip = '--exclude "original/*" "*.pth" "*.gguf" "*.msgpack" "*.h5"'
    return "\n".join(
        f"HF_HOME={home} HF_HUB_OFFLINE=0 huggingface-cli download {i} {skip}" for i in hub_ids
    )


def visible_gpus() -> list[tuple[str, float]]:
    """(name, GiB) of every CUDA device this process sees; empty without one."""
    if not torch.cuda.is_available():
        return []
    props = (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
    return [(p.name, p.total_memory / GIB) for p in props]


def _dtype_note(prof: Profile, settings: PlanSettings) -> str:
    dtype = settings.compute_dtype(prof)
    return dtype if dtype == prof.dtype else f"{dtype}, not the profile's {prof.dtype}"


def _processes(step: StepPlan, visible: int) -> int:
    """Processes a run of ``step`` starts: one per visible GPU where several are and FSDP
    shards it (``cells``' launch), one beside a single GPU; planned without GPUs, the cards it
    needs."""
    if step.sharded is None or visible == 1:
        return 1
    return visible or step.gpus_needed() or 1


def format_plan(
    prof: Profile,
    plans: list[ExperimentPlan],
    gpus: list[tuple[str, float]],
    settings: PlanSettings | None = None,
) -> str:
    """The preflight's table: per experiment, its heaviest step and its peak GiB in one
    process, the 80 GB cards every step fits as the code runs it (FSDP shards the steps the
    profile shards; "none": some step fits no count, listed below), whether it fits the GPUs
    here (without one: this machine's RAM), host RAM beside (under FSDP every process's: one per
    visible GPU, or per card needed when planned without them), and GPU-hours; then disk and
    gated models."""
    settings = settings or PlanSettings()
    ram = psutil.virtual_memory().total / GIB
    here = max((gib for _, gib in gpus), default=ram)
    seen = ", ".join(f"{n} ({g:.0f} GiB)" for n, g in gpus) or f"no GPU, RAM {ram:.0f} GiB"
    tp = settings.throughput
    lines = [
        f"memory plan of profile {prof.name} ({_dtype_note(prof, settings)}; GPUs here: {seen}); "
        "GPU-hours at "
        f"{tp.utilisation:.0%} of {tp.peak_flops / 1e12:.0f} TFLOP/s",
        f"{'experiment':28s} {'heaviest step':44s} {'peak GiB':>9s} {'80 GB GPUs':>10s} "
        f"{'fits here':>9s} {'host GiB':>8s} {'GPU-h':>8s}",
    ]
    misfits = []
    for plan in plans:
        if not plan.steps:
            lines.append(f"{plan.experiment:28s} (not run at this profile)")
            continue
        needs = [s.gpus_needed(here) for s in plan.steps]
        fits = "yes" if None not in needs and max(needs) <= max(1, len(gpus)) else "no"
        cards = "none" if plan.gpus_needed is None else str(plan.gpus_needed)
        host = max(s.host_on(_processes(s, len(gpus))) for s in plan.steps) / GIB
        lines.append(
            f"{plan.experiment:28s} {plan.heaviest.step[:44]:44s} {plan.peak_gib:9.1f} "
            f"{cards:>10s} {fits:>9s} {host:8.1f} {plan.gpu_hours:8.2f}"
        )
        misfits += [(plan.experiment, s) for s in plan.misfits]
    for exp, step in misfits:
        lines.append(
            f"  does not fit one 80 GB GPU, and the code cannot spread it: {exp}, {step.step} "
            f"({step.total / GIB:.1f} GiB)"
        )
    sharded = [s for plan in plans for s in plan.steps if s.sharded is not None]
    if sharded:
        most = max(sharded, key=lambda s: s.sharded.host)
        lines.append(
            f"host GiB under FSDP: each process holds up to {most.sharded.host / GIB:.1f} GiB "
            f"({most.step}: the model waiting on the CPU and a copy cast to fp32 a unit at a "
            "time as its shards move to the card), one process per card, beside the process "
            "that launches them"
        )
    if hub_models(prof):
        lines.append(
            f"disk for the hub weights (one 16-bit copy): {weights_disk_bytes(prof) / GIB:.0f} GiB"
        )
    if gated(prof):
        lines.append(
            f"gated (accept each licence on the hub, then `huggingface-cli login`): "
            f"{', '.join(gated(prof))}"
        )
    return "\n".join(lines)


__all__ = [
    "Architecture",
    "ExperimentPlan",
    "PlanSettings",
    "StepPlan",
    "Throughput",
    "architecture",
    "architecture_from_config",
    "download_command",
    "eval_parts",
    "experiment_steps",
    "format_plan",
    "block_workspace",
    "logits_bytes",
    "plan_profile",
    "train_memory",
    "visible_gpus",
    "weights_disk_bytes",
]
