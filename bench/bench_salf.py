"""Benchmark SALF's savings: measured vs analytic step time at eof = L/2, and the cached prefix.

    .venv/bin/python bench/bench_salf.py [--model smollm2-135m-instruct] [--n 32] [--max-length 64]

1. Step time without the prefix cache: freezing embeddings + blocks 1..L/2 vs full fine-tuning,
   the measured saving against the analytic one (target ≥ 90 % of it).
2. Three epochs with the frozen prefix cached after epoch 1 vs full fine-tuning over the same
   three epochs (target ≥ 1.6× faster).

``--analyse MODEL [MODEL ...]`` instead runs the semantic analysis (deviation, gain and eof per
layer, every deviation kind and gain) on ``--tasks`` (64 examples each) and writes
results/bench/salf_analysis.json.

Every configuration runs ``--repeats`` times, interleaved (the machine may be shared); the
minimum wall time / median step time of the repeats is reported. Writes results/bench/salf.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semalign_core import costs, records  # noqa: E402
from semalign_core.data import load_classification  # noqa: E402
from semalign_core.models.registry import load_model  # noqa: E402
from semalign_core.paths import results_dir  # noqa: E402
from semalign_core.salf import finetune as ft  # noqa: E402
from semalign_core.salf import policies  # noqa: E402


def run(base, tok, data, policy, args, epochs, cache):
    model = copy.deepcopy(base)
    cfg = ft.FinetuneConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=1e-5,
        max_length=args.max_length,
        cache_prefix=cache,
        seed=0,
    )
    result = ft.finetune(model, tok, data, None, policy, cfg, task=args.task)
    del model, result.model
    return result


def steady_step_s(result) -> float:
    steps = result.cost["step_s"][1:] or result.cost["step_s"]  # drop the first (warm-up) step
    return statistics.median(steps)


def analyse_models(models, tasks, n, max_length, out) -> dict:
    from semalign_core import salf
    from semalign_core.salf import analysis, gains

    report = {
        "n": n,
        "max_length": max_length,
        "models": {},
        "provenance": records.provenance(seed=0),
    }
    for name in models:
        loaded = load_model(name)
        model, tok = loaded.model, loaded.tokenizer
        params = analysis.block_params(model)
        per_task = {}
        for task in tasks:
            data = load_classification(task, "dev_subsample", limit=n, seed=0).records
            t0 = time.perf_counter()
            trace = analysis.transition_trace(
                model, tok, data, task, batch_size=16, max_length=max_length
            )
            entry = {
                "label_tokens": [list(t) for t in trace.label_tokens.ids],
                "single_token_labels": trace.label_tokens.single_token,
                "deviations": {},
            }
            for kind in analysis.DEVIATIONS:
                dev = analysis.deviations(model, trace, kind)
                mean = dev.mean(0).numpy()
                entry["deviations"][kind] = {
                    "mean": mean.tolist(),
                    "gains": {g: salf.compute_gains(mean, params, g).tolist() for g in gains.GAINS},
                    "eof": {
                        g: salf.choose_eof(salf.compute_gains(mean, params, g)) for g in gains.GAINS
                    },
                    "example_eof_histogram": _histogram(
                        gains.eof_per_example(dev.numpy(), params, "drop")
                    ),
                }
            bi = analysis.block_influence(trace).mean(0).numpy()
            entry["block_influence"] = {"mean": bi.tolist(), "eof": salf.choose_eof(bi)}
            entry["seconds"] = time.perf_counter() - t0
            per_task[task] = entry
            print(
                name,
                task,
                {k: v["eof"]["drop"] for k, v in entry["deviations"].items()},
                "scaling_kaplan:",
                entry["deviations"]["cos_normed"]["eof"]["scaling_kaplan"],
                flush=True,
            )
        report["models"][name] = {"layers": loaded.stats["layers"], "tasks": per_task}
        del model, loaded
    records.write_json_atomic(Path(out), report)
    print(f"wrote {out}")
    return report


def _histogram(values) -> dict:
    out: dict[int, int] = {}
    for v in values:
        out[int(v)] = out.get(int(v), 0) + 1
    return dict(sorted(out.items()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="sst2")
    p.add_argument("--split", default="dev")
    p.add_argument(
        "--n", type=int, default=None, help="examples (bench: 32, --analyse: 64 per task)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument(
        "--analyse", nargs="+", metavar="MODEL", help="run the semantic analysis instead"
    )
    p.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "trec"])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.analyse:
        out = args.out or str(results_dir() / "bench" / "salf_analysis.json")
        return analyse_models(args.analyse, args.tasks, args.n or 64, args.max_length, out)
    args.out = args.out or str(results_dir() / "bench" / "salf.json")
    args.n = args.n or 32
    loaded = load_model(args.model)
    base, tok = loaded.model, loaded.tokenizer
    L = loaded.stats["layers"]
    eof = L // 2
    data = load_classification(args.task, args.split, limit=args.n, seed=0).records
    runs: dict[str, list] = {
        "full_1ep": [],
        "half_1ep_nocache": [],
        "full_3ep": [],
        "half_3ep_cached": [],
    }
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        runs["full_1ep"].append(run(base, tok, data, policies.FullFinetune(), args, 1, False))
        runs["half_1ep_nocache"].append(
            run(base, tok, data, policies.FixedEof(eof=eof), args, 1, False)
        )
        runs["half_3ep_cached"].append(
            run(base, tok, data, policies.FixedEof(eof=eof), args, args.epochs, True)
        )
        runs["full_3ep"].append(
            run(base, tok, data, policies.FullFinetune(), args, args.epochs, False)
        )
        print(
            f"repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f} s)", flush=True
        )

    full_step = min(steady_step_s(r) for r in runs["full_1ep"])
    half_step = min(steady_step_s(r) for r in runs["half_1ep_nocache"])
    r_full, r_half = runs["full_1ep"][0], runs["half_1ep_nocache"][0]
    analytic = costs.saving_rate(r_half.cost["flops_analytic"], r_full.cost["flops_analytic"])
    measured = costs.saving_rate(half_step, full_step)
    full_wall = min(r.cost["wall_s"] for r in runs["full_3ep"])
    cached_wall = min(r.cost["wall_s"] for r in runs["half_3ep_cached"])
    r_cached, r_full3 = runs["half_3ep_cached"][0], runs["full_3ep"][0]
    analytic_3ep = costs.saving_rate(
        r_cached.cost["flops_analytic"], r_full3.cost["flops_analytic"]
    )
    report = {
        "model": args.model,
        "layers": L,
        "eof": eof,
        "task": args.task,
        "n": len(data),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "device": "cpu",
        "tokens_per_epoch": r_full.cost["tokens"],
        "real_tokens_per_epoch": r_full.cost["real_tokens"],
        "step_time": {
            "full_median_step_s": full_step,
            "eof_half_median_step_s": half_step,
            "saving_measured": measured,
            "saving_analytic": analytic,
            "fraction_of_analytic": measured / analytic if analytic else None,
            "target_fraction": 0.9,
            "all_full_step_s": [steady_step_s(r) for r in runs["full_1ep"]],
            "all_half_step_s": [steady_step_s(r) for r in runs["half_1ep_nocache"]],
        },
        "cached_epochs": {
            "full_wall_s": full_wall,
            "eof_half_cached_wall_s": cached_wall,
            "speedup": full_wall / cached_wall,
            "target_speedup": 1.6,
            "analytic_speedup": 1.0 / (1.0 - analytic_3ep),
            "saving_analytic": analytic_3ep,
            "full_epoch_s": r_full3.cost["epoch_s"],
            "cached_epoch_s": r_cached.cost["epoch_s"],
            "all_full_wall_s": [r.cost["wall_s"] for r in runs["full_3ep"]],
            "all_cached_wall_s": [r.cost["wall_s"] for r in runs["half_3ep_cached"]],
            "peak_rss_mb": {
                "full": r_full3.cost["peak_rss_mb"],
                "cached": r_cached.cost["peak_rss_mb"],
            },
            "trainable_params": {
                "full": r_full3.cost["trainable_params"],
                "cached": r_cached.cost["trainable_params"],
            },
        },
        "provenance": records.provenance(seed=0),
        "bench_wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    records.write_json_atomic(out, report)
    st, ce = report["step_time"], report["cached_epochs"]
    print(
        f"step time: full {full_step:.3f} s, eof={eof} {half_step:.3f} s; "
        f"saving measured {measured:.1%} vs "
        f"analytic {analytic:.1%} ({st['fraction_of_analytic']:.0%} of it, target 90%)"
    )
    print(
        f"{args.epochs} epochs: full {full_wall:.1f} s, eof={eof} cached {cached_wall:.1f} s → "
        f"{ce['speedup']:.2f}× (analytic {ce['analytic_speedup']:.2f}×, target 1.6×)"
    )
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
