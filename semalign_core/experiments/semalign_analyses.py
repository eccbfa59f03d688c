"""Notebook 01: SemAlign's analyses, Fig. 2 (decomposition fidelity) and Figs. 4-6 (layer CKA).

* :func:`decomposition_fidelity_record` (Fig. 2): per layer, the mean cosine between each token's
  ``block_out`` state h and its decompose→recompose reconstruction ``Sᵀ S h/‖h‖``, with
  output-side bases (unit rows of pinv(W_Uᵀ)) and input-side bases (unit input-embedding rows),
  for the source and the target model; beside the paper's cosine decomposition, the two other
  decompositions of ``SemAlignConfig.decomposition`` (dual coefficients, gain-folded bases).
* :func:`cka_record` (Figs. 4-6): linear CKA (layers × layers) of target×target and
  source×target, before and after a short SemAlign alignment of the target.

Both read the same tokens: transfer-split conversations (``train`` split of the transfer task,
held out from the ``align``/``extract`` splits the alignment uses), every real token, subsampled
to at most ``max_tokens`` positions with the seed, identical positions for every model. Each
writes one record (``results/semalign_analyses/<profile>/{fidelity,cka}.json``), reused while
valid; the figures are drawn from the records alone (``make figures``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F

from semalign_core.data import load_transfer
from semalign_core.data.batching import sft_batches
from semalign_core.devices import default_device
from semalign_core.experiments.budgets import SEMALIGN_ANALYSIS_BUDGETS, SemAlignAnalysisBudget
from semalign_core.experiments.catalog import SEMALIGN_ANALYSES
from semalign_core.experiments.model_pool import load_for, record_models
from semalign_core.experiments.notebook import check_optional_int
from semalign_core.lm import semantics, surgery
from semalign_core.lm.cka import cka_matrix
from semalign_core.lm.nethook import capture_hidden
from semalign_core.profiles import Profile
from semalign_core.records import RecordParts, get_or_compute, json_rounded, provenance
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.result import check_compatible
from semalign_core.semalign.supervision import composite_map, decomposition_bases, map_states
from semalign_core.semalign.transfer import transfer

MEASURE_SPLIT = "train"  # transfer split whose texts are measured (not seen by the alignment)


def semalign_budget(
    prof: Profile, n_examples: int | None = None, max_length: int | None = None
) -> SemAlignAnalysisBudget:
    """The profile's budget with the notebook's overrides (None keeps the profile's value)."""
    check_optional_int("n_examples", n_examples)
    check_optional_int("max_length", max_length, minimum=2)
    changes = {
        k: v for k, v in (("n_examples", n_examples), ("max_length", max_length)) if v is not None
    }
    return replace(SEMALIGN_ANALYSIS_BUDGETS[prof.name], **changes)


# --------------------------------------------------------------------------- tokens and states


def measured_batches(tokenizer, task: str, budget: SemAlignAnalysisBudget, seed: int):
    """SFT batches (whole conversations) of the measured texts, and the data split."""
    full = load_transfer(task, MEASURE_SPLIT)
    split = load_transfer(task, MEASURE_SPLIT, limit=min(budget.n_examples, len(full)), seed=seed)
    batches = sft_batches(
        split.records, tokenizer, budget.batch_size, budget.max_length, "transfer", loss_on="all"
    )
    return batches, split


def token_positions(batches: Sequence[dict], max_tokens: int, seed: int) -> list[torch.Tensor]:
    """Per batch, a (k, 2) tensor of (row, column) real-token positions to measure.

    Every non-padding token is a candidate; when there are more than ``max_tokens`` a seeded
    sample is kept (in reading order), so every model reads the same positions.
    """
    all_pos = [b["attention_mask"].nonzero() for b in batches]
    total = sum(len(p) for p in all_pos)
    if total <= max_tokens:
        return all_pos
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_tokens]] = True
    out, start = [], 0
    for p in all_pos:
        out.append(p[keep[start : start + len(p)]])
        start += len(p)
    return out


@torch.no_grad()
def token_states(
    model, batches: Sequence[dict], positions: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``block_out`` of every layer at the chosen positions: L (n_tokens, d) fp32 CPU tensors."""
    device = next(model.parameters()).device
    backbone = surgery.backbone(model)  # the LM head over every position is not needed
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(surgery.num_layers(model))]
    for batch, pos in zip(batches, positions):
        if len(pos) == 0:
            continue
        with capture_hidden(model, None, ("block_out",)) as trace:
            backbone(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
        rows, cols = pos[:, 0].to(device), pos[:, 1].to(device)
        for k in range(len(per_layer)):
            per_layer[k].append(trace["block_out"][k][rows, cols].float().cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def measured_states(model, tokenizer, task: str, budget: SemAlignAnalysisBudget, seed: int):
    """(``block_out`` states at the measured positions, the data split) of one model."""
    batches, split = measured_batches(tokenizer, task, budget, seed)
    positions = token_positions(batches, budget.max_tokens, seed)
    return token_states(model, batches, positions), split


# --------------------------------------------------------------------------- Fig. 2


def layer_fidelity(
    states: Sequence[torch.Tensor], bases: torch.Tensor, decomposition: str = "cosine"
) -> tuple[list[float], list[float]]:
    """Per layer, mean and std over tokens of the decompose→recompose cosine with ``bases``.

    For "cosine" equal to :func:`semantics.decomposition_fidelity` (tested), computed through the
    d × d map ``SᵀS`` (:func:`~semalign_core.semalign.supervision.composite_map`) instead of |V|
    coefficients per token; the other decompositions through their own map.
    """
    m = composite_map(bases, bases, decomposition)  # on the bases' device (the GPU at scale)
    means, stds = [], []
    for h in states:
        h = h.to(m.device, torch.float32)
        cos = F.cosine_similarity(map_states(h, m, "none"), h, dim=-1, eps=1e-12).double()
        means.append(float(cos.mean()))
        stds.append(float(cos.std(unbiased=False)))
    return means, stds


def _tied(model) -> bool:
    return (
        surgery.unembedding(model).weight.data_ptr()
        == surgery.input_embeddings(model).weight.data_ptr()
    )


def _semalign_config(
    prof: Profile, budget: SemAlignAnalysisBudget, task: str, seed: int, kind: str
) -> dict:
    return {
        "profile": prof.name,
        "analysis": kind,
        "source": prof.semalign_source,
        "target": prof.semalign_target,
        "task": task,
        "measure_split": MEASURE_SPLIT,
        "budget": asdict(budget),
        "seed": seed,
        "dtype": prof.dtype,
        "version": 1,
    }


# Record key → the SemAlignConfig.decomposition it measures with the output-side bases
# ("output_side" is the paper's cosine decomposition, the key older records already have).
FIDELITY_DECOMPOSITIONS = {"output_side": "cosine", "dual": "dual", "gain_folded": "gain_folded"}


def model_fidelity(model, name: str, states: Sequence[torch.Tensor]) -> dict[str, Any]:
    """One model's entry of the Fig. 2 record: fidelity per layer with the output-side bases
    under each decomposition, and with the input-side bases."""
    entry: dict[str, Any] = {"model": name, "layers": len(states), "tied_embeddings": _tied(model)}
    for key, decomposition in FIDELITY_DECOMPOSITIONS.items():
        mean, std = layer_fidelity(states, decomposition_bases(model, decomposition), decomposition)
        entry[key], entry[f"{key}_std"] = json_rounded(mean), json_rounded(std)
    in_mean, in_std = layer_fidelity(
        states, semantics.input_side_bases(surgery.input_embeddings(model).weight)
    )
    entry["input_side"], entry["input_side_std"] = json_rounded(in_mean), json_rounded(in_std)
    return entry


def decomposition_fidelity_record(
    prof: Profile,
    seed: int = 0,
    force: bool = False,
    n_examples: int | None = None,
    max_length: int | None = None,
    task: str = "gsm",
) -> dict[str, Any]:
    """Fig. 2: per-layer decomposition fidelity of source and target, output- vs input-side bases.

    Record ``results/semalign_analyses/<profile>/fidelity.json``; ``metrics.models[role]`` holds
    ``output_side`` (cosine decomposition), ``dual``, ``gain_folded`` and ``input_side`` (mean
    per layer, layer 1..L) and their ``_std``.
    """
    budget = semalign_budget(prof, n_examples, max_length)
    # The decompositions measured are part of the config: a record made before the dual and
    # gain-folded lines existed is not reused (it lacks them).
    config = {
        **_semalign_config(prof, budget, task, seed, "fidelity"),
        "decompositions": list(FIDELITY_DECOMPOSITIONS.values()),
    }

    def compute() -> RecordParts:
        t0 = time.perf_counter()
        models, sources = {}, {}
        for role, name in (("source", prof.semalign_source), ("target", prof.semalign_target)):
            loaded = load_for(prof, name)
            states, split = measured_states(loaded.model, loaded.tokenizer, task, budget, seed)
            models[role] = model_fidelity(loaded.model, name, states)
            n_tokens = int(states[0].shape[0])
            sources.update(split.sources)
            del loaded, states  # one model in memory at a time
        metrics = {
            "models": models,
            "n_tokens": n_tokens,
            "n_examples": len(split),
            "point": "block_out",
            "final_norm_applied": False,
        }
        return RecordParts(
            metrics,
            {"wall_s": round(time.perf_counter() - t0, 2)},
            provenance(seed=seed, data_sources=sources, device=default_device(), dtype=prof.dtype),
        )

    models = record_models(source=prof.semalign_source, target=prof.semalign_target)
    return get_or_compute(SEMALIGN_ANALYSES, prof.name, "fidelity", config, compute, force, models)


# --------------------------------------------------------------------------- Figs. 4-6


def short_alignment(
    source, target, tokenizer, task: str, budget: SemAlignAnalysisBudget, seed: int
):
    """``target`` after a short SemAlign run (trained in place: align split; attribution on
    extract); returns (the aligned model, a summary for the record, the data sources)."""
    align = load_transfer(task, "align", limit=budget.n_align, seed=seed)
    extract_all = load_transfer(task, "extract")
    extract = load_transfer(task, "extract", limit=min(budget.n_align, len(extract_all)), seed=seed)
    config = SemAlignConfig(
        steps_per_stage=budget.steps_per_stage,
        batch_size=budget.batch_size,
        max_length=budget.max_length,
        lr=budget.lr,
        seed=seed,
        progress=False,
    )
    result = transfer(source, target, align.records, extract.records, config, tokenizer)
    summary = {
        "config": config.identity(),
        "pairing": [r["source_layer"] for r in result.pairing.as_table()],  # layer 1..L
        "stage_loss_before": json_rounded([s["loss_before"] for s in result.stages]),
        "stage_loss_after": json_rounded([s["loss_after"] for s in result.stages]),
        "wall_s": round(result.cost["wall_s"], 2),
    }
    return result.model, summary, {**align.sources, **extract.sources}


def cka_record(
    prof: Profile,
    seed: int = 0,
    force: bool = False,
    n_examples: int | None = None,
    max_length: int | None = None,
    task: str = "gsm",
) -> dict[str, Any]:
    """Figs. 4-6: linear CKA of target×target and source×target, before and after alignment.

    Record ``results/semalign_analyses/<profile>/cka.json``; ``metrics.matrices`` holds
    ``target_target_{before,after}`` (L_t × L_t) and ``source_target_{before,after}`` (L_s × L_t,
    rows = source layers), on ``block_out`` of layers 1..L at the same ``n_tokens`` positions.
    """
    budget = semalign_budget(prof, n_examples, max_length)
    config = _semalign_config(prof, budget, task, seed, "cka")

    def compute() -> RecordParts:
        t0 = time.perf_counter()
        source, target = load_for(prof, prof.semalign_source), load_for(prof, prof.semalign_target)
        check_compatible(source.model, target.model)
        batches, split = measured_batches(target.tokenizer, task, budget, seed)
        positions = token_positions(batches, budget.max_tokens, seed)
        src = token_states(source.model, batches, positions)
        before = token_states(target.model, batches, positions)  # the alignment trains in place
        aligned, alignment, align_sources = short_alignment(
            source.model, target.model, target.tokenizer, task, budget, seed
        )
        after = token_states(aligned, batches, positions)
        matrices = {
            "target_target_before": cka_matrix(before, before),
            "target_target_after": cka_matrix(after, after),
            "source_target_before": cka_matrix(src, before),
            "source_target_after": cka_matrix(src, after),
        }
        metrics = {
            "matrices": {k: json_rounded(v) for k, v in matrices.items()},
            "n_tokens": int(src[0].shape[0]),
            "n_examples": len(split),
            "source_layers": len(src),
            "target_layers": len(before),
            "point": "block_out",
            "alignment": alignment,
        }
        cost = {
            "wall_s": round(time.perf_counter() - t0, 2),
            "alignment_wall_s": alignment["wall_s"],
        }
        return RecordParts(
            metrics,
            cost,
            provenance(
                seed=seed,
                data_sources={**split.sources, **align_sources},
                device=default_device(),
                dtype=prof.dtype,
            ),
        )

    models = record_models(source=prof.semalign_source, target=prof.semalign_target)
    return get_or_compute(SEMALIGN_ANALYSES, prof.name, "cka", config, compute, force, models)


__all__ = [
    "FIDELITY_DECOMPOSITIONS",
    "MEASURE_SPLIT",
    "cka_record",
    "decomposition_fidelity_record",
    "layer_fidelity",
    "measured_batches",
    "measured_states",
    "model_fidelity",
    "semalign_budget",
    "short_alignment",
    "token_positions",
    "token_states",
]
