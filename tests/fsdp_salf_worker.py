"""Trains the smoke SALF model with the real SALF loop (``salf/finetune.py``) under several
static policies and writes what the FSDP test compares (tests/test_fsdp.py): run alone (one
process) or under ``torch.distributed.run`` with ``WORLD_SIZE`` processes.

    python tests/fsdp_salf_worker.py OUT.json      (the weights: OUT.json.<run>.pt)
"""

from __future__ import annotations

import json
import os
import sys

import torch
from test_salf_finetune import TRAIN as SALF_TRAIN  # the worker's folder is on sys.path

# 9 examples (the SALF loop tests' 8 and one more): steps of 4 end with a one-example step, where
# the second process has none
TRAIN = [*SALF_TRAIN, {"text": "nothing happens for two hours", "label": 0}]
WORDS = ("negative", "positive")
UNEVEN_WORDS = ("bad", "very good indeed")  # 1 and 3 tokens


def runs():
    """(name, policy, config overrides, label words): every block; the embeddings and head too
    (the root FSDP unit trains); a frozen prefix of 2 blocks, cached in the second epoch. Steps
    of 4 split 2/2, and the last one 1/0 (a filler). Then with SGD and no clipping, where the
    update is proportional to the gradient, so a wrongly scaled share of the step (which AdamW
    would normalise away) shows in the weights: steps of 3 split 2/1, by examples, and for the
    LM loss by label tokens (answers of 1 and 3 tokens, so the two differ)."""
    from semalign_core.salf import policies

    sgd = {"optimizer": "sgd", "grad_clip": None, "batch_size": 3, "lr": 0.1}
    return [
        ("full", policies.FullFinetune(embeddings=False), {}, WORDS),
        ("full_embeddings", policies.FullFinetune(embeddings=True), {}, WORDS),
        ("eof2", policies.FixedEof(eof=2), {}, WORDS),
        ("eof2_sgd", policies.FixedEof(eof=2), sgd, WORDS),
        ("eof1_lm_sgd", policies.FixedEof(eof=1), {**sgd, "loss": "lm"}, UNEVEN_WORDS),
    ]


def main(out: str) -> None:
    from semalign_core.models.registry import load_model
    from semalign_core.salf import finetune as ft

    torch.set_num_threads(1)
    payload = {}
    for name, policy, overrides, words in runs():
        lm = load_model("tiny-source", verbose=False)
        config = ft.FinetuneConfig(**{**dict(epochs=2, batch_size=4, lr=1e-2, max_length=32,
                                              seed=0), **overrides})  # fmt: skip
        result = ft.finetune(
            lm.model, lm.tokenizer, TRAIN, TRAIN[:6], policy, config, label_words=words
        )
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save(lm.model.state_dict(), f"{out}.{name}.pt")
            keys = ("tokens", "real_tokens", "flops_analytic", "flops_full_analytic",
                    "cache_hits", "updated_params_steps")  # fmt: skip
            payload[name] = {
                "losses": result.losses,
                "metrics": {k: result.metrics.get(k) for k in ("accuracy", "n")},
                "optimizer_flops": result.cost["flops_components"]["optimizer"],
                **{k: result.cost[k] for k in keys},
            }
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(payload, f)


if __name__ == "__main__":
    main(sys.argv[1])
