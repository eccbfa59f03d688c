"""Per-item statistics of the transfer tables (SemAlign Tables 1-2), from the records alone.

A transfer record keeps its evaluated items in ``record["metrics"]["items"]``: one
``{"doc_id", "gold", "prediction", <metric>: score}`` per item, the same items in the same order
for every row and training seed of a profile. This module turns the records of one table cell
(a row and a task, one record per seed) into what the tables print, with
:mod:`semalign_core.statistics` doing every statistic:

- :func:`score_interval`: the mean score with its 95 % interval (one seed: bootstrap over items;
  several: seeds x items);
- :func:`compare`: a paired difference of two rows on the same items (matched by ``doc_id``; a row
  evaluated once is compared with every seed of the other, two trained rows pair their common
  seeds);
- :func:`label_summary`: for multiple choice (MMLU letters, SST-2 label words, scored by
  log-likelihood) the predicted label of each item (the choice of highest log-likelihood, as
  lm-eval's ``acc``), their distribution and the one-label flag; :func:`gold_labels` the gold.

Records made before per-item data was kept have no ``items``: every function here returns None for
them, and the tables print those cells without an interval. Every resampling uses
:data:`BOOTSTRAP_SEED`, so a table rebuilt from the same records is byte-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from semalign_core import statistics
from semalign_core.errors import InvalidParameterError

BOOTSTRAP_SEED = 0  # every interval and paired test of the tables: deterministic output
N_BOOT = statistics.DEFAULT_N_BOOT
LEVEL = 0.95
ONE_LABEL_SHARE = 0.9  # a row whose predictions give one label this share or more is flagged
LETTERS = "ABCD"  # MMLU's choices, in the order of the per-choice log-likelihoods


def items(record: dict) -> list[dict] | None:
    """The record's per-item data, None when it has none (a record made before it was kept) or
    when an item has no numeric score."""
    metrics = record.get("metrics") or {}
    found, metric = metrics.get("items"), metrics.get("metric")
    if not found or metric is None:
        return None
    for item in found:
        score = item.get(metric)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return None
        if not math.isfinite(score):
            return None
    return found


def _by_seed(records: Sequence[dict]) -> list[dict]:
    """Records in seed order (a seed-independent record, seed None, first)."""
    return sorted(records, key=lambda r: (r.get("seed") is not None, r.get("seed") or 0))


def score_matrix(records: Sequence[dict]) -> tuple[list[Hashable], np.ndarray] | None:
    """(item ids, ``scores[seed, item]``) of one cell's records, every seed's items put in the
    order of the first one's; None unless every record has items and all cover the same ids."""
    records = _by_seed(records)
    per_record = [items(r) for r in records]
    if not records or any(found is None for found in per_record):
        return None
    ids = [item["doc_id"] for item in per_record[0]]
    if len(set(ids)) != len(ids):
        return None
    golds = _golds(per_record[0])
    rows = []
    for record, found in zip(records, per_record):
        metric = record["metrics"]["metric"]
        score = {item["doc_id"]: float(item[metric]) for item in found}
        if len(score) != len(found) or set(score) != set(ids) or _golds(found) != golds:
            return None  # not the same items (an id is a position in the subset: check gold too)
        rows.append([score[i] for i in ids])
    return ids, np.asarray(rows, dtype=float)


def _golds(found: Sequence[dict]) -> dict:
    """doc id → its gold answer (as JSON text, so lists and numbers compare alike)."""
    return {item["doc_id"]: json.dumps(item.get("gold"), sort_keys=True) for item in found}


def score_interval(records: Sequence[dict]) -> statistics.ScoreInterval | None:
    """Mean score of one cell with its 95 % interval (fractions, not %); None without items."""
    matrix = score_matrix(records)
    if matrix is None:
        return None
    return statistics.score_interval(matrix[1], seed=BOOTSTRAP_SEED, n_boot=N_BOOT, level=LEVEL)


def _paired_records(a: Sequence[dict], b: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """The records of ``a`` and ``b`` a paired comparison uses: all of them when one side is an
    untrained row evaluated once (its records carry no seed), else the seeds both sides have."""
    a, b = _by_seed(a), _by_seed(b)
    if all(r.get("seed") is None for r in a) or all(r.get("seed") is None for r in b):
        return a, b
    common = {r.get("seed") for r in a} & {r.get("seed") for r in b}
    return [r for r in a if r.get("seed") in common], [r for r in b if r.get("seed") in common]


def compare(a: Sequence[dict], b: Sequence[dict]) -> statistics.PairedDifference | None:
    """Row ``a`` minus row ``b`` (fractions) on the same items, matched by ``doc_id``
    (:func:`semalign_core.statistics.paired_difference`); None when either lacks items, they share
    no training seed, or they were scored on different items."""
    a, b = _paired_records(a, b)
    if not a or not b:
        return None
    ma, mb = score_matrix(a), score_matrix(b)
    if ma is None or mb is None or _golds(items(a[0])) != _golds(items(b[0])):
        return None
    try:
        return statistics.paired_difference(
            ma[1],
            mb[1],
            seed=BOOTSTRAP_SEED,
            n_boot=N_BOOT,
            level=LEVEL,
            ids_a=ma[0],
            ids_b=mb[0],
        )
    except InvalidParameterError:  # different item sets: not comparable
        return None


# --------------------------------------------------------------------------- labels


def _choice(prediction) -> int | None:
    """The predicted choice of a multiple-choice item: the index of the highest log-likelihood
    (``prediction`` is one ``[loglikelihood, is_greedy]`` per choice); None otherwise."""
    if not isinstance(prediction, list) or not prediction:
        return None
    lls = []
    for choice in prediction:
        if not isinstance(choice, (list, tuple)) or len(choice) != 2:
            return None
        if isinstance(choice[0], bool) or not isinstance(choice[0], (int, float)):
            return None
        lls.append(float(choice[0]))
    return int(np.argmax(lls))


def predicted_labels(record: dict) -> list[int] | None:
    """Per item, the predicted choice index; None unless the record is multiple choice with
    items."""
    found = items(record)
    if found is None:
        return None
    labels = [_choice(item.get("prediction")) for item in found]
    return None if any(label is None for label in labels) else labels


def gold_labels(records: Sequence[dict]) -> list | None:
    """The gold labels of the items (the first record with items; every row shares them)."""
    for record in _by_seed(records):
        found = items(record)
        if found is not None:
            return [item["gold"] for item in found]
    return None


@dataclass(frozen=True)
class LabelSummary:
    """What one row predicts on a multiple-choice task, pooled over its seeds.

    ``distribution``: every prediction of every seed; ``flagged_seeds``: how many seeds give one
    label :data:`ONE_LABEL_SHARE` or more of their predictions, out of ``n_seeds``."""

    distribution: statistics.LabelDistribution
    flagged_seeds: int
    n_seeds: int

    @property
    def flag(self) -> str:
        """ "⚠ one label" (every seed), "⚠ one label (k/S seeds)", or ""."""
        if self.flagged_seeds == 0:
            return ""
        if self.flagged_seeds == self.n_seeds:
            return "⚠ one label"
        return f"⚠ one label ({self.flagged_seeds}/{self.n_seeds} seeds)"


def label_summary(records: Sequence[dict], labels: Sequence[Hashable]) -> LabelSummary | None:
    """The row's predicted labels (names from ``labels`` by choice index) and its one-label flag;
    None unless every record is multiple choice with items."""
    per_seed = [predicted_labels(r) for r in _by_seed(records)]
    if not per_seed or any(p is None for p in per_seed):
        return None
    named = [[name(labels, i) for i in p] for p in per_seed]
    flagged = sum(statistics.one_label_flag(p, ONE_LABEL_SHARE) for p in named)
    pooled = [label for p in named for label in p]
    return LabelSummary(statistics.label_distribution(pooled, labels), flagged, len(per_seed))


def name(labels: Sequence[Hashable], index) -> Hashable:
    """The name of choice ``index`` (itself when ``labels`` has no such index)."""
    return labels[index] if isinstance(index, int) and 0 <= index < len(labels) else index


__all__ = [
    "BOOTSTRAP_SEED",
    "LETTERS",
    "LEVEL",
    "N_BOOT",
    "ONE_LABEL_SHARE",
    "LabelSummary",
    "compare",
    "gold_labels",
    "items",
    "label_summary",
    "name",
    "predicted_labels",
    "score_interval",
    "score_matrix",
]
