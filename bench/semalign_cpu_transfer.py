"""A short SemAlign transfer on the `cpu` pair (SmolLM2-135M-Instruct -> its derived 24-layer).

Reports wall time, peak memory and the loss of every frontier stage; writes
<results>/bench/cpu/semalign_cpu_transfer_<task>_n<train>_steps<steps>.json (a bench record, kept
apart from the notebooks' records; ``promote`` does not copy it). Usage:
    python bench/semalign_cpu_transfer.py [--task gsm] [--train 16] [--steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from semalign_core.data import load_transfer  # noqa: E402
from semalign_core.models.registry import load_model  # noqa: E402
from semalign_core.records import provenance, write_record  # noqa: E402
from semalign_core.semalign.config import SemAlignConfig  # noqa: E402
from semalign_core.semalign.transfer import transfer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gsm")
    parser.add_argument(
        "--train", type=int, default=16, help="align-split records used for training"
    )
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per frontier stage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = load_model("smollm2-135m-instruct")
    target = load_model("smollm2-derived-24l")
    train = load_transfer(args.task, "align", limit=args.train, seed=args.seed)
    extract = load_transfer(args.task, "extract", limit=8, seed=args.seed)
    config = SemAlignConfig(
        steps_per_stage=args.steps,
        batch_size=4,
        max_length=256,
        lr=3e-5,
        seed=args.seed,
        progress=True,
    )
    result = transfer(
        source.model, target.model, train.records, extract.records, config, source.tokenizer
    )
    stages = [
        {k: v for k, v in s.items() if not isinstance(v, (list, dict)) or k == "losses"}
        for s in result.stages
    ]
    run_config = {
        "source": source.name,
        "target": target.name,
        "task": args.task,
        "n_train": len(train),
        "n_extract": len(extract),
        "threads": args.threads,
        **config.identity(),
    }
    path = write_record(
        "bench",
        "cpu",
        f"semalign_cpu_transfer_{args.task}_n{args.train}_steps{args.steps}",
        run_config,
        metrics={"stages": stages, "pairing": result.pairing.as_table()},
        cost=result.cost,  # the peak is the transfer call's own (costs.PeakMemory inside)
        prov=provenance(seed=args.seed, data_sources={**train.sources, **extract.sources}),
    )
    print(f"wall {result.cost['wall_s']:.0f} s, peak {result.cost['peak_rss_mb']:.0f} MB -> {path}")
    for s in stages:
        print({k: s[k] for k in s if k != "losses"})


if __name__ == "__main__":
    main()
