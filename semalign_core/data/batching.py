"""Supervised fine-tuning records and examples → padded tensor batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from semalign_core.data.formatting import IGNORE_INDEX, build_sft_example
from semalign_core.errors import InvalidParameterError


def collate(examples: Sequence[dict], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad ``{"input_ids", "labels"}`` examples into (B, T) ``input_ids``,
    ``attention_mask`` and ``labels``.

    Right padding keeps every real token at the same position it has alone, so with a causal
    mask a padded batch gives each example the states it gets unbatched. Pad positions get
    ``pad_token_id`` (its value never matters: the attention mask hides it), mask 0 and label
    -100 (ignored by the loss).
    """
    if not examples:
        raise InvalidParameterError("cannot collate an empty list of examples")
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids, lab = e["input_ids"], e.get("labels", e["input_ids"])
        if len(lab) != len(ids):
            raise InvalidParameterError(f"example {i}: {len(ids)} input ids but {len(lab)} labels")
        input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.as_tensor(lab, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_batches(
    records: Sequence[dict],
    tokenizer,
    batch_size: int,
    max_length: int,
    style: str = "transfer",
    loss_on: str = "response",
) -> list[dict[str, Tensor]]:
    """Records with ``messages`` → padded batches in record order (see :func:`collate`)."""
    if not records:
        raise InvalidParameterError("no records to build batches from")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [
        build_sft_example(
            tokenizer, r["messages"], style=style, loss_on=loss_on, max_length=max_length
        )
        for r in records
    ]
    return [collate(examples[i : i + batch_size], pad) for i in range(0, len(examples), batch_size)]
