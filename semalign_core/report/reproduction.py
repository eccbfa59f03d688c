"""The reproduction check: a fresh run's numbers set beside the committed ones, cell by cell.

``make reproduce`` computes every number afresh into a run folder (the committed ``results/`` are
not reused unless asked, ``REUSE=true``); :func:`compare_results` then pairs each record of the
run with the committed record of the same experiment, profile and run name, and every scored
number of the pair becomes one row:

- the committed value with its 95 % interval (bootstrap over the evaluated items,
  :func:`semalign_core.report.comparisons.score_interval`), the reproduced value, their difference;
- the **tolerance**: the half-width of the committed value's interval (the larger side), i.e. how
  far another draw of the same items could move the number; a number is *reproduced* when the
  difference is within it, *identical* when every per-item score is the same;
- whether the two records were made with the same configuration (config hash): a committed number
  made with another configuration (older code, other budgets) is not the same experiment.

Scored numbers are the headline metric of every record with per-item scores and each of its
secondary metrics with per-item values (reference NLL / bits per byte). A record without per-item
scores (analyses: deviations, eof, CKA) is compared as a whole: identical when every number in its
``metrics`` agrees to 1e-9 relative, *close* within 1e-3 (the floating-point noise of another
thread count or summation order), else *differs*, with the largest relative difference shown (no
interval to derive a tolerance from). Costs (wall time, memory, also where an analysis keeps them
among its metrics) and provenance are never compared: they belong to the machine. The timing
repeats hold costs only and are skipped.

The check is stored as a record, ``results/reproduction/<profile>/check.json`` (so a run folder
imported from elsewhere carries its own), and rendered by :func:`reproduction_check` into
``figures/reproduction_check.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from semalign_core.experiments.catalog import SALF_TIMING
from semalign_core.paths import results_dir
from semalign_core.profiles import PROFILE_PREFERENCE
from semalign_core.records import write_json_atomic
from semalign_core.report import comparisons
from semalign_core.report.markdown import markdown_table, save_markdown
from semalign_core.report.results import read_records

CHECK = "reproduction"  # results/reproduction/<profile>/check.json
NOT_COMPARED = (SALF_TIMING,)  # costs only: their numbers belong to the machine
EXACT = 1e-9  # relative agreement of a number without an interval
# ... and the floating-point noise of another thread count or BLAS order (sums in another order)
CLOSE = 1e-3
VERDICTS = (
    "identical",
    "close",
    "reproduced",
    "outside tolerance",
    "differs",
    "reused",
    "not in this run",
    "new",
    "agrees with paper",
    "differs from paper",
    "other models",
)
# The check's experiment key of rows set beside the published numbers (profiles with no committed
# run, :mod:`semalign_core.report.published_check`): "paper: <experiment>".
PUBLISHED_PREFIX = "paper: "
RAW_METRICS = ("bits_per_byte", "nll")  # shown as they are; every other score in %


@dataclass(frozen=True)
class CheckRow:
    """One number of the check (fractions for scores; None where a side has no value)."""

    experiment: str
    run: str
    metric: str
    committed: float | None
    committed_low: float | None
    committed_high: float | None
    reproduced: float | None
    tolerance: float | None
    verdict: str
    same_config: bool | None
    max_relative_difference: float | None = None

    @property
    def difference(self) -> float | None:
        if self.committed is None or self.reproduced is None:
            return None
        return self.reproduced - self.committed


def scored_numbers(record: dict) -> dict[str, dict]:
    """metric name → a record-shaped dict whose ``metrics`` hold that number's per-item scores:
    the headline metric and each secondary metric that has per-item values."""
    out = {}
    metrics = record.get("metrics") or {}
    if comparisons.items(record) is not None:
        out[metrics["metric"]] = record
    for name, secondary in sorted((metrics.get("secondary") or {}).items()):
        key = next(iter(secondary.get("all") or {}), None)
        shaped = {"metrics": {"items": secondary.get("items"), "metric": key}}
        if key is not None and comparisons.items(shaped) is not None:
            out[f"{name}.{key}"] = shaped
    return out


def _mean(shaped: dict) -> float:
    matrix = comparisons.score_matrix([shaped])
    return float(matrix[1].mean())


def _scored_row(experiment, run, metric, committed, reproduced, same_config) -> CheckRow:
    interval = comparisons.score_interval([committed])
    matrix_c, matrix_r = (
        comparisons.score_matrix([committed]),
        comparisons.score_matrix([reproduced]),
    )
    tolerance = max(interval.mean - interval.low, interval.high - interval.mean)
    value = float(matrix_r[1].mean())
    golds = [[item.get("gold") for item in comparisons.items(r)] for r in (committed, reproduced)]
    same_items = matrix_c[0] == matrix_r[0] and golds[0] == golds[1]
    if not same_items:
        verdict = "differs"  # other items: the numbers do not measure the same thing
    elif np.array_equal(matrix_c[1], matrix_r[1]):
        verdict = "identical"
    elif abs(value - interval.mean) <= tolerance + 1e-12:
        verdict = "reproduced"
    else:
        verdict = "outside tolerance"
    return CheckRow(
        experiment,
        run,
        metric,
        interval.mean,
        interval.low,
        interval.high,
        value,
        tolerance,
        verdict,
        same_config,
    )


def _numbers(value, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value, by its path (booleans and strings are not numbers)."""
    if isinstance(value, dict):
        return {k: v for key in value for k, v in _numbers(value[key], f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, x in enumerate(value) for k, v in _numbers(x, f"{prefix}/{i}").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def _is_cost(path: str) -> bool:
    """Whether a number's path names a cost (seconds, memory) kept among a record's metrics."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith("wall_s") or name.endswith("_mb")


def _relative(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def _whole_row(experiment, run, committed, reproduced, same_config) -> CheckRow:
    """A record without per-item scores: all its metrics at once."""
    a, b = (
        {k: v for k, v in _numbers(record.get("metrics")).items() if not _is_cost(k)}
        for record in (committed, reproduced)
    )
    if set(a) != set(b):
        worst, verdict = None, "differs"
    else:
        worst = max((_relative(a[k], b[k]) for k in a), default=0.0)
        verdict = "identical" if worst <= EXACT else "close" if worst <= CLOSE else "differs"
    return CheckRow(
        experiment, run, "all metrics", None, None, None, None, None, verdict, same_config, worst
    )


def compare_records(experiment: str, committed: dict, reproduced: dict) -> list[CheckRow]:
    """The rows of one committed record and its reproduction (the same run name)."""
    run = committed.get("run") or reproduced.get("run")
    same = committed.get("config_hash") == reproduced.get("config_hash")
    a, b = scored_numbers(committed), scored_numbers(reproduced)
    if committed.get("provenance") == reproduced.get("provenance") and same:
        # the committed record itself, copied into the run (REUSE=true): no evidence either way
        return [
            CheckRow(experiment, run, m, None, None, None, _mean(b[m]), None, "reused", True)
            for m in b
        ] or [CheckRow(experiment, run, "all metrics", *[None] * 5, "reused", True)]
    if not a and not b:
        return [_whole_row(experiment, run, committed, reproduced, same)]
    rows = []
    for metric in sorted(set(a) | set(b)):
        if metric in a and metric in b:
            rows.append(_scored_row(experiment, run, metric, a[metric], b[metric], same))
        else:
            side = "not in this run" if metric in a else "new"
            value = _mean(a.get(metric) or b[metric])
            committed_value, reproduced_value = (value, None) if metric in a else (None, value)
            rows.append(
                CheckRow(
                    experiment,
                    run,
                    metric,
                    committed_value,
                    None,
                    None,
                    reproduced_value,
                    None,
                    side,
                    same,
                )
            )
    return rows


def _records(folder: Path, experiment: str, profile: str) -> dict[str, dict]:
    """run name → record of ``folder/<experiment>/<profile>`` (files that are not records or whose
    metrics are empty, e.g. costs-only records, are left out)."""
    return {
        record["run"]: record
        for record in read_records(experiment, profile, "*.json", folder)
        if isinstance(record, dict) and "config_hash" in record and record.get("metrics")
    }


def compare_results(
    run_results: Path, reference: Path, profile: str, experiments: Iterable[str]
) -> list[CheckRow]:
    """Every row of the check of ``experiments`` at ``profile``: the run folder's records against
    the reference's, matched by run name (a run only one side has is ``new`` / ``not
    reproduced``)."""
    rows = []
    for experiment in experiments:
        if experiment in NOT_COMPARED:
            continue
        ours, theirs = (
            _records(run_results, experiment, profile),
            _records(reference, experiment, profile),
        )
        for run in sorted(set(ours) | set(theirs)):
            if run in ours and run in theirs:
                rows += compare_records(experiment, theirs[run], ours[run])
            else:
                verdict = "new" if run in ours else "not in this run"
                rows.append(
                    CheckRow(experiment, run, "record", None, None, None, None, None, verdict, None)
                )
    return rows


def check_path(folder: Path, profile: str) -> Path:
    return folder / CHECK / profile / "check.json"


def merge_check(folder: Path, profile: str, rows: Sequence[CheckRow], about: dict) -> Path:
    """Store ``rows`` in the check of ``folder`` at ``profile``, replacing the rows of their
    experiments (a notebook rerun replaces its own rows, others stay); ``about`` describes the run
    and the reference (commits, when)."""
    path = check_path(folder, profile)
    old = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    replaced = {row.experiment for row in rows}
    kept = [r for r in old["rows"] if r["experiment"] not in replaced]
    merged = sorted(
        kept + [asdict(r) for r in rows], key=lambda r: (r["experiment"], r["run"], r["metric"])
    )
    return write_json_atomic(path, {"profile": profile, "about": about, "rows": merged})


def note_import(path: Path, source: str, machines: Sequence[str]) -> Path:
    """Say in a stored check that its run was imported from ``source`` (a run folder computed
    elsewhere) and on which ``machines``; the report shows it beside the run's own line."""
    check = json.loads(path.read_text())
    about = check.setdefault("about", {})
    about["imported_from"] = source
    about["computed_on"] = list(machines)
    return write_json_atomic(path, check)


# --------------------------------------------------------------------------- rendering


def _format(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    raw = any(name in metric for name in RAW_METRICS)
    shown = value if raw else 100 * value
    return (
        f"{shown:+.3f}"
        if signed and raw
        else f"{shown:+.1f}"
        if signed
        else (f"{shown:.3f}" if raw else f"{shown:.1f}")
    )


def _committed(row: dict) -> str:
    value = _format(row["committed"], row["metric"])
    if row["committed_low"] is None:
        return value
    low, high = (
        _format(row["committed_low"], row["metric"]),
        _format(row["committed_high"], row["metric"]),
    )
    return f"{value} [{low}, {high}]"


def _verdict(row: dict) -> str:
    verdict = row["verdict"]
    if row.get("max_relative_difference") is not None and verdict in ("differs", "close"):
        verdict += f" (largest relative difference {row['max_relative_difference']:.2g})"
    if row["same_config"] is False:
        verdict += "; config differs"
    return verdict


def verdict_counts(verdicts: Iterable[str]) -> dict[str, int]:
    """How many rows have each verdict, in :data:`VERDICTS` order (verdicts with none left out)."""
    found = list(verdicts)
    return {v: found.count(v) for v in VERDICTS if v in found}


def _row_cells(r: dict) -> list[str]:
    return [
        r["experiment"].removeprefix(PUBLISHED_PREFIX),
        r["run"],
        r["metric"],
        _committed(r),
        _format(r["reproduced"], r["metric"]),
        _format(
            None
            if r["committed"] is None or r["reproduced"] is None
            else r["reproduced"] - r["committed"],
            r["metric"],
            signed=True,
        ),
        _format(r["tolerance"], r["metric"]),
        _verdict(r),
    ]


def _table(rows: list[dict], reference: str) -> str:
    header = ["experiment", "run", "number", reference, "reproduced", "Δ", "tolerance ±", "verdict"]
    return markdown_table(header, [_row_cells(r) for r in rows])


def _import_lines(about: dict) -> list[str]:
    if not about.get("imported_from"):
        return []
    machines = "; ".join(about.get("computed_on") or []) or "not recorded"
    return [f"Imported from `{about['imported_from']}` (computed on: {machines}).", ""]


def check_markdown(check: dict) -> str:
    """The check of one profile as a markdown section: counts, then every row (rows set beside
    the published numbers in a table of their own)."""
    rows = check["rows"]
    published = [r for r in rows if r["experiment"].startswith(PUBLISHED_PREFIX)]
    committed = [r for r in rows if not r["experiment"].startswith(PUBLISHED_PREFIX)]
    counts = verdict_counts(r["verdict"] for r in rows)
    about = check.get("about") or {}
    lines = [
        f"## Reproduction check: profile `{check['profile']}`",
        "",
        f"Run: {about.get('run', '–')}; committed: {about.get('reference', '–')}.",
        "",
        *_import_lines(about),
        "Of "
        + f"{len(rows)} numbers: "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + f"; {sum(r['same_config'] is False for r in rows)} made with another config.",
        "",
        "",
    ]
    text = "\n".join(lines)
    if committed:
        text += _table(committed, "committed [95% CI]")
    if published:
        text += (
            "\n### Against the published numbers (SemAlign paper)\n\n"
            "Published value as printed; reproduced: mean over training seeds; tolerance: the "
            "reproduced 95% interval's half-width plus half a unit of the paper's last printed "
            "digit; `other models`: this profile does not run the paper's models, shown for "
            "scale only.\n\n" + _table(published, "published")
        )
    return text + "\n"


HEADER = (
    "# Reproduction check: a fresh run against the committed results\n\n"
    "Each number of a fresh run (`make reproduce`, computed afresh into a run folder) beside the "
    "committed record of the same experiment, profile and run "
    "(`semalign_core.report.reproduction`). "
    "Scores in %, reference bits per byte as they are. Tolerance: the half-width of the committed "
    "value's 95% interval over its evaluated items (the larger side). Verdicts: `identical` (every "
    "per-item score the same), `reproduced` (|Δ| within the tolerance), `outside tolerance`, "
    "`differs` (another item set; for records without per-item scores, compared as a whole: any "
    f"number differing by more than {CLOSE:g} relative; `close`: every number within {CLOSE:g} "
    f"but not {EXACT:g}, the floating-point noise of another thread count; the wall times such "
    "records keep are not compared), `not in this run` / `new` (a record only "
    "the committed results / only the run has). `config differs`: the two records were made with "
    "another configuration (code or budgets changed), so not the same experiment. Costs and "
    "provenance are not compared; the timing repeats (costs only) are skipped. At `gpu-small` "
    "and `paper`, where nothing is committed, the run's SemAlign Table 1 and 2 numbers are set "
    "beside the published ones instead, in a table of their own "
    "(`semalign_core.report.published_check`).\n\n"
)


def reproduction_check(out_dir: Path) -> list[Path]:
    """``figures/reproduction_check.md`` from every profile's stored check (nothing without one)."""
    checks = [
        json.loads(check_path(results_dir(), p).read_text())
        for p in PROFILE_PREFERENCE
        if check_path(results_dir(), p).is_file()
    ]
    if not checks:
        return []
    text = HEADER + "\n".join(check_markdown(c) for c in checks)
    return save_markdown(text, Path(out_dir) / "reproduction_check.md")


__all__ = [
    "CHECK",
    "PUBLISHED_PREFIX",
    "CheckRow",
    "check_markdown",
    "check_path",
    "compare_records",
    "compare_results",
    "merge_check",
    "note_import",
    "reproduction_check",
    "scored_numbers",
    "verdict_counts",
]
