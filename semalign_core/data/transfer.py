"""The LaTen / SemAlign transfer splits: chat-format examples for attribution, alignment, training.

Files ``transfer-splits/<task>_<split>.jsonl`` (from Trae1ounG/Neural_Incompatibility). The
``extract`` split feeds attribution, ``align`` the alignment, ``train`` the transfer training;
the official test sets in :mod:`semalign_core.data.benchmarks` are for evaluation only.
"""

from __future__ import annotations

from semalign_core.data.benchmarks import Split, check_choice, make_split, read_jsonl
from semalign_core.errors import InvalidParameterError

TRANSFER_TASKS = ("gsm", "mmlu", "humaneval", "mbpp")
TRANSFER_SPLITS = ("extract", "align", "train")

# Fields kept beside ``messages`` when a record has them (mmlu records also carry ``category``).
_OPTIONAL_FIELDS = ("id", "dataset", "category")


def _transfer_record(row: dict, relpath: str) -> dict:
    """Keep messages (as plain role/content dicts) plus id/dataset/category when present."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParameterError(f"record without messages in {relpath}: {str(row)[:80]}")
    record = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    for key in _OPTIONAL_FIELDS:
        if key in row:
            record[key] = row[key]
    return record


def load_transfer(
    task: str, split: str, limit: int | None = None, seed: int | None = None
) -> Split:
    """Records {"messages": [{"role", "content"}, ...], "id"?, "dataset"?} of one transfer split."""
    check_choice("transfer task", task, TRANSFER_TASKS)
    check_choice("transfer split", split, TRANSFER_SPLITS)
    relpath = f"transfer-splits/{task}_{split}.jsonl"
    sources: dict[str, str] = {}
    records = [_transfer_record(r, relpath) for r in read_jsonl(relpath, sources)]
    return make_split(f"transfer/{task}", split, records, sources, limit, seed)
