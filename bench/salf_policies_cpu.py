"""One short fine-tuning run per freezing policy on one classification task (SALF issue, `cpu`).

Every policy trains the same model (reloaded from the cache for each run) on the same examples
and is scored on the same held-out examples; each record holds score, cost and the saving rate
against full fine-tuning. Writes results/salf_policies/cpu/<task>__<policy>.json. Usage:
    python bench/salf_policies_cpu.py [--model smollm2-135m-instruct] [--task cr] [--train 64]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from semalign_core.data import load_classification  # noqa: E402
from semalign_core.models.registry import load_model  # noqa: E402
from semalign_core.records import provenance, write_record  # noqa: E402
from semalign_core.salf import FinetuneConfig, FixedEof, Lora, RandomEof, make_policy, run_finetune  # noqa: E402
from semalign_core.costs import saving_rate  # noqa: E402


def policies(num_layers: int, found: dict):
    """Lazily, so that the random control can match the eof SALF chose in the run before it."""
    yield "full", make_policy("full")
    yield "salf", make_policy("salf")
    for frac, label in ((0.25, "freeze_1_4"), (0.5, "freeze_1_2"), (0.75, "freeze_3_4")):
        yield label, FixedEof(fraction=frac, name=label)
    yield "random_matched", RandomEof(depth=num_layers - found["salf_eof"], name="random_matched")
    yield "logit_lens_ce", make_policy("logit_lens_ce")
    yield "block_influence", make_policy("block_influence")
    yield "autofreeze", make_policy("autofreeze")
    yield "lisa", make_policy("lisa")
    yield "lora_all", Lora(eof=0, name="lora_all")
    yield "lora_salf_suffix", Lora(eof_from=make_policy("salf"), name="lora_salf_suffix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="cr")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_classification(args.task, "train", limit=args.train, seed=args.seed)
    test = load_classification(args.task, "test", limit=args.eval, seed=args.seed)
    config = FinetuneConfig(epochs=args.epochs, batch_size=8, lr=args.lr, max_length=64, seed=args.seed)
    num_layers = load_model(args.model, verbose=False).stats["layers"]
    full_wall, found = None, {}
    for name, policy in policies(num_layers, found):
        loaded = load_model(args.model, verbose=False)
        result = run_finetune(loaded.model, loaded.tokenizer, train.records, test.records, policy, config, task=args.task)
        record = result.as_record()
        if name == "full":
            full_wall = record["cost"]["wall_s"]
        if name == "salf":
            found["salf_eof"] = record["policy"]["eof"]
        record["cost"]["saving_measured_wall"] = saving_rate(record["cost"]["wall_s"], full_wall)
        run_config = {"model": args.model, "task": args.task, "policy": name, "n_train": len(train),
                      "n_eval": len(test), "threads": args.threads, **record["config"]}
        write_record("salf_policies", "cpu", f"{args.task}__{name}", run_config, metrics=record["metrics"],
                     cost=record["cost"], prov=provenance(seed=args.seed, data_sources={**train.sources, **test.sources}),
                     policy=record["policy"], losses=record["losses"])
        print(name, {k: record["metrics"].get(k) for k in ("accuracy", "macro_f1")},
              {k: record["cost"].get(k) for k in ("wall_s", "saving_analytic", "saving_measured_wall")}, flush=True)


if __name__ == "__main__":
    main()
