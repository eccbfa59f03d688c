"""SemAlign: attribution → pairing → shallow-to-deep frontier alignment (spec, Method 5-7).

``transfer(source, target, train_records, attribution_records, config, tokenizer)``:

1. semantic bases of both LM heads (cached by :mod:`semalign_core.lm.semantics`);
2. layer attribution of the source on ``attribution_records`` → one source layer per target layer;
3. ONE source pass over the training batches the stages use (``config.batches_used``): the
   paired layers' states, mapped into the target space, and the teacher's output logits (for the
   output KL) are cached in CPU memory, and on disk under ``checkpoint_dir`` keyed by a hash of
   source, pairing and data (:mod:`.supervision`); a step copies its batch's onto the device;
4. frontier: for k = 1..L_target only target layer k trains. The frozen prefix is constant within
   a stage, so the input of layer k is computed once per stage per batch (no grad) and a step runs
   layer k alone (replayed with the keyword arguments the model passed it: masks, rotary
   embeddings) plus the LM-head readout its loss needs; the final stage (and every stage with
   ``output_kl_every_stage``) also runs the layers after k for the output KL (:mod:`.frontier`,
   :mod:`.objective`).

A checkpoint after every stage (the trained layer + progress, atomically written) lets
``transfer(..., resume=True)`` continue after the last completed stage with the same numbers as
an uninterrupted run (:mod:`.checkpoints`). Costs follow :mod:`semalign_core.costs` like every
other method: wall time and peak memory of the whole call and of each stage, analytic FLOPs of
every pass (:mod:`.flops`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from semalign_core import costs
from semalign_core.data.batching import sft_batches
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import semantics, surgery
from semalign_core.semalign.attribution import interpolation_plan, layer_attribution, pair_layers
from semalign_core.semalign.checkpoints import (
    digest,
    load_progress,
    model_fingerprint,
    progress_record,
    restore_layers,
    save_stage,
    saved_pairing,
)
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.flops import SemAlignFlops, batch_dims
from semalign_core.semalign.frontier import (
    LayerInputs,
    freeze_all,
    frozen_parameters,
    lora_param_count,
    make_trainable,
    merge_lora,
)
from semalign_core.semalign.objective import StageLoss
from semalign_core.semalign.pairing import Pairing
from semalign_core.semalign.result import TransferResult, check_compatible
from semalign_core.semalign.supervision import (
    Supervision,
    paired_source_layers,
    semantic_maps,
    source_supervision,
)


@dataclass
class Run:
    """What every stage of one run shares. ``source_batches``: what the source pass read when
    the source has its own tokenisation (cross-vocabulary SemAlign; None: ``batches``);
    ``stage_loss``: the stage objective's class (StageLoss's signature)."""

    source: nn.Module
    target: nn.Module
    config: SemAlignConfig
    batches: list[dict]
    attribution_batches: list[dict]
    pairing: Pairing
    scores: list[float] | None
    sup: Supervision
    bases_src: Tensor
    bases_tgt: Tensor
    run_key: str
    flops: SemAlignFlops
    timings: dict
    source_batches: list[dict] | None = None
    stage_loss: Callable[..., StageLoss] = StageLoss


def transfer(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: SemAlignConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """SemAlign transfer from ``source`` into ``target`` (trained in place; see module docstring).

    ``resume=True`` continues after the last stage checkpointed in ``config.checkpoint_dir``
    (made by the same config, models and data). ``stop_after_stage`` ends the run after that
    stage (time-budgeted runs; the interruption test).
    """
    check_compatible(source, target)
    return run_transfer(
        source,
        target,
        config,
        resume,
        stop_after_stage,
        partial(
            _prepare, source, target, train_records, attribution_records, config, tokenizer, resume
        ),
    )


def run_transfer(
    source: nn.Module,
    target: nn.Module,
    config: SemAlignConfig,
    resume: bool,
    stop_after_stage: int | None,
    prepare: Callable[[], tuple[Run, dict | None]],
) -> TransferResult:
    """The frontier stages, checkpoints and costs of a run around ``prepare()``, which returns
    the prepared :class:`Run` and the progress to resume from (None: start afresh). The
    same-family path and the cross-vocabulary one (``crossvocab.trainer``) differ only there."""
    if resume and not config.checkpoint_dir:
        raise InvalidParameterError("resume=True needs config.checkpoint_dir")
    t_start = time.perf_counter()
    with costs.PeakMemory(_device(target)) as peak:
        torch.manual_seed(config.seed)
        source.eval(), target.eval()  # no dropout anywhere: the runs are deterministic
        run, progress = prepare()
        stages, done = _train_frontier(run, progress, stop_after_stage)
    cost = _totals(run, stages, time.perf_counter() - t_start, peak)
    return TransferResult(
        model=target,
        pairing=run.pairing,
        scores=run.scores,
        stages=stages,
        cost=cost,
        config=asdict(config),
        resumed_after_stage=done,
    )


# --------------------------------------------------------------------------- before the stages


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def timed(into: dict, key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t0


def _batches(
    records: Sequence[dict], tokenizer, config: SemAlignConfig, batch_size: int | None = None
) -> list[dict]:
    return sft_batches(
        records,
        tokenizer,
        batch_size or config.batch_size,
        config.max_length,
        config.prompt_style,
        config.loss_on,
    )


def _prepare(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: SemAlignConfig,
    tokenizer,
    resume: bool,
) -> tuple[Run, dict | None]:
    """Batches, then :func:`prepare_run` (steps 1-3)."""
    batches = _batches(train_records, tokenizer, config, config.micro)
    attr_batches = _batches(attribution_records, tokenizer, config, config.attribution_batch)
    maps = partial(semantic_maps, source, target, config.decomposition)
    return prepare_run(source, target, config, resume, batches, attr_batches, maps)


def prepare_run(
    source: nn.Module,
    target: nn.Module,
    config: SemAlignConfig,
    resume: bool,
    batches: list[dict],
    attr_batches: list[dict],
    maps: Callable[[], tuple[Tensor, Tensor, Tensor]],
    *,
    source_batches: list[dict] | None = None,
    stage_loss: Callable[..., StageLoss] = StageLoss,
    key_parts: Sequence = (),
    timings: dict | None = None,
) -> tuple[Run, dict | None]:
    """Run keys, semantic bases, pairing and source supervision (steps 1-3) of the target's
    ``batches`` and the source's ``attr_batches``; ``maps()`` gives (source bases, target bases,
    composite map). Across vocabularies: ``source_batches`` (what the source pass reads, index-
    aligned with ``batches``), ``stage_loss``, ``key_parts`` (whatever else the data key must
    see) and ``timings`` already measured."""
    src_batches = batches if source_batches is None else source_batches
    data_key = digest(*[b[k] for b in batches for k in ("input_ids", "labels")], *key_parts)
    attr_key = digest(*[b[k] for b in attr_batches for k in ("input_ids", "labels")])
    source_key = model_fingerprint(source)
    run_key = digest(config.identity(), source_key, model_fingerprint(target), data_key, attr_key)
    progress = load_progress(config, run_key) if resume else None
    timings = {} if timings is None else timings
    with timed(timings, "bases_s"):
        bases_src, bases_tgt, m = maps()
    with timed(timings, "attribution_s"):
        scores, pairing = run_pairing(source, target, attr_batches, config, progress)
    with timed(timings, "source_pass_s"):
        sup, timings["supervision_cached"] = cached_supervision(
            source, target, src_batches, pairing, config, m, source_key, data_key
        )
    n_sup = sum(batch_dims(b)[2] for b in batches)
    flops = SemAlignFlops(
        config, costs.model_shape(source), costs.model_shape(target), sup.teacher_kind, n_sup
    )
    run = Run(
        source=source,
        target=target,
        config=config,
        batches=batches,
        attribution_batches=attr_batches,
        pairing=pairing,
        scores=scores,
        sup=sup,
        bases_src=bases_src,
        bases_tgt=bases_tgt,
        run_key=run_key,
        flops=flops,
        timings=timings,
        source_batches=source_batches,
        stage_loss=stage_loss,
    )
    return run, progress


def run_pairing(
    source: nn.Module,
    target: nn.Module,
    attr_batches: list[dict],
    config: SemAlignConfig,
    progress: dict | None,
) -> tuple[list[float] | None, Pairing]:
    """Attribution scores and the pairing (both taken from the checkpoint when resuming); a
    target deeper than its source (cross-family only) gets the many-to-one pairing."""
    n_s, n_t = surgery.num_layers(source), surgery.num_layers(target)
    if progress is not None:
        return progress["scores"], saved_pairing(progress, n_s, n_t)
    scores = None
    if config.pairing == "attributed":
        scores = layer_attribution(
            source,
            attr_batches,
            config.attribution_aggregate,
            config.attribution_method,
            config.attribution_granularity,
        ).tolist()
    many = n_t > n_s
    return scores, pair_layers(
        scores, n_t, config.pairing, config.window, n_source=n_s, many_to_one=many
    )


def cached_supervision(
    source: nn.Module,
    target: nn.Module,
    batches: list[dict],
    pairing: Pairing,
    config: SemAlignConfig,
    m: Tensor,
    source_key: str,
    data_key: str,
) -> tuple[Supervision, bool]:
    """The source supervision over ``batches`` (the source's), from the on-disk cache when there
    (then the flag is True)."""
    n_t = surgery.num_layers(target)
    need_teacher = any(config.kl_at(k, n_t) for k in range(1, n_t + 1))
    used = config.batches_used(len(batches))
    key = digest(
        "supervision-v2",  # v2: the batches the stages use only (their ids are keyed)
        used,
        source_key,
        semantics.weight_key(surgery.unembedding(target).weight),
        pairing.as_table(),
        config.objective,
        config.reading,
        config.rescale,
        config.max_cached_logits_bytes,
        need_teacher,
        data_key,
        # Another decomposition gives another map (for gain_folded one that also depends on the
        # target's norm gain, which the key does not otherwise see): the map itself is keyed. The
        # default adds nothing, so supervision cached by earlier runs stays valid.
        *(() if config.decomposition == "cosine" else (config.decomposition, m)),
    )
    path = None
    if config.checkpoint_dir:
        path = Path(config.checkpoint_dir) / f"supervision-{key[:16]}.safetensors"
    sup = Supervision.load(path, key) if path is not None else None
    if sup is not None:
        return sup, True
    sup = source_supervision(source, batches, pairing, config, m, need_teacher, used)
    if path is not None:
        sup.save(path, key)
    return sup, False


# --------------------------------------------------------------------------- the frontier


def _train_frontier(
    run: Run, progress: dict | None, stop_after_stage: int | None
) -> tuple[list[dict], int]:
    """Stages done+1..last, one target layer each; the stage records (resumed ones first)."""
    config, target = run.config, run.target
    n_t = surgery.num_layers(target)
    done, stages = 0, []
    if progress is not None:
        done, stages = int(progress["completed_stage"]), list(progress["stages"])
        restore_layers(config, surgery.decoder_layers(target), done)
    last = n_t if stop_after_stage is None else min(n_t, stop_after_stage)
    inputs = None
    with frozen_parameters(target):
        bar = tqdm(range(done + 1, last + 1), desc="SemAlign stages", disable=not config.progress)
        for stage in bar:
            t_stage = time.perf_counter()
            with costs.PeakMemory(_device(target)) as peak:
                if inputs is None:  # first stage of this process: one no-grad pass to layer k
                    used = config.batches_used(len(run.batches))
                    inputs = LayerInputs(target, run.batches, stage - 1, used)
                record = _run_stage(run, inputs, stage)
            record.update(wall_s=time.perf_counter() - t_stage, **peak.as_dict())
            stages.append(record)
            bar.set_postfix(loss=f"{record['losses'][-1]:.4g}")
            if config.checkpoint_dir:
                layer = surgery.decoder_layers(target)[stage - 1]
                save_stage(
                    config,
                    stage,
                    layer,
                    progress_record(run.run_key, stages, run.scores, run.pairing),
                )
    return stages, done


def _run_stage(run: Run, inputs: LayerInputs, stage: int) -> dict:
    """Train target layer ``stage`` alone; its record (losses, tokens, FLOPs)."""
    config, target, batches = run.config, run.target, run.batches
    loss_fn = run.stage_loss(
        target,
        run.sup,
        inputs,
        batches,
        config,
        run.bases_src,
        run.bases_tgt,
        surgery.Unembed(run.source),
    )
    torch.manual_seed(config.seed + stage)
    freeze_all(target)
    layer = surgery.decoder_layers(target)[stage - 1]
    params = make_trainable(layer, config)
    n_lora = lora_param_count(layer)
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)  # per stage
    used = config.batches_used(len(batches))
    eval_groups = config.eval_groups(len(batches))
    eval_ids = [i for ids in eval_groups for i in ids]
    before = loss_fn.evaluate(stage, eval_groups) if eval_groups else None
    record = _new_stage_record(run, stage)
    for step in tqdm(
        range(config.steps_per_stage),
        desc=f"stage {stage}",
        leave=False,
        disable=not config.progress,
    ):
        ids = config.step_batches(step, len(batches))
        _train_step(run, loss_fn, optim, params, stage, ids, record, n_lora)
    del optim
    record["loss_before"] = before
    record["loss_after"] = loss_fn.evaluate(stage, eval_groups) if eval_groups else None
    if config.trainable == "lora":
        merge_lora(layer)
    freeze_all(target)
    if stage < surgery.num_layers(target):
        inputs.advance()  # the trained layer's outputs feed the next stage
    record["setup_flops"] = run.flops.stage_setup(stage, batches, used, eval_ids, n_lora)
    record["flops"] = sum(record["step_flops"]) + record["setup_flops"]
    return record


def _new_stage_record(run: Run, stage: int) -> dict:
    source_layers = [[s, w] for s, w in interpolation_plan(run.pairing)[stage]]
    record = {"stage": stage, "target_layer": stage, "source_layers": source_layers}
    for key in ("losses", "layer_losses", "kl_losses", "step_flops", "step_s"):
        record[key] = []
    return {**record, "tokens": 0, "real_tokens": 0}


def _train_step(
    run: Run,
    loss_fn: StageLoss,
    optim: torch.optim.Optimizer,
    params: list[nn.Parameter],
    stage: int,
    ids: list[int],
    record: dict,
    n_lora: int,
) -> None:
    """One optimizer step, accumulated over the (micro-)batches ``ids``, appended to the stage
    record."""
    t0 = time.perf_counter()
    optim.zero_grad(set_to_none=True)
    step_loss, parts = 0.0, {}
    for i, weights in zip(ids, loss_fn.term_weights(ids), strict=True):
        loss, micro_parts = loss_fn(stage, i, weights)
        loss.backward()
        step_loss += float(loss.detach())
        for name, value in micro_parts.items():
            parts[name] = parts.get(name, 0.0) + value
    if run.config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, run.config.grad_clip)
    optim.step()
    record["step_s"].append(time.perf_counter() - t0)
    record["losses"].append(step_loss)
    record["layer_losses"].append(parts["layer"])
    if "kl" in parts:
        record["kl_losses"].append(parts["kl"])
    batches = [run.batches[i] for i in ids]
    record["tokens"] += sum(b["input_ids"].numel() for b in batches)
    record["real_tokens"] += sum(int(b["attention_mask"].sum()) for b in batches)
    record["step_flops"].append(sum(run.flops.step(stage, b, n_lora) for b in batches))


# --------------------------------------------------------------------------- totals


def _pass_cost(flops: float, batches: list[dict]) -> dict:
    return {
        "flops": flops,
        "tokens": sum(b["input_ids"].numel() for b in batches),
        "real_tokens": sum(int(b["attention_mask"].sum()) for b in batches),
    }


def _totals(run: Run, stages: list[dict], wall_s: float, peak: costs.PeakMemory) -> dict:
    """The run's cost dict (costs.summarize keys), the passes before the stages included."""
    attributed = run.config.pairing == "attributed"
    attribution = _pass_cost(
        run.flops.attribution(run.attribution_batches),
        run.attribution_batches if attributed else [],
    )
    deepest = max(paired_source_layers(run.pairing))
    read = run.batches if run.source_batches is None else run.source_batches
    # the source pass reads only the batches the stages train on (source_supervision)
    source_batches = [read[i] for i in run.config.batches_used(len(run.batches))]
    source_pass = _pass_cost(run.flops.source_pass(source_batches, deepest), source_batches)
    return costs.summarize(
        [attribution, source_pass, *stages],
        wall_s,
        peak,
        **run.timings,
        flops_attribution=attribution["flops"],
        flops_source_pass=source_pass["flops"],
        # what the FLOPs of the source pass count (records before stop 30 lack it: they counted
        # every training batch, though the pass read only these)
        source_pass_batches=len(source_batches),
        train_batches=len(run.batches),
        teacher_cache=run.sup.teacher_kind,
    )
