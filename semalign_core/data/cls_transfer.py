"""Classification tasks as transfer data: records in the evaluation's own prompt format.

The transfer methods train on ``{"messages": [user, assistant]}`` records. For a classification
task the user turn is the lm-eval prompt of ``semalign_cls_<task>`` (the "harness" style of
:mod:`semalign_core.data.prompts`: e.g. ``"Review: {text}\\nSentiment:"``) and the assistant turn
is the gold label word; rendered with ``prompt_style="plain"``
(:func:`~semalign_core.data.formatting.build_sft_example`) that is ``prompt + " " + label_word``,
the very continuation the evaluation scores by log-likelihood. So training and evaluation see the
same text and the same tokens.

Where the training data comes from (``_pool_spec``):

* a task with a labelled ``train`` file trains on it and is evaluated on its usual split;
* ``sst2`` has no train file here (the suite's ``sst2/train`` was not copied; its test file is
  unlabelled), so its 872 dev sentences are partitioned: ``dev_subsample`` (256, a subset of
  dev) is **held out for evaluation**, and the other 616 dev sentences are the training pool.
  Texts are compared after normalisation; a held-out sentence never reaches training.

The pool is cut once, with a fixed seed, into an ``extract`` part (attribution, Seeking's seed
examples) and a ``train`` part; :func:`load_cls_transfer` subsets a part with the data layer's
rule (``limit``, ``seed``).
"""

from __future__ import annotations

import random
import re

from semalign_core.data.benchmarks import Split, make_split
from semalign_core.data.classification import (
    CLASSIFICATION_TASKS,
    CLS_EVAL_SPLIT,
    load_classification,
)
from semalign_core.data.prompts import format_cls_prompt
from semalign_core.errors import InvalidParameterError

CLS_PARTS = ("extract", "train")
N_EXTRACT = 64  # records of the pool kept for attribution (never trained on by SFT-style methods)
POOL_SEED = 0  # the cut of the pool into extract/train is fixed: it is part of the data, not a run


# task -> (pool split, split held out for evaluation whose texts are removed from the pool, or None)
def _pool_spec(task: str) -> tuple[str, str | None]:
    spec = CLASSIFICATION_TASKS[task]
    if "train" in spec.labeled_splits:
        return "train", None
    if task == "sst2":
        return "dev", "dev_subsample"
    raise InvalidParameterError(
        f"classification task {task!r} has no labelled training data here; "
        f"tasks with one: {', '.join(cls_transfer_tasks())}"
    )


def cls_transfer_tasks() -> tuple[str, ...]:
    """Classification tasks usable for transfer (a train file, or sst2's dev partition)."""
    return tuple(
        t for t, s in CLASSIFICATION_TASKS.items() if "train" in s.labeled_splits or t == "sst2"
    )


def eval_split(task: str) -> str:
    """The split the evaluation of a transfer run must read (disjoint from the training pool)."""
    held_out = _pool_spec(task)[1]
    return held_out or CLS_EVAL_SPLIT[task]


def eval_task_options(task: str) -> dict[str, dict]:
    """``evaluate(..., task_options=...)`` so ``semalign_cls_<task>`` reads :func:`eval_split`."""
    return {f"semalign_cls_{task}": {"split": eval_split(task)}}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def cls_record(task: str, rec: dict) -> dict:
    """A classification record as a transfer record (messages) with its label and text."""
    prompt = format_cls_prompt(rec["text"], task, "harness")  # the evaluation's own prompt
    word = CLASSIFICATION_TASKS[task].label_words[rec["label"]]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": word}]
    return {
        "messages": messages,
        "prompt": prompt,
        "completion": word,
        "label": rec["label"],
        "text": rec["text"],
    }


def load_cls_transfer(
    task: str, part: str, limit: int | None = None, seed: int | None = None
) -> Split:
    """Records of ``part`` ("extract" or "train") of ``task``'s training pool, as transfer
    records."""
    if task not in CLASSIFICATION_TASKS:
        raise InvalidParameterError(
            f"unknown classification task {task!r}; choose one of {', '.join(cls_transfer_tasks())}"
        )
    if part not in CLS_PARTS:
        raise InvalidParameterError(f"unknown part {part!r}; choose one of {', '.join(CLS_PARTS)}")
    pool_split, held_out = _pool_spec(task)
    pool = load_classification(task, pool_split)
    sources = dict(pool.sources)
    records = list(pool.records)
    if held_out is not None:
        heldout = load_classification(task, held_out)
        sources.update(heldout.sources)
        banned = {_norm(r["text"]) for r in heldout.records}
        records = [r for r in records if _norm(r["text"]) not in banned]
    order = list(range(len(records)))
    random.Random(POOL_SEED).shuffle(order)
    n_extract = min(N_EXTRACT, len(records) // 4)
    chosen = sorted(order[:n_extract]) if part == "extract" else sorted(order[n_extract:])
    out = [cls_record(task, records[i]) for i in chosen]
    return make_split(f"classification-transfer/{task}", part, out, sources, limit, seed)


__all__ = [
    "CLS_PARTS",
    "N_EXTRACT",
    "cls_record",
    "cls_transfer_tasks",
    "eval_split",
    "eval_task_options",
    "load_cls_transfer",
]
