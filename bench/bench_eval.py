"""Evaluation throughput: the lm-eval harness on MMLU log-likelihood vs raw forward passes.

Three timings on the same questions (semalign_mmlu, zero-shot, seeded subset):

* ``harness``: :func:`semalign_core.evaluation.harness.evaluate` end to end (task building,
  requests, HFLM batching, log-softmax, aggregation);
* ``raw_forward``: ``model(input_ids)`` on the same token batches (each question's prompt
  tokens, as HFLM feeds them: one forward per question thanks to its logits cache, batches
  sorted longest first and right-padded), nothing else;
* ``overhead``: the harness with a model that answers instantly (what lm-eval and our task
  code cost by themselves).

Prints a summary and writes ``results/bench/eval_throughput.json``.

    python bench/bench_eval.py --model smollm2-135m-instruct --limit 100 --batch-size 8
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from semalign_core.evaluation.harness import evaluate  # noqa: E402
from semalign_core.evaluation.tasks.utils import build_docs  # noqa: E402
from semalign_core.models.registry import load_model  # noqa: E402
from semalign_core.paths import results_dir  # noqa: E402
from semalign_core.records import provenance, write_json_atomic  # noqa: E402


def question_tokens(tokenizer, limit: int, seed: int) -> tuple[list[list[int]], dict]:
    """Token ids HFLM forwards for each question (the prompt; the continuation " A".." D" is
    one token, so input = context), and the data provenance."""
    split, docs = build_docs(
        "semalign_mmlu", {"limit": limit, "seed": seed, "prompt_style": "plain"}
    )
    return [tokenizer(d["prompt"])["input_ids"] for d in docs], split.provenance()


@torch.no_grad()
def raw_forward(model, sequences: list[list[int]], batch_size: int, pad_id: int) -> float:
    """Seconds to run the model over ``sequences`` in HFLM's order and padding."""
    ordered = sorted(sequences, key=len, reverse=True)
    start = time.perf_counter()
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i : i + batch_size]
        width = len(batch[0])
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
        model(input_ids=ids).logits.float().log_softmax(-1)
    return time.perf_counter() - start


def instant_model():
    """An lm-eval LM that answers at once: measures the harness without a model."""
    from lm_eval.api.model import LM

    class Instant(LM):
        def loglikelihood(self, requests):
            return [(-float(i % 4), False) for i, _ in enumerate(requests)]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return Instant()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output", default=str(results_dir() / "bench" / "eval_throughput.json"))
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    loaded = load_model(args.model, dtype=args.dtype, verbose=True)
    sequences, data = question_tokens(loaded.tokenizer, args.limit, args.seed)
    n, tokens = len(sequences), sum(len(s) for s in sequences)
    pad_id = loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id or 0

    start = time.perf_counter()
    overhead_records = evaluate(instant_model(), "semalign_mmlu", limit=args.limit, seed=args.seed)
    overhead_s = time.perf_counter() - start

    start = time.perf_counter()
    record = evaluate(
        loaded, "semalign_mmlu", limit=args.limit, seed=args.seed, batch_size=args.batch_size
    )["semalign_mmlu"]
    harness_s = time.perf_counter() - start

    raw_forward(loaded.model, sequences[: args.batch_size], args.batch_size, pad_id)  # warm-up
    raw_s = raw_forward(loaded.model, sequences, args.batch_size, pad_id)

    def rates(seconds: float) -> dict:
        return {
            "wall_s": round(seconds, 3),
            "examples_per_s": round(n / seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1),
        }

    result = {
        "benchmark": "eval_throughput",
        "task": "semalign_mmlu (zero-shot, log-likelihood of A-D)",
        "model": args.model,
        "batch_size": args.batch_size,
        "padding_side": "right",
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "n_examples": n,
        "tokens": tokens,
        "mean_tokens_per_example": round(tokens / n, 1),
        "harness": rates(harness_s),
        "raw_forward": rates(raw_s),
        "harness_overhead_without_model": {"wall_s": round(overhead_s, 3)},
        "harness_over_raw_time_ratio": round(harness_s / raw_s, 3),
        "accuracy": record["metrics"]["acc"],
        "load_avg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "data": data,
        "provenance": provenance(seed=args.seed, data_sources=data["sources"], dtype=args.dtype),
    }
    assert math.isclose(overhead_records["semalign_mmlu"]["n"], n)
    path = write_json_atomic(Path(args.output).expanduser().resolve(), result)
    print(
        f"{args.model}: {n} MMLU questions, {tokens} tokens, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    for name in ("harness", "raw_forward"):
        r = result[name]
        print(
            f"  {name:12s} {r['wall_s']:8.1f} s  {r['examples_per_s']:7.2f} ex/s  "
            f"{r['tokens_per_s']:8.1f} tok/s"
        )
    print(
        f"  harness without a model: {overhead_s:.1f} s; harness/raw time "
        f"{result['harness_over_raw_time_ratio']:.2f}x; acc {result['accuracy']:.3f}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
