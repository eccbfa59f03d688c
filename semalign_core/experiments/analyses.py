"""Analysis experiments: SemAlign's Fig. 2 and Figs. 4-6, SALF's per-layer deviations and gains.

Each public function computes one result record and writes it with :func:`records.write_record`;
a valid record with the same config is reused unless ``force``. Figures are drawn from the records
alone (:mod:`semalign_core.report.plots`, ``make figures``).

SemAlign (spec "Figures and analyses"):

* :func:`decomposition_fidelity_record` (Fig. 2): per layer, the mean cosine between each token's
  ``block_out`` state h and its decompose→recompose reconstruction ``Sᵀ S h/‖h‖``, with
  output-side bases (unit rows of pinv(W_Uᵀ)) and input-side bases (unit input-embedding rows),
  for the source and the target model.
* :func:`cka_record` (Figs. 4-6): linear CKA (layers × layers) of target×target and
  source×target, before and after a short SemAlign alignment of the target.

Both read the same tokens: transfer-split conversations (``train`` split of the transfer task,
held out from the ``align``/``extract`` splits the alignment uses), every real token, subsampled
to at most ``max_tokens`` positions with the seed, identical positions for every model.

SALF (spec "Tables and figures to produce"): :func:`salf_deviation_gain` traces one model on one
classification task (deviation per latent space, gain per block, eof; and the eof under every
registered gain formula).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from semalign_core.lm import surgery
from semalign_core.errors import InvalidParameterError
from semalign_core.lm.nethook import capture_hidden
from semalign_core.profiles import Profile
from semalign_core.records import load_valid_record, provenance, write_record

SEMALIGN_EXPERIMENT = "semalign_analyses"
SALF_EXPERIMENT = "salf_analysis"
DEFAULT_SALF_TASKS = ("sst2", "agnews", "trec")
MEASURE_SPLIT = "train"  # transfer split whose texts are measured (not seen by the alignment)
DECIMALS = 6


# --------------------------------------------------------------------------- budgets per profile


@dataclass(frozen=True)
class SemAlignAnalysisBudget:
    """How much data and alignment the SemAlign analyses use at one profile.

    Attributes:
        n_examples: conversations whose tokens are measured.
        max_length: tokens per conversation (longer ones are truncated).
        max_tokens: measured token positions at most (seeded subsample): bounds the CKA Grams.
        n_align: conversations of the ``align`` split the short alignment trains on
            (attribution uses as many of ``extract``, at most the split's size).
        steps_per_stage, batch_size, lr: the short alignment's SemAlign settings.
    """

    n_examples: int
    max_length: int
    max_tokens: int
    n_align: int
    steps_per_stage: int
    batch_size: int
    lr: float


SEMALIGN_BUDGETS: dict[str, SemAlignAnalysisBudget] = {
    # Tiny random models need a large step for the alignment to move them visibly.
    "smoke": SemAlignAnalysisBudget(4, 48, 256, 2, 2, 2, 1e-3),
    "cpu": SemAlignAnalysisBudget(16, 128, 1024, 8, 2, 2, 3e-5),
    "gpu-small": SemAlignAnalysisBudget(64, 256, 2048, 32, 4, 4, 3e-5),
    "paper": SemAlignAnalysisBudget(128, 512, 2048, 64, 8, 4, 3e-5),
}

# SALF traces the training data (spec, Method 2); None = the whole split.
SALF_EXAMPLES: dict[str, int | None] = {"smoke": 8, "cpu": 64, "gpu-small": 1000, "paper": None}


def semalign_budget(prof: Profile, n_examples: int | None = None,
                    max_length: int | None = None) -> SemAlignAnalysisBudget:
    """The profile's budget with the notebook's overrides (None keeps the profile's value)."""
    base = SEMALIGN_BUDGETS.get(prof.name, SEMALIGN_BUDGETS["cpu"])
    check_optional_int("n_examples", n_examples)
    check_optional_int("max_length", max_length, minimum=2)
    changes = {k: v for k, v in (("n_examples", n_examples), ("max_length", max_length)) if v is not None}
    return SemAlignAnalysisBudget(**{**asdict(base), **changes})


def check_optional_int(name: str, value: Any, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"parameter {name}={value!r} must be None (profile default) "
                                    f"or an integer >= {minimum}")


def check_salf_parameters(tasks: Sequence[str], n_examples: int | None = None,
                          max_length: int = 128) -> tuple[str, ...]:
    """One-line InvalidParameterError unless ``tasks`` is a non-empty list of known tasks (and
    ``n_examples``, ``max_length`` are valid); returns the tasks, duplicates dropped."""
    from semalign_core.data import CLASSIFICATION_TASKS
    from semalign_core.experiments.notebook import check_list

    tasks = check_list("tasks", tasks, CLASSIFICATION_TASKS, none_means_all=False, what="classification task(s)")
    check_optional_int("n_examples", n_examples)
    check_optional_int("max_length", max_length, minimum=2)
    if max_length is None:
        raise InvalidParameterError("parameter max_length=None must be an integer >= 2")
    return tasks


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _round(values) -> list:
    """Nested lists of floats rounded to DECIMALS (NaN kept as None: JSON has no NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    out = np.round(arr, DECIMALS).tolist()

    def clean(x):
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if x != x else x

    return clean(out)


# --------------------------------------------------------------------------- SemAlign: tokens


def measured_batches(tokenizer, task: str, budget: SemAlignAnalysisBudget, seed: int):
    """SFT batches (whole conversations) of the measured texts, and the data split."""
    from semalign_core.data import load_transfer
    from semalign_core.semalign.transfer import sft_batches

    full = load_transfer(task, MEASURE_SPLIT)
    split = load_transfer(task, MEASURE_SPLIT, limit=min(budget.n_examples, len(full)), seed=seed)
    batches = sft_batches(split.records, tokenizer, budget.batch_size, budget.max_length,
                          "transfer", loss_on="all")
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
        out.append(p[keep[start:start + len(p)]])
        start += len(p)
    return out


@torch.no_grad()
def token_states(model, batches: Sequence[dict], positions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``block_out`` of every layer at the chosen positions: a list of L (n_tokens, d) fp32 CPU tensors."""
    device = next(model.parameters()).device
    backbone = surgery._backbone(model)  # the LM head over every position is not needed
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(surgery.num_layers(model))]
    for batch, pos in zip(batches, positions):
        if len(pos) == 0:
            continue
        with capture_hidden(model, None, ("block_out",)) as trace:
            backbone(input_ids=batch["input_ids"].to(device),
                     attention_mask=batch["attention_mask"].to(device), use_cache=False)
        rows, cols = pos[:, 0].to(device), pos[:, 1].to(device)
        for k in range(len(per_layer)):
            per_layer[k].append(trace["block_out"][k][rows, cols].float().cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def layer_fidelity(states: Sequence[torch.Tensor], bases: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per layer, mean and std over tokens of the decompose→recompose cosine with ``bases``.

    Equal to :func:`semantics.decomposition_fidelity` (tested), computed through the d × d map
    ``SᵀS`` (:func:`semalign.composite_map`) instead of |V| coefficients per token.
    """
    from semalign_core.semalign.transfer import composite_map, map_states

    m = composite_map(bases, bases)  # on the bases' device (the GPU at scale)
    means, stds = [], []
    for h in states:
        h = h.to(m.device, torch.float32)
        cos = F.cosine_similarity(map_states(h, m, "none"), h, dim=-1, eps=1e-12).double()
        means.append(float(cos.mean()))
        stds.append(float(cos.std(unbiased=False)))
    return means, stds


def _tied(model) -> bool:
    return surgery.unembedding(model).weight.data_ptr() == surgery.input_embeddings(model).weight.data_ptr()


def _load(name: str, prof: Profile):
    from semalign_core.models.registry import load_model

    return load_model(name, dtype=prof.dtype, device=_device(), verbose=False)


def _semalign_config(prof: Profile, budget: SemAlignAnalysisBudget, task: str, seed: int, kind: str) -> dict:
    return {"profile": prof.name, "analysis": kind, "source": prof.semalign_source,
            "target": prof.semalign_target, "task": task, "measure_split": MEASURE_SPLIT,
            "budget": asdict(budget), "seed": seed, "dtype": prof.dtype, "version": 1}


# --------------------------------------------------------------------------- SemAlign: Fig. 2


def decomposition_fidelity_record(prof: Profile, seed: int = 0, force: bool = False, n_examples: int | None = None,
                                  max_length: int | None = None, task: str = "gsm") -> dict[str, Any]:
    """Fig. 2: per-layer decomposition fidelity of source and target, output- vs input-side bases.

    Record ``results/semalign_analyses/<profile>/fidelity.json``; ``metrics.models[role]`` holds
    ``output_side``/``input_side`` (mean per layer, layer 1..L) and their ``_std``.
    """
    from semalign_core.lm import semantics

    budget = semalign_budget(prof, n_examples, max_length)
    config = _semalign_config(prof, budget, task, seed, "fidelity")
    if not force and (record := load_valid_record(SEMALIGN_EXPERIMENT, prof.name, "fidelity", config)):
        return record
    t0 = time.perf_counter()
    models, sources, n_tokens = {}, {}, None
    for role, name in (("source", prof.semalign_source), ("target", prof.semalign_target)):
        loaded = _load(name, prof)
        batches, split = measured_batches(loaded.tokenizer, task, budget, seed)
        positions = token_positions(batches, budget.max_tokens, seed)
        states = token_states(loaded.model, batches, positions)
        n_tokens = int(states[0].shape[0])
        out_mean, out_std = layer_fidelity(states, semantics.semantic_bases(surgery.unembedding(loaded.model).weight))
        in_mean, in_std = layer_fidelity(states, semantics.input_side_bases(surgery.input_embeddings(loaded.model).weight))
        models[role] = {"model": name, "layers": len(states), "tied_embeddings": _tied(loaded.model),
                        "output_side": _round(out_mean), "output_side_std": _round(out_std),
                        "input_side": _round(in_mean), "input_side_std": _round(in_std)}
        sources.update(split.sources)
        del loaded, states
    metrics = {"models": models, "n_tokens": n_tokens, "n_examples": len(split), "point": "block_out",
               "final_norm_applied": False}
    write_record(SEMALIGN_EXPERIMENT, prof.name, "fidelity", config, metrics=metrics,
                 cost={"wall_s": round(time.perf_counter() - t0, 2)},
                 prov=provenance(seed=seed, data_sources=sources, device=_device(), dtype=prof.dtype))
    return load_valid_record(SEMALIGN_EXPERIMENT, prof.name, "fidelity", config)


# --------------------------------------------------------------------------- SemAlign: Figs. 4-6


def short_alignment(source, target, tokenizer, task: str, budget: SemAlignAnalysisBudget, seed: int):
    """``target`` after a short SemAlign run (trained in place: align split; attribution on extract)."""
    from semalign_core.data import load_transfer
    from semalign_core.semalign.transfer import SemAlignConfig, transfer

    align = load_transfer(task, "align", limit=budget.n_align, seed=seed)
    extract_all = load_transfer(task, "extract")
    extract = load_transfer(task, "extract", limit=min(budget.n_align, len(extract_all)), seed=seed)
    config = SemAlignConfig(steps_per_stage=budget.steps_per_stage, batch_size=budget.batch_size,
                            max_length=budget.max_length, lr=budget.lr, seed=seed, progress=False)
    result = transfer(source, target, align.records, extract.records, config, tokenizer)
    summary = {"config": config.identity(), "pairing": [r["source_layer"] for r in result.pairing.as_table()],  # target layer 1..L
               "stage_loss_before": _round([s["loss_before"] for s in result.stages]),
               "stage_loss_after": _round([s["loss_after"] for s in result.stages]),
               "wall_s": round(result.cost["wall_s"], 2)}
    return result.model, summary, {**align.sources, **extract.sources}


def cka_record(prof: Profile, seed: int = 0, force: bool = False, n_examples: int | None = None,
               max_length: int | None = None, task: str = "gsm") -> dict[str, Any]:
    """Figs. 4-6: linear CKA of target×target and source×target, before and after alignment.

    Record ``results/semalign_analyses/<profile>/cka.json``; ``metrics.matrices`` holds
    ``target_target_{before,after}`` (L_t × L_t) and ``source_target_{before,after}`` (L_s × L_t,
    rows = source layers), on ``block_out`` of layers 1..L at the same ``n_tokens`` positions.
    """
    from semalign_core.lm.cka import cka_matrix
    from semalign_core.semalign.transfer import check_compatible

    budget = semalign_budget(prof, n_examples, max_length)
    config = _semalign_config(prof, budget, task, seed, "cka")
    if not force and (record := load_valid_record(SEMALIGN_EXPERIMENT, prof.name, "cka", config)):
        return record
    t0 = time.perf_counter()
    source, target = _load(prof.semalign_source, prof), _load(prof.semalign_target, prof)
    check_compatible(source.model, target.model)
    batches, split = measured_batches(target.tokenizer, task, budget, seed)
    positions = token_positions(batches, budget.max_tokens, seed)
    src_states = token_states(source.model, batches, positions)
    tgt_before = token_states(target.model, batches, positions)  # before: the alignment trains in place
    aligned, alignment, align_sources = short_alignment(source.model, target.model, target.tokenizer,
                                                        task, budget, seed)
    tgt_after = token_states(aligned, batches, positions)
    matrices = {
        "target_target_before": cka_matrix(tgt_before, tgt_before),
        "target_target_after": cka_matrix(tgt_after, tgt_after),
        "source_target_before": cka_matrix(src_states, tgt_before),
        "source_target_after": cka_matrix(src_states, tgt_after),
    }
    metrics = {"matrices": {k: _round(v) for k, v in matrices.items()}, "n_tokens": int(src_states[0].shape[0]),
               "n_examples": len(split), "source_layers": len(src_states), "target_layers": len(tgt_before),
               "point": "block_out", "alignment": alignment}
    write_record(SEMALIGN_EXPERIMENT, prof.name, "cka", config, metrics=metrics,
                 cost={"wall_s": round(time.perf_counter() - t0, 2), "alignment_wall_s": alignment["wall_s"]},
                 prov=provenance(seed=seed, data_sources={**split.sources, **align_sources},
                                 device=_device(), dtype=prof.dtype))
    return load_valid_record(SEMALIGN_EXPERIMENT, prof.name, "cka", config)


# --------------------------------------------------------------------------- SALF


def salf_split(task: str) -> str:
    """The split SALF traces: ``train`` where it exists, else ``dev``, else ``dev_subsample``
    (never a test split, which evaluation keeps)."""
    from semalign_core.data import CLASSIFICATION_TASKS

    labeled = CLASSIFICATION_TASKS[task].labeled_splits
    return next(s for s in ("train", "dev", "dev_subsample") if s in labeled)


def salf_run_name(model: str, task: str) -> str:
    return f"{model}__{task}"


def _salf_config(prof: Profile, model: str, task: str, n: int | None, seed: int, deviation: str, gain: str,
                 max_length: int) -> dict:
    return {"profile": prof.name, "model": model, "task": task, "split": salf_split(task), "n_examples": n,
            "seed": seed, "deviation": deviation, "gain": gain, "max_length": max_length,
            "dtype": prof.dtype, "version": 1}


def _salf_metrics(model, out: dict) -> dict:
    from semalign_core import salf

    params = salf.block_params(model)
    per_example = np.asarray(out["per_example_deviation"], dtype=np.float64)
    mean = np.asarray(out["deviation"], dtype=np.float64)
    by_formula = {g: salf.compute_gains(mean, params, g) for g in sorted(salf.GAINS)}
    return {
        "layers": len(params), "deviation_kind": out["deviation_kind"], "gain_kind": out["gain_kind"],
        "deviation": _round(mean), "deviation_std": _round(per_example.std(0)), "gains": _round(out["gains"]),
        "eof": int(out["eof"]), "eof_by_gain": {g: salf.choose_eof(v) for g, v in by_formula.items()},
        "gains_by_formula": {g: _round(v) for g, v in by_formula.items()},
        "example_eof_counts": {str(k): v for k, v in sorted(Counter(out["example_eofs"]).items())},
        "block_params": params, "n": int(out["n"]), "prompt": out["meta"],
    }


def salf_deviation_gain(prof: Profile, tasks: Sequence[str] = DEFAULT_SALF_TASKS, seed: int = 0, force: bool = False,
                        n_examples: int | None = None, deviation: str = "cos_normed", gain: str = "drop",
                        max_length: int = 128, batch_size: int = 16) -> list[dict[str, Any]]:
    """SALF's analysis for every model of ``prof.salf_models`` × ``tasks``: one record each.

    ``n_examples`` (default by profile, :data:`SALF_EXAMPLES`) are drawn with ``seed`` from the
    task's training split (:func:`salf_split`). A model is loaded only when one of its records is
    missing or ``force``. Records: ``results/salf_analysis/<profile>/<model>__<task>.json``.
    """
    from semalign_core import salf
    from semalign_core.data import load_classification, select_subset

    tasks = check_salf_parameters(tasks, n_examples, max_length)
    if deviation not in salf.DEVIATIONS:
        raise InvalidParameterError(f"deviation must be one of {', '.join(salf.DEVIATIONS)}, got {deviation!r}")
    if gain not in salf.GAINS:
        raise InvalidParameterError(f"gain must be one of {', '.join(salf.GAINS)}, got {gain!r}")
    n = n_examples if n_examples is not None else SALF_EXAMPLES.get(prof.name, SALF_EXAMPLES["cpu"])
    out: list[dict] = []
    for name in prof.salf_models:
        configs = {t: _salf_config(prof, name, t, n, seed, deviation, gain, max_length) for t in tasks}
        cached = {t: None if force else load_valid_record(SALF_EXPERIMENT, prof.name, salf_run_name(name, t), c)
                  for t, c in configs.items()}
        loaded = _load(name, prof) if any(r is None for r in cached.values()) else None
        for task in tasks:
            if cached[task] is not None:
                out.append(cached[task])
                continue
            full = load_classification(task, salf_split(task))
            limit = None if n is None else min(n, len(full))
            records = select_subset(full.records, limit, seed, f"{task}/{full.split}")
            t0 = time.perf_counter()
            res = salf.analyse(loaded.model, loaded.tokenizer, records, task, deviation=deviation, gain=gain,
                               max_length=max_length, batch_size=batch_size)
            run = salf_run_name(name, task)
            write_record(SALF_EXPERIMENT, prof.name, run, configs[task],
                         metrics=_salf_metrics(loaded.model, res), cost={"wall_s": round(time.perf_counter() - t0, 2)},
                         prov=provenance(seed=seed, data_sources=full.sources, device=_device(), dtype=prof.dtype),
                         model=name, task=task)
            out.append(load_valid_record(SALF_EXPERIMENT, prof.name, run, configs[task]))
        del loaded
    return out


__all__ = [
    "DEFAULT_SALF_TASKS", "SALF_EXAMPLES", "SEMALIGN_BUDGETS", "SemAlignAnalysisBudget", "check_salf_parameters",
    "cka_record", "decomposition_fidelity_record", "layer_fidelity", "measured_batches", "salf_deviation_gain",
    "salf_split", "semalign_budget", "short_alignment", "token_positions", "token_states",
]
