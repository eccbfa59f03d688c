"""The reproduction check against the papers' published numbers (profiles with no committed run).

At ``gpu-small`` and ``paper`` no committed run exists to compare with, so a run's SemAlign
Table 1 and Table 2 numbers are set beside the published ones (``results/paper``), one row per
published cell that the run computed:

- published value (as printed, in %) and reproduced value (mean over training seeds, with its 95 %
  interval over items and seeds, :func:`semalign_core.report.comparisons.score_interval`);
- **tolerance**: the reproduced interval's half-width (the larger side) plus half a unit of the
  published number's last printed digit (the paper's precision);
- verdict: ``agrees with paper`` (|Δ| within the tolerance), ``differs from paper``, or
  ``other models`` when the run's source/target (or teacher) are not the published ones, as at
  ``gpu-small``: its numbers are shown for scale and never judged against the paper's.

SALF publishes no numeric table (claims only), so it has no rows here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from semalign_core.experiments.catalog import FINETUNED_TEACHER, SEMALIGN_TRANSFER
from semalign_core.report import comparisons
from semalign_core.report.published import published_spec
from semalign_core.report.reproduction import PUBLISHED_PREFIX, CheckRow
from semalign_core.report.results import read_records

PAPER_MODELS = {"source": "llama2-13b-chat", "target": "llama2-7b-chat"}
COLUMNS = {"mmlu": "MMLU", "gsm": "GSM8K", "humaneval": "HumanEval", "mbpp": "MBPP"}
TABLE1_ROWS = {
    "target": "Llama2-7B-Chat",
    "source": "Llama2-13B-Chat",
    "seeking": "Seeking",
    "laten": "LaTen",
    "semalign": "SemAlign",
}
TEACHERS = {
    "codellama-13b-python": "CodeLlama-13B-Python",
    "wizardcoder-python-13b": "WizardCoder-13B-Python",
}
TABLE2_METHODS = {"seeking": "Seeking", "laten": "LaTen", "semalign": "SemAlign"}
TABLE2_TARGET = "Llama2-7B-Chat (target, as in Table 1)"
SOURCES = {
    SEMALIGN_TRANSFER: "table1_transfer",
    FINETUNED_TEACHER: "table2_finetuned_teachers",
}


def _teacher(record: dict) -> str | None:
    teacher = (record.get("config") or {}).get("teacher")
    return teacher.get("teacher") if isinstance(teacher, dict) else teacher


def _published_row(experiment: str, record: dict) -> str | None:
    """The published row name a record's cell belongs to (None: not in the published table)."""
    method = record.get("method")
    if experiment == SEMALIGN_TRANSFER:
        return TABLE1_ROWS.get(method)
    if method == "target":
        return TABLE2_TARGET
    teacher = TEACHERS.get(_teacher(record) or "")
    if teacher is None:
        return None
    if method == "teacher":
        return f"{teacher} (teacher)"
    return f"{teacher} -> {TABLE2_METHODS[method]}" if method in TABLE2_METHODS else None


def _paper_models(experiment: str, record: dict) -> bool:
    """Whether the record's models are the published cell's (a teacher counts for Table 2)."""
    config = record.get("config") or {}
    if config.get("target") != PAPER_MODELS["target"]:
        return False
    if experiment == SEMALIGN_TRANSFER:
        return config.get("source") == PAPER_MODELS["source"]
    return record.get("method") == "target" or _teacher(record) in TEACHERS


def half_unit(printed: float) -> float:
    """Half a unit of the last printed digit of a published number, in % (44.2 → 0.05)."""
    exponent = Decimal(repr(float(printed))).normalize().as_tuple().exponent
    return 0.5 * 10.0 ** min(int(exponent), 0)


def _cells(experiment: str, records: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """(published row, published column) → the run's records of that cell (one per seed)."""
    cells = defaultdict(list)
    for record in records:
        row = _published_row(experiment, record)
        column = COLUMNS.get((record.get("config") or {}).get("task"))
        if row is not None and column is not None:
            cells[(row, column)].append(record)
    return cells


def _row(experiment: str, row: str, column: str, published: float, records: list[dict]):
    interval = comparisons.score_interval(records)
    if interval is None:
        return None
    paper_models = all(_paper_models(experiment, r) for r in records)
    tolerance = max(interval.mean - interval.low, interval.high - interval.mean)
    tolerance += half_unit(published) / 100
    difference = interval.mean - published / 100
    if not paper_models:
        verdict = "other models"
    elif abs(difference) <= tolerance + 1e-12:
        verdict = "agrees with paper"
    else:
        verdict = "differs from paper"
    return CheckRow(
        PUBLISHED_PREFIX + experiment,
        f"{row} / {column}",
        records[0]["metrics"]["metric"],
        published / 100,
        None,
        None,
        interval.mean,
        tolerance,
        verdict,
        None,
    )


def compare_published(
    run_results: Path, profile: str, experiments: Iterable[str]
) -> list[CheckRow]:
    """The rows of ``experiments`` (SemAlign Tables 1 and 2) that the run folder computed at
    ``profile``, each beside its published number; experiments without a published table: none."""
    rows = []
    for experiment in experiments:
        if experiment not in SOURCES:
            continue
        spec = published_spec("semalign")[SOURCES[experiment]]
        records = [
            r
            for r in read_records(experiment, profile, "*.json", run_results)
            if isinstance(r, dict) and r.get("metrics")
        ]
        for (row, column), cell in sorted(_cells(experiment, records).items()):
            values = spec["rows"].get(row)
            if values is None or column not in spec["columns"]:
                continue
            checked = _row(experiment, row, column, values[spec["columns"].index(column)], cell)
            if checked is not None:
                rows.append(checked)
    return rows


__all__ = ["compare_published", "half_unit"]
