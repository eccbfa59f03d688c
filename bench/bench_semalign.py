"""Cost ratios of SemAlign's two hot paths against the plain passes they replace (nanoGPT-style).

(a) attribution of ALL source layers (one forward + one backward to the block outputs) vs one
    plain forward+backward of the source (HF loss, full logits, weight gradients); must be ≤ 1.5×.
(b) one frontier-stage step (layer k forward+backward, LM-head readouts of its loss, AdamW on
    layer k) vs one plain fine-tuning step of the whole target (forward, backward, AdamW on all
    weights) on the same batch; must be ≤ 1×. Measured for the first stage (a typical stage) and
    the last one (which adds the output KL).

    .venv/bin/python bench/bench_semalign.py                   # tiny smoke pair
    .venv/bin/python bench/bench_semalign.py --model-pair cpu  # SmolLM2-135M → derived 24-layer

Results are merged into ``results/bench/semalign.json`` (one entry per model pair). The cpu pair
uses the cached ``smollm2-derived-24l`` when it exists; otherwise it builds the same-shaped student
in memory by pruning without healing (timings depend on shapes only; recorded as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semalign_core.data import load_transfer  # noqa: E402
from semalign_core.data.batching import sft_batches  # noqa: E402
from semalign_core.lm import semantics, surgery  # noqa: E402
from semalign_core.paths import results_dir  # noqa: E402
from semalign_core.records import package_versions, write_json_atomic  # noqa: E402
from semalign_core.semalign.attribution import grad_x_activation, pair_layers  # noqa: E402
from semalign_core.semalign.config import SemAlignConfig  # noqa: E402
from semalign_core.semalign.frontier import LayerInputs, make_trainable  # noqa: E402
from semalign_core.semalign.objective import StageLoss  # noqa: E402
from semalign_core.semalign.supervision import composite_map, source_supervision  # noqa: E402


def load_pair(name: str):
    from semalign_core.models.registry import REGISTRY, cached_dir, load_model

    if name == "tiny":
        src, tgt = (
            load_model("tiny-source", verbose=False),
            load_model("tiny-target", verbose=False),
        )
        return src.model, tgt.model, src.tokenizer, "tiny-source", "tiny-target"
    src = load_model("smollm2-135m-instruct", verbose=False)
    spec = REGISTRY["smollm2-derived-24l"]
    if (cached_dir(spec.name) / "semalign_derived.json").exists():
        return (
            src.model,
            load_model(spec.name, verbose=False).model,
            src.tokenizer,
            src.name,
            spec.name,
        )
    from semalign_core.data.corpora import TRAIN_CORPORA, token_blocks
    from semalign_core.models.derive import DeriveConfig, measure_importance, prune

    cfg = DeriveConfig(**spec.derive)
    calib = token_blocks(src.tokenizer, TRAIN_CORPORA, 128, 4, seed=0)
    student = prune(src.model, measure_importance(src.model, calib), cfg)
    return (
        src.model,
        student,
        src.tokenizer,
        src.name,
        f"{spec.name} (pruned in memory, not healed)",
    )


def paired(fn, ref, repeats: int) -> dict[str, float]:
    """Median wall and process-CPU seconds of ``fn`` and ``ref``, and medians of per-round ratios.

    The two run alternately, one warm-up each, so load from other processes on a shared machine
    hits both alike. Process CPU time (all threads of this process) is the primary statistic: it
    is far less sensitive to other processes than wall time.
    """
    fn(), ref()
    rows = []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w1, c1 = time.perf_counter(), time.process_time()
        ref()
        w2, c2 = time.perf_counter(), time.process_time()
        rows.append((w1 - w0, w2 - w1, c1 - c0, c2 - c1))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    return {
        "wall": med([r[0] for r in rows]),
        "wall_ref": med([r[1] for r in rows]),
        "cpu": med([r[2] for r in rows]),
        "cpu_ref": med([r[3] for r in rows]),
        "ratio_wall": med([r[0] / r[1] for r in rows]),
        "ratio_cpu": med([r[2] / r[3] for r in rows]),
    }


def plain_backward(model, batch):
    def run():
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model(**batch, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def plain_finetune_step(model, batch):
    for p in model.parameters():
        p.requires_grad_(True)
    optim = torch.optim.AdamW(
        model.parameters(), lr=1e-12
    )  # tiny lr: weights barely move between repeats

    def run():
        for p in model.parameters():  # the frontier step run alternately freezes them
            p.requires_grad_(True)
        optim.zero_grad(set_to_none=True)
        model(**batch, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()

    return run


def frontier_step(source, target, batch, stage: int, config: SemAlignConfig):
    n_t = surgery.num_layers(target)
    pairing = pair_layers(None, n_t, "floor", n_source=surgery.num_layers(source))
    s_src = semantics.semantic_bases(surgery.unembedding(source).weight)
    s_tgt = semantics.semantic_bases(surgery.unembedding(target).weight)
    sup = source_supervision(
        source, [batch], pairing, config, composite_map(s_src, s_tgt), need_teacher=True
    )
    inputs = LayerInputs(target, [batch], stage - 1)
    loss_fn = StageLoss(target, sup, inputs, [batch], config, s_src, s_tgt, surgery.Unembed(source))
    for p in target.parameters():
        p.requires_grad_(False)
    params = make_trainable(surgery.decoder_layers(target)[stage - 1], config)
    optim = torch.optim.AdamW(params, lr=1e-12)

    def run():
        for p in target.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        loss, _ = loss_fn(stage, 0)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()

    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-pair", choices=("tiny", "cpu"), default="tiny")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=None, help="default 128 (tiny), 256 (cpu)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(results_dir() / "bench" / "semalign.json"))
    args = ap.parse_args(argv)
    max_length = args.max_length or (128 if args.model_pair == "tiny" else 256)
    torch.manual_seed(0)
    source, target, tok, src_name, tgt_name = load_pair(args.model_pair)
    source.eval(), target.eval()
    records = load_transfer("gsm", "align", limit=args.batch_size).records
    batch = sft_batches(records, tok, args.batch_size, max_length)[0]
    config = SemAlignConfig(batch_size=args.batch_size, max_length=max_length, progress=False)

    plain_src = plain_backward(source, batch)
    attr = {
        m: paired(lambda m=m: grad_x_activation(source, batch, m), plain_src, args.repeats)
        for m in ("hooks", "captum")
    }
    for p in source.parameters():
        p.requires_grad_(False)
    n_t = surgery.num_layers(target)
    stage = {}
    for k in (1, n_t):
        step = frontier_step(source, target, batch, k, config)
        stage[k] = paired(step, plain_finetune_step(target, batch), args.repeats)
        for p in target.parameters():
            p.requires_grad_(False)

    entry = {
        "source": src_name,
        "target": tgt_name,
        "batch": {
            "size": args.batch_size,
            "max_length": max_length,
            "tokens": int(batch["attention_mask"].sum()),
            "supervised_tokens": int((batch["labels"][:, 1:] != -100).sum()),
        },
        "measurements": {
            "attribution_hooks_vs_plain_source_fwd_bwd": attr["hooks"],
            "attribution_captum_vs_plain_source_fwd_bwd": attr["captum"],
            "frontier_stage_1_step_vs_plain_target_ft_step": stage[1],
            f"frontier_stage_{n_t}_step_vs_plain_target_ft_step": stage[n_t],
        },
        "ratios_cpu_time": {
            "attribution_hooks_vs_plain": attr["hooks"]["ratio_cpu"],
            "attribution_captum_vs_plain": attr["captum"]["ratio_cpu"],
            "frontier_stage_1_vs_plain_ft": stage[1]["ratio_cpu"],
            f"frontier_stage_{n_t}_vs_plain_ft": stage[n_t]["ratio_cpu"],
        },
        "limits": {"attribution_vs_plain": 1.5, "frontier_vs_plain_ft": 1.0},
        "repeats": args.repeats,
        "statistic": "medians over alternating rounds after one warm-up; "
        "ratio = median of per-round ratios",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
            "dtype": "float32",
            "device": "cpu",
        },
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing[args.model_pair] = entry
    write_json_atomic(out, existing)
    print(
        json.dumps(
            {
                "pair": args.model_pair,
                "measurements": entry["measurements"],
                "ratios_cpu_time": entry["ratios_cpu_time"],
            },
            indent=1,
        )
    )
    return entry


if __name__ == "__main__":
    main()
