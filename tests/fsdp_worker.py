"""Trains the smoke target with the real SFT / output-KL / hidden-distillation loop and writes
what the FSDP test compares (tests/test_fsdp.py): run alone (one process) or under
``torch.distributed.run`` (the launcher ``accelerate launch --multi_gpu`` calls), with
``WORLD_SIZE`` processes.

    python tests/fsdp_worker.py OUT.json METHOD TRAINABLE      (the weights: OUT.json.pt)
"""

from __future__ import annotations

import json
import os
import sys

import torch


def main(out: str, method: str, trainable: str) -> None:
    from semalign_core.baselines import controls
    from semalign_core.data import load_transfer
    from semalign_core.models.registry import load_model

    torch.set_num_threads(1)
    source = load_model("tiny-source", verbose=False)
    target = load_model("tiny-target", verbose=False)
    train = load_transfer("gsm", "align", limit=7).records  # steps of 4 and 3 examples
    common = dict(
        trainable=trainable,
        epochs=2,
        batch_size=4,
        micro_batch_size=1,
        lr=1e-3,
        max_length=40,
        progress=False,
    )
    if method == "sft":
        result = controls.sft(
            None, target.model, train, [], controls.SFTConfig(**common), target.tokenizer
        )
    elif method == "hidden_distill":
        config = controls.HiddenDistillConfig(**common, ce_weight=0.5, map_lr=3e-3)
        result = controls.hidden_distill(
            source.model, target.model, train, [], config, target.tokenizer
        )
    else:
        config = controls.OutputKLConfig(**common, ce_weight=0.5)
        result = controls.output_kl(source.model, target.model, train, [], config, target.tokenizer)
    if int(os.environ.get("RANK", "0")) == 0:
        stage = result.stages[0]
        maps = {f"maps.{k}": v for k, v in stage.get("maps", {}).items()}
        torch.save({**target.model.state_dict(), **maps}, f"{out}.pt")
        payload = {
            "losses": stage["losses"],
            "tokens": stage["tokens"],
            "flops": stage["flops"],
            "notes": result.notes,
        }
        with open(out, "w") as f:
            json.dump(payload, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
