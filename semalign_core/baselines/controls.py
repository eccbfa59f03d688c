"""Control baselines the paper lacks (reviewers asked for them), and the training loop all
baselines share.

Controls (entry points with SemAlign's ``transfer`` signature, returning a ``TransferResult``):

* :func:`sft` — plain supervised fine-tuning of the target on the same train records
  (decoder layers, all weights, or LoRA adapters); the source is not used.
* :func:`output_kl` — output distillation: ``KL(p_source ‖ p_target)`` at temperature τ on the
  response tokens (optionally plus the target's own cross-entropy).
* :func:`hidden_distill` — layer-wise hidden-state distillation: target layer j is paired with a
  source layer by uniform pairing; a learned linear map per pair sends the target state into the
  source width and the MSE (relative to the source state's mean square) is minimised; maps and
  target train jointly.

Shared machinery: :class:`TrainConfig` (epochs, optimizer batch, micro-batch, lr...),
:func:`train` (seeded data order, gradient accumulation over micro-batches with per-example loss
weighting, so the update does not depend on the micro-batch size), per-step loss records and
costs (wall time, peak RSS, processed tokens, analytic FLOPs from :mod:`semalign_core.costs`).
The target is trained in place and in eval mode (no dropout: runs are deterministic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from semalign_core import costs
from semalign_core.costs import summarize  # one cost dict for every method (laten, seeking too)
from semalign_core.data.batching import collate
from semalign_core.data.formatting import build_sft_example
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import sharding, surgery
from semalign_core.lm.nethook import capture_hidden, first_tensor, run_to_layers
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.pairing import Pairing, uniform_pairing
from semalign_core.semalign.result import TransferResult, check_compatible

EPS = 1e-12
LINEAR_KINDS = (nn.Linear, Conv1D)  # what LoRA adapts (surgery.block_linear_names)


# --------------------------------------------------------------------------- configs


@dataclass
class TrainConfig:
    """What every baseline's training loop needs (recorded with the results).

    Attributes:
        epochs: passes over the train records (the data order is a seeded permutation per epoch).
        batch_size: examples per optimizer step (the paper's setting for Seeking: 64).
        micro_batch_size: examples per forward/backward; gradients accumulate over a step. The
            loss is a per-example mean weighted 1/batch_size, so the update is the same for every
            micro-batch size (up to float summation order).
        lr, weight_decay, grad_clip: AdamW settings; grad_clip None disables clipping.
        max_steps: stop after this many optimizer steps (time-budgeted runs); None = all epochs.
        max_length, prompt_style, loss_on: how records become SFT examples (as SemAlign).
        seed: seeds initialisations and the data order.
        progress: show tqdm progress bars.
    """

    epochs: int = 3
    batch_size: int = 64
    micro_batch_size: int = 4
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    max_steps: int | None = None
    max_length: int = 256
    prompt_style: str = "transfer"
    loss_on: str = "response"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise InvalidParameterError("epochs, batch_size and micro_batch_size must be >= 1")
        if self.lr <= 0:
            raise InvalidParameterError(f"lr must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidParameterError(f"max_steps must be >= 1 or None, got {self.max_steps}")

    def identity(self) -> dict[str, Any]:
        """The fields that change the numbers (not whether bars show)."""
        d = asdict(self)
        d.pop("progress")
        return d


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidParameterError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class SFTConfig(TrainConfig):
    """Plain SFT of the target.

    Attributes:
        trainable: "layers" (every weight of the decoder blocks and the final norm; embeddings
            and LM head frozen, as in SemAlign), "full" (every parameter) or "lora" (rank
            ``lora_r`` adapters on every Linear of the decoder blocks, merged at the end).
        lora_r, lora_alpha: LoRA rank and scale numerator (scaling = alpha / r).
    """

    trainable: Literal["layers", "full", "lora"] = "layers"
    lora_r: int = 16
    lora_alpha: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("trainable", self.trainable, ("layers", "full", "lora"))


@dataclass
class OutputKLConfig(SFTConfig):
    """Output distillation on response tokens:
    ``kl_weight · τ²·KL(p_S^τ ‖ p_T^τ) + ce_weight · CE``."""

    tau: float = 2.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau <= 0:
            raise InvalidParameterError(f"tau must be positive, got {self.tau}")


@dataclass
class HiddenDistillConfig(SFTConfig):
    """Layer-wise hidden-state distillation with uniform pairing and a learned linear map per pair.

    Attributes:
        hidden_weight: weight of the mean over pairs of the relative MSE
            ``‖M_j h_T^(j) − h_S^(s(j))‖² / mean‖h_S^(s(j))‖²`` (non-pad tokens).
        ce_weight: weight of the target's own response cross-entropy (0: pure distillation).
        map_lr: learning rate of the maps (None: ``lr``).
        normalize: divide each pair's MSE by the source state's mean square (scale-free: raw
            residual streams of real models have norms in the hundreds).
    """

    hidden_weight: float = 1.0
    ce_weight: float = 0.0
    map_lr: float | None = 1e-3
    normalize: bool = True


# --------------------------------------------------------------------------- data


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def tokenize(records: Sequence[dict], tokenizer, config: TrainConfig) -> list[dict]:
    """Records with ``messages`` → ``{"input_ids", "labels"}`` examples (see build_sft_example)."""
    if not records:
        raise InvalidParameterError("no records to train on")
    return [
        build_sft_example(
            tokenizer,
            r["messages"],
            style=config.prompt_style,
            loss_on=config.loss_on,
            max_length=config.max_length,
        )
        for r in records
    ]


def epoch_schedule(n_examples: int, config: TrainConfig) -> list[list[int]]:
    """Optimizer steps as lists of example indices: per epoch a seeded permutation cut into
    ``batch_size`` chunks (the last chunk of an epoch may be smaller); capped at ``max_steps``."""
    gen = torch.Generator().manual_seed(config.seed)
    steps: list[list[int]] = []
    for _ in range(config.epochs):
        order = torch.randperm(n_examples, generator=gen).tolist()
        steps += [order[i : i + config.batch_size] for i in range(0, n_examples, config.batch_size)]
    return steps[: config.max_steps] if config.max_steps else steps


# --------------------------------------------------------------------------- losses


def per_example_mean(values: Tensor, rows: Tensor, n: int) -> Tensor:
    """Mean of per-position ``values`` (m,) grouped by example index ``rows`` (m,) → (n,)."""
    total = values.new_zeros(n).index_add(0, rows, values)
    count = values.new_zeros(n).index_add(0, rows, torch.ones_like(values))
    return total / count.clamp_min(1.0)


def supervised_logits(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (fp32) at the positions that predict a supervised token, their example index and the
    token they predict. The LM head runs only there (the final norm's output is taken by a hook;
    ``logits_to_keep=1`` keeps the model from computing full logits)."""
    device = next(model.parameters()).device
    mask, target = supervised_positions(batch["labels"].to(device))
    rows, cols = mask.nonzero(as_tuple=True)
    store: dict[str, Tensor] = {}
    handle = surgery.final_norm(model).register_forward_hook(
        lambda m, a, o: store.__setitem__("h", first_tensor(o))
    )
    try:
        model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            logits_to_keep=1,
            use_cache=False,
        )
    finally:
        handle.remove()
    logits = surgery.Unembed(model).decode_normed(store["h"][rows, cols]).float()
    return logits, rows, target[rows, cols]


def ce_per_example(model: nn.Module, batch: dict) -> Tensor:
    """Per-example mean response cross-entropy, shape (batch,)."""
    logits, rows, target = supervised_logits(model, batch)
    return per_example_mean(
        F.cross_entropy(logits, target, reduction="none"), rows, batch["input_ids"].shape[0]
    )


# --------------------------------------------------------------------------- trainable sets


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def requires_grad_flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def restore_flags(model: nn.Module, flags: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])


def add_lora(model: nn.Module, r: int, alpha: int):
    """Wrap ``model`` with peft LoRA adapters (rank r, dropout 0) on every linear layer of the
    decoder blocks (``surgery.block_linear_names``: ``nn.Linear`` and GPT-2's ``Conv1D``).

    peft injects in place: ``model``'s Linears become LoRA layers; the returned PeftModel
    forwards to it. :func:`merge_lora` folds the adapters back and restores plain Linears.
    """
    from peft import LoraConfig, get_peft_model  # slow to import; only LoRA runs need it

    targets = surgery.block_linear_names(model)
    if not targets:
        raise InvalidParameterError(
            f"LoRA needs linear layers in the decoder blocks of {type(model).__name__}"
        )
    # Conv1D stores weights as (in, out); saying so up front spares peft's warning
    conv1d = any(isinstance(m, Conv1D) for m in surgery.decoder_layers(model).modules())
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        fan_in_fan_out=conv1d,
    )
    peft_model = get_peft_model(model, config)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    for n, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in n)
    return peft_model, params


def merge_lora(peft_model) -> nn.Module:
    """Fold the adapters into the base weights; returns the (same, in-place) plain model."""
    return peft_model.merge_and_unload()


def make_trainable(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Unfreeze "layers" (decoder blocks + final norm) or "full" (every parameter)."""
    freeze(model)
    if trainable == "full":
        mods = [model]
    else:
        mods = [surgery.decoder_layers(model), surgery.final_norm(model)]
    params, seen = [], set()
    for mod in mods:
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                p.requires_grad_(True)
                params.append(p)
    return params


# --------------------------------------------------------------------------- training loop

LossFn = Callable[[dict], tuple[Tensor, dict[str, Tensor]]]


def train(
    param_groups: list[dict],
    schedule: list[list[int]],
    examples: list[dict],
    pad: int,
    loss_fn: LossFn,
    config: TrainConfig,
    flops_fn: Callable[[dict], float],
    extra_fn: Callable[[], tuple[Tensor, dict[str, float]]] | None = None,
    desc: str = "train",
    collate_fn: Callable[[list[dict]], dict] | None = None,
    engine: sharding.Engine | None = None,
) -> dict:
    """Run the optimizer steps of ``schedule`` and return the stage record.

    ``loss_fn(batch) -> (per_example_loss (b,), {part: per_example_value (b,)})``; a step's loss
    is the mean over its examples (micro-batches accumulate gradients). ``extra_fn()`` adds a
    step-level term once per step (LaTen's delta penalty). ``flops_fn(batch)`` gives the analytic
    FLOPs of one micro-batch. The optimizer (AdamW) is built here, after the trainable set is known.
    ``collate_fn(examples)`` makes a micro-batch (default: :func:`collate` with ``pad``).
    ``engine``: under FSDP (:mod:`~semalign_core.lm.sharding`) this process computes its share
    of each step and the record holds the totals over every process.
    """
    engine = engine or sharding.Engine()
    params = [p for g in param_groups for p in g["params"]]
    optim = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    record: dict[str, Any] = {
        "stage": desc,
        "losses": [],
        "parts": {},
        "tokens": 0,
        "real_tokens": 0,
        "flops": 0.0,
        "step_s": [],
    }
    t0 = time.perf_counter()
    for ids in tqdm(schedule, desc=desc, disable=not config.progress):
        ts = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        step_loss = 0.0
        parts: dict[str, float] = {}
        for chunk_ids, weight in engine.step_chunks(ids, config.micro_batch_size):
            chunk = [examples[k] for k in chunk_ids]
            batch = collate(chunk, pad) if collate_fn is None else collate_fn(chunk)
            per_example, per_parts = loss_fn(batch)
            loss = per_example.sum() / len(ids)
            # FSDP averages the processes' gradients; the step's loss is their sum
            (loss * (weight * engine.world_size) if engine.sharded else loss).backward()
            step_loss += weight * float(loss.detach())
            for name, v in per_parts.items():
                parts[name] = parts.get(name, 0.0) + weight * float(v.detach().sum()) / len(ids)
            if weight:
                record["tokens"] += batch["input_ids"].numel()
                record["real_tokens"] += int(batch["attention_mask"].sum())
                record["flops"] += flops_fn(batch)
        step_loss, *part_values = engine.total([step_loss, *parts.values()])
        parts = dict(zip(parts, part_values))
        if extra_fn is not None:
            extra, extra_parts = extra_fn()
            extra.backward()
            step_loss += float(extra.detach())
            parts.update(extra_parts)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optim.step()
        record["losses"].append(step_loss)
        for name, v in parts.items():
            record["parts"].setdefault(name, []).append(v)
        record["step_s"].append(time.perf_counter() - ts)
    optim.zero_grad(set_to_none=True)
    counted = engine.total([record["tokens"], record["real_tokens"], record["flops"]])
    record["tokens"], record["real_tokens"] = int(counted[0]), int(counted[1])
    record["flops"] = counted[2]
    record["wall_s"] = time.perf_counter() - t0
    record["steps"] = len(schedule)
    return record


# --------------------------------------------------------------------------- costs


def train_flops(shape: costs.ModelShape, spec: costs.TrainableSpec, batch: dict) -> float:
    """Analytic FLOPs of one training micro-batch (LM head at the supervised positions only)."""
    bsz, seq = batch["input_ids"].shape
    n_sup = int(supervised_positions(batch["labels"])[0].sum())
    return costs.step_flops(shape, spec, bsz * seq, seq, n_sup)["total"]


def source_forward_flops(
    shape: costs.ModelShape, batch: dict, n_blocks: int | None = None, head: bool = True
) -> float:
    """Forward FLOPs of the (frozen) source on a batch: its blocks and, optionally, the head at
    the supervised positions."""
    bsz, seq = batch["input_ids"].shape
    n_blocks = shape.num_layers if n_blocks is None else n_blocks
    flops = costs.prefix_forward_flops(shape, n_blocks, bsz * seq, seq)
    if head:
        flops += (
            2.0 * shape.hidden * shape.vocab * int(supervised_positions(batch["labels"])[0].sum())
        )
    return flops


def lora_params(block: nn.Module, r: int) -> int:
    """Parameters of rank-r adapters on every linear layer of ``block``: r · (in + out) each."""
    linears = [
        m
        for name, m in block.named_modules()
        if isinstance(m, LINEAR_KINDS) and "lora_" not in name  # adapters already in: skip
    ]
    # in + out = the sum of the weight's dims (Linear stores out × in, Conv1D in × out)
    return r * sum(sum(m.weight.shape) for m in linears)


def spec_for(model: nn.Module, trainable: str, lora_r: int = 0) -> costs.TrainableSpec:
    """What ``trainable`` trains, for the analytic FLOPs (LoRA: per-block adapter sizes)."""
    n = surgery.num_layers(model)
    if trainable == "lora":
        blocks = surgery.decoder_layers(model)
        return costs.TrainableSpec(
            lora_params={k: lora_params(b, lora_r) for k, b in enumerate(blocks)}
        )
    full = trainable == "full"
    return costs.TrainableSpec(trained_blocks=frozenset(range(n)), embeddings=full, head=full)


# ---------------------------------------------------------------------- shared entry-point logic


def begin(
    method: str,
    source: nn.Module,
    target: nn.Module,
    config,
    config_type: type,
    resume: bool,
    check: Callable[[nn.Module, nn.Module], None] = check_compatible,
) -> None:
    """Checks every entry point makes before any work (same errors as SemAlign; ``check``: the
    pair's, ``check_compatible`` unless the method spans vocabularies)."""
    if not isinstance(config, config_type):
        raise InvalidParameterError(
            f"{method} needs a {config_type.__name__}, got {type(config).__name__}"
        )
    if resume:
        raise InvalidParameterError(
            f"{method} keeps no stage checkpoints: resume=True is not supported"
        )
    if source is not None:  # None: a method that does not read the source (sft)
        check(source, target)
        source.eval()
    torch.manual_seed(config.seed)
    target.eval()  # no dropout anywhere: the runs are deterministic


def cap_steps(schedule: list[list[int]], stop_after_stage: int | None) -> list[list[int]]:
    """``stop_after_stage`` (SemAlign's time-budget knob) caps the baselines' optimizer steps."""
    return schedule[:stop_after_stage] if stop_after_stage is not None else schedule


def unused_pairing(source: nn.Module | None, target: nn.Module, why: str) -> Pairing:
    n_t = surgery.num_layers(target)
    n_s = n_t if source is None else surgery.num_layers(source)
    p = uniform_pairing(n_s, n_t, many_to_one=n_t > n_s)  # deeper targets: cross-family only
    return Pairing(p.target_to_source, p.strategy, n_s, n_t, (why,), p.many_to_one)


def fine_tune(
    method: str,
    source,
    target,
    train_records,
    config: SFTConfig,
    tokenizer,
    stop_after_stage,
    make_loss: Callable[[nn.Module], LossFn],
    source_flops: Callable[[dict], float],
    pairing: Pairing,
    extra_modules: Sequence[tuple[nn.Module, dict]] = (),
    notes: Sequence[str] = (),
    examples: list[dict] | None = None,
    collate_fn: Callable[[list[dict]], dict] | None = None,
) -> TransferResult:
    """SFT-shaped training of the target (layers / full / LoRA) with ``make_loss(model,
    *extras)``; ``extra_modules``: (module, optimizer group options) trained beside the target
    (hidden distillation's maps; under FSDP sharded like it and handed to ``make_loss`` as the
    copies that train); ``examples`` and ``collate_fn`` replace the target's SFT examples and
    their collation (cross-vocabulary methods, whose batches carry the source's tokens too)."""
    t_start = time.perf_counter()
    flags = requires_grad_flags(target)
    if examples is None:
        examples = tokenize(train_records, tokenizer, config)
    schedule = cap_steps(epoch_schedule(len(examples), config), stop_after_stage)
    shape = costs.model_shape(target)
    spec = spec_for(target, config.trainable, config.lora_r)
    engine = sharding.current_engine()
    if engine.sharded and config.trainable == "lora":
        raise InvalidParameterError(f"{method}: LoRA trains in one process, not under FSDP")
    with costs.PeakMemory() as peak:
        try:
            if config.trainable == "lora":
                model, params = add_lora(target, config.lora_r, config.lora_alpha)
            else:
                model, params = target, make_trainable(target, config.trainable)
            extras = [module for module, _ in extra_modules]
            with sharding.sharded_copy(model, engine, extras) as (work, work_extras):
                if work is not model:  # the shards replaced the parameters
                    params = [p for p in work.parameters() if p.requires_grad]
                groups = [
                    {**options, "params": list(module.parameters())}
                    for module, (_, options) in zip(work_extras, extra_modules, strict=True)
                ]
                record = train(
                    [{"params": params}, *groups],
                    schedule,
                    examples,
                    pad_id(tokenizer),
                    make_loss(work, *work_extras),
                    config,
                    lambda b: train_flops(shape, spec, b) + source_flops(b),
                    desc=method,
                    collate_fn=collate_fn,
                    engine=engine,
                )
            if config.trainable == "lora":
                merge_lora(model)
        finally:
            restore_flags(target, flags)
    notes = [*notes, *([f"trained with {engine.name}"] if engine.sharded else [])]
    stages = [record]
    cost = summarize(
        stages,
        time.perf_counter() - t_start,
        peak,
        train_steps=len(schedule),
        **costs.parameter_counts(target),
    )
    return TransferResult(
        model=target,
        pairing=pairing,
        scores=None,
        stages=stages,
        cost=cost,
        config={"method": method, **asdict(config)},
        notes=list(notes),
    )


# --------------------------------------------------------------------------- SFT


def sft(
    source: nn.Module | None,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: SFTConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """Plain SFT of ``target`` on ``train_records`` (the source and attribution records are unused;
    they are taken so every method has SemAlign's signature; ``source`` may be None)."""
    begin("sft", source, target, config, SFTConfig, resume)

    def make_loss(model):
        def loss(batch):
            ce = ce_per_example(model, batch)
            return ce, {"ce": ce}

        return loss

    return fine_tune(
        "sft",
        source,
        target,
        train_records,
        config,
        tokenizer,
        stop_after_stage,
        make_loss,
        lambda b: 0.0,
        unused_pairing(source, target, "sft does not use the source"),
    )


# --------------------------------------------------------------------------- output KL


def output_kl(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: OutputKLConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """Distil the source's next-token distributions into the target on the response tokens.

    The teacher logits are computed per micro-batch without grad (at the supervised positions
    only), so nothing of size batches × |V| is kept between steps.
    """
    begin("output_kl", source, target, config, OutputKLConfig, resume)
    src_shape = costs.model_shape(source)

    def make_loss(model):
        def loss(batch):
            with torch.no_grad():
                teacher, _, _ = supervised_logits(source, batch)
            logits, rows, tgt = supervised_logits(model, batch)
            n = batch["input_ids"].shape[0]
            log_p = torch.log_softmax(teacher / config.tau, dim=-1)
            log_q = torch.log_softmax(logits / config.tau, dim=-1)
            kl = per_example_mean((log_p.exp() * (log_p - log_q)).sum(-1) * config.tau**2, rows, n)
            parts = {"kl": kl}
            total = config.kl_weight * kl
            if config.ce_weight:
                parts["ce"] = per_example_mean(
                    F.cross_entropy(logits, tgt, reduction="none"), rows, n
                )
                total = total + config.ce_weight * parts["ce"]
            return total, parts

        return loss

    return fine_tune(
        "output_kl",
        source,
        target,
        train_records,
        config,
        tokenizer,
        stop_after_stage,
        make_loss,
        lambda b: source_forward_flops(src_shape, b),
        unused_pairing(source, target, "output_kl uses only the source's output"),
    )


# ---------------------------------------------------------------------- hidden-state distillation


def hidden_maps(pairing: Pairing, d_target: int, d_source: int, seed: int) -> nn.ModuleDict:
    """One Linear(d_target → d_source, no bias) per target layer, seeded N(0, 1/d_target) (the
    map's output starts at the scale of its input; it is learned jointly with the target)."""
    maps = nn.ModuleDict()
    gen = torch.Generator().manual_seed(seed)
    for j in sorted(pairing.target_to_source):
        lin = nn.Linear(d_target, d_source, bias=False)
        with torch.no_grad():
            lin.weight.normal_(0.0, 1.0 / math.sqrt(d_target), generator=gen)
        maps[str(j)] = lin
    return maps


def pair_error(map_: nn.Module, h_t: Tensor, h_s: Tensor, normalize: bool) -> Tensor:
    """Per-token MSE between the mapped target state and the source state (m,); relative to
    the source states' mean square when ``normalize``."""
    err = (map_(h_t) - h_s).square().mean(-1)
    return err / h_s.square().mean().clamp_min(EPS) if normalize else err


def hidden_distill_loss(
    source: nn.Module, maps: nn.ModuleDict, src_layers0: list[int], config: HiddenDistillConfig
) -> Callable[[nn.Module], LossFn]:
    """``make_loss`` of :func:`hidden_distill`: per example, the mean over target layers j of
    ``pair_error(M_j, h_T^(j), h_S^(src_layers0[j-1]))`` on non-pad tokens, plus the CE term."""
    n_t = len(src_layers0)

    def make_loss(model, maps=maps):  # under FSDP: the sharded copies of model and maps
        def loss(batch):
            device = next(model.parameters()).device
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            rows, cols = inputs["attention_mask"].bool().nonzero(as_tuple=True)
            with torch.no_grad():
                layers0 = sorted(set(src_layers0))
                src = run_to_layers(source, inputs, layers0, ("block_out",), detach=True)
            with capture_hidden(model, list(range(n_t)), ("block_out",), detach=False) as trace:
                if config.ce_weight:
                    ce = ce_per_example(model, batch)
                else:
                    model(**inputs, logits_to_keep=1, use_cache=False)
            terms = []
            for j in range(1, n_t + 1):
                h_t = trace["block_out"][j - 1][rows, cols].float()
                h_s = src["block_out"][src_layers0[j - 1]][rows, cols].float()
                err = pair_error(maps[str(j)], h_t, h_s, config.normalize)
                terms.append(per_example_mean(err, rows, batch["input_ids"].shape[0]))
            hidden = torch.stack(terms).mean(0)
            if not config.ce_weight:
                return config.hidden_weight * hidden, {"hidden": hidden}
            total = config.hidden_weight * hidden + config.ce_weight * ce
            return total, {"hidden": hidden, "ce": ce}

        return loss

    return make_loss


def hidden_distill(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: HiddenDistillConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """Layer-wise hidden-state distillation (uniform pairing, learned linear map per pair).

    Loss: ``hidden_weight · mean_j relMSE(M_j h_T^(j), h_S^(s(j))) + ce_weight · CE`` over
    non-pad tokens, where h are block outputs (residual stream after layer j). The maps are
    returned in ``result.stages[0]["maps"]`` (state dict) for inspection.
    """
    begin("hidden_distill", source, target, config, HiddenDistillConfig, resume)
    n_s, n_t = surgery.num_layers(source), surgery.num_layers(target)
    pairing = uniform_pairing(n_s, n_t)
    src_layers0 = [pairing.target_to_source[j] - 1 for j in range(1, n_t + 1)]
    d_t, d_s = surgery.hidden_size(target), surgery.hidden_size(source)
    # on the target's device (they read its hidden states there), seeded on the CPU
    maps = hidden_maps(pairing, d_t, d_s, config.seed).to(next(target.parameters()).device)
    src_shape = costs.model_shape(source)

    def extra_flops(batch):
        tokens = int(batch["input_ids"].numel())
        source_blocks = source_forward_flops(src_shape, batch, max(src_layers0) + 1, head=False)
        return source_blocks + 3 * 2.0 * d_t * d_s * tokens * n_t  # maps: forward + 2 backward

    lr = config.map_lr or config.lr
    map_group = {"lr": lr, "weight_decay": 0.0}
    make_loss = hidden_distill_loss(source, maps, src_layers0, config)
    result = fine_tune(
        "hidden_distill",
        source,
        target,
        train_records,
        config,
        tokenizer,
        stop_after_stage,
        make_loss,
        extra_flops,
        pairing,
        extra_modules=[(maps, map_group)],
    )
    result.stages[0]["maps"] = {k: v.detach().clone() for k, v in maps.state_dict().items()}
    return result


__all__ = [
    "HiddenDistillConfig",
    "OutputKLConfig",
    "SFTConfig",
    "TrainConfig",
    "add_lora",
    "ce_per_example",
    "epoch_schedule",
    "hidden_distill",
    "merge_lora",
    "output_kl",
    "sft",
    "supervised_logits",
    "train",
]
