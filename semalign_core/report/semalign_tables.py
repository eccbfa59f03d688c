"""SemAlign Table 1 (transfer into the target, four benchmarks) and the per-task budgets behind it
(the rows of SemAlign Tables 4-5), from ``results/semalign_transfer/<profile>/`` alone.

:func:`table` also renders Table 2's cells (``setting="finetuned"``, :mod:`.teacher_table`). One
cell is (row, task): the mean score in % with its 95 % interval and the n behind it,
``31.5 [24.0, 39.0] (n=200, 3 seeds)`` (one seed: bootstrap over items; several: the seeds x items
interval), computed from the records' per-item scores by :mod:`.comparisons`. Each method row is
compared, on the same items, with ``target`` and with ``sft`` (paired differences): a cell whose
difference excludes zero is marked, and a second table lists every comparison. Multiple-choice
tasks add their label distributions (the gold labels of the subset: its majority rate) and a
one-label flag; classification tasks a macro-F1 column. Records made before per-item data was
kept render as before (mean ± sample std over seeds), without an interval or comparison.

:func:`semalign_table1` writes ``semalign_table1_transfer.md``; :func:`side_by_side_html` shows a
table beside the published one in a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from semalign_core.data.classification import CLASSIFICATION_TASKS
from semalign_core.experiments.budgets import TransferBudget, transfer_budget
from semalign_core.experiments.catalog import (
    CLS_TASKS,
    COLUMNS,
    PERCENT_METRICS,
    TransferSetting,
    get_setting,
)
from semalign_core.profiles import Profile, get_profile
from semalign_core.report import comparisons
from semalign_core.report.markdown import frame_markdown, markdown_table, save_markdown
from semalign_core.report.method_info import default_lr, method_order
from semalign_core.report.published import published_markdown, published_spec
from semalign_core.report.results import PROFILE_PREFERENCE, read_records
from semalign_core.statistics import label_distribution, majority_rate

FIGURE_NAME = "semalign_table1_transfer.md"
INTRO = (
    "# SemAlign Table 1: parametric knowledge transfer on four benchmarks\n\n"
    "Reproduced cells: mean % with its 95% interval, n = benchmark items evaluated per seed "
    "(the same fixed items for every row and seed; zero-shot; each caption says how each "
    "benchmark is decoded); each row `method` trains a fresh target on the transfer `train` "
    "split (`notebooks/03_semalign_transfer.ipynb`). `source`/`target`: the untransferred models.\n"
)
ABOVE_TARGET, BELOW_TARGET = "▲", "▼"
ABOVE_SFT, BELOW_SFT = "†", "‡"
SFT = "sft"
METRIC_NAMES = {
    "acc": "accuracy",
    "acc_norm": "acc_norm (log-likelihood per byte of the answer text)",
    "exact_match": "exact match",
    "pass@1": "pass@1",
    "bits_per_byte": "bits per byte of the reference solution (lower is better)",
}
DECODINGS = {
    "loglikelihood": "log-likelihood of each choice",
    "reference_loglikelihood": "teacher forcing",
}
COMPARISON_HEADER = (
    "row",
    "task",
    "vs",
    "difference (points)",
    "95% interval",
    "p",
    "significant",
    "items × seeds",
    "exact McNemar p",
)


# --------------------------------------------------------------------------- records → cells


def load_records(profile: str, setting: str = "table1") -> list[dict]:
    """Every cell record of ``setting`` at ``profile`` (Table 1: ``<row>__<task>[__seed<s>].json``;
    Table 2: ``<teacher>__<row>__<task>[__seed<s>].json``; the untrained rows, evaluated once on
    the fixed items, carry no seed)."""
    pattern = "*__*.json" if setting == "table1" else "*__*__*.json"
    return read_records(get_setting(setting).experiment, profile, pattern)


def seeds_cell(values: list[float], ns: list[int]) -> str:
    """Without per-item data: "mean (n=…)" for one seed, "mean ± sample std (n=…, k seeds)" for
    several, in %."""
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    n = "/".join(str(k) for k in sorted(set(ns)))
    if len(pct) == 1:
        return f"{mean:.1f} (n={n})"
    spread = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1))  # sample std over seeds
    return f"{mean:.1f} ± {spread:.1f} (n={n}, {len(pct)} seeds)"


def clip(value: float, low: float, high: float) -> float:
    """An interval bound shown within the range the quantity can take (the seed term of a
    several-seed interval is symmetric and may reach past it)."""
    return min(high, max(low, value))


def interval_cell(interval, percent: bool = True) -> str:
    """The cell "mean [low, high] (n=items[, k seeds])": in % with the bounds within [0, 100], or
    as is (bits per byte, 3 decimals)."""
    seeds = f", {interval.n_seeds} seeds" if interval.n_seeds > 1 else ""
    if not percent:
        low, high = max(0.0, interval.low), interval.high
        return f"{interval.mean:.3f} [{low:.3f}, {high:.3f}] (n={interval.n}{seeds})"
    low, high = (100 * clip(b, 0.0, 1.0) for b in (interval.low, interval.high))
    return f"{100 * interval.mean:.1f} [{low:.1f}, {high:.1f}] (n={interval.n}{seeds})"


def with_secondary(records: list[dict]) -> list[dict]:
    """``records`` and, for each secondary metric a record holds (``metrics["secondary"]``: cloze
    MMLU, reference bits per byte), a view of the record as a cell of that metric's column: its
    ``task`` is the column key and its ``metrics`` that metric's part (same items, same seed),
    so every cell, interval and paired comparison treats it like a task of its own."""
    views = [
        {**r, "task": key, "metrics": part}
        for r in records
        for key, part in (r["metrics"].get("secondary") or {}).items()
    ]
    return records + views


def _percent_columns(records: list[dict]) -> set[str]:
    """Column keys whose metric is a share (shown in %); the others are shown as they are."""
    return {r["task"] for r in records if r["metrics"].get("metric") in PERCENT_METRICS}


def _row_label(record: dict, setting: str, several_teachers: bool) -> str:
    if setting == "table1" or not several_teachers or record["method"] == "target":
        return record["method"]
    return f"{record['teacher']} → {record['method']}"


def _rows(records: list[dict], setting: str, several: bool, order: tuple[str, ...]) -> list[str]:
    """Row labels: the reference rows, then the methods in ``order`` (unknown ones last, sorted);
    with several teachers the target first, then each teacher's block."""
    rank = {m: i for i, m in enumerate(order)}
    keys = {}
    for r in records:
        teacher = "" if r["method"] == "target" or not several else (r.get("teacher") or "")
        keys[_row_label(r, setting, several)] = (
            teacher,
            rank.get(r["method"], len(rank)),
            r["method"],
        )
    return sorted(keys, key=keys.__getitem__)


def _selected(profile: str, setting: str, methods, tasks, seeds) -> list[dict]:
    """The setting's records at ``profile`` restricted to ``methods`` (reference rows always kept),
    ``tasks`` and ``seeds`` (seed-independent rows always kept); None keeps all."""
    reference_rows = get_setting(setting).reference_rows
    return [
        r
        for r in load_records(profile, setting)
        if r.get("setting", "table1") == setting
        and (methods is None or r["method"] in (*reference_rows, *methods))
        and (tasks is None or r["task"] in tasks)
        and (seeds is None or r["seed"] is None or r["seed"] in seeds)
    ]


def _target_once(records: list[dict], s: TransferSetting) -> list[dict]:
    """``records`` with one record per task of the seed-independent target row: the teachers'
    target records are one evaluation of the same model (copies, ``reused_from``), never seeds.
    Kept: an original before a copy, then the first teacher by name."""
    once = [r for r in records if r["method"] == s.target_row and r["seed"] is None]
    kept: dict[str, dict] = {}
    for r in sorted(once, key=lambda r: (bool(r.get("reused_from")), r.get("teacher") or "")):
        kept.setdefault(r["task"], r)
    dropped = {id(r) for r in once} - {id(r) for r in kept.values()}
    return [r for r in records if id(r) not in dropped]


def _current_evaluation(records: list[dict]) -> tuple[list[dict], int]:
    """The records evaluated like the newest record of their task (same ``config["eval"]``), and
    how many others were left out: a results folder may still hold records of an older protocol
    (e.g. a per-seed evaluation subset), which must not be averaged or paired with new ones."""
    newest: dict[str, dict] = {}
    for r in records:
        created = r.get("provenance", {}).get("created", "")
        if r["task"] not in newest or created > newest[r["task"]][0]:
            newest[r["task"]] = (created, r.get("config", {}).get("eval"))
    kept = [r for r in records if r.get("config", {}).get("eval") == newest[r["task"]][1]]
    return kept, len(records) - len(kept)


def _groups(records: list[dict], setting: str, several: bool) -> dict[tuple[str, str], list]:
    """(row label, task) → the records of that cell that have a value (one per seed)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["metrics"].get("value") is None:
            continue
        groups.setdefault((_row_label(r, setting, several), r["task"]), []).append(r)
    return groups


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of a table: ``row`` minus ``vs`` on ``task``'s items."""

    row: str
    task: str  # task key
    vs: str
    result: object  # semalign_core.statistics.PairedDifference (fractions)

    @property
    def mark(self) -> str:
        """▲/▼ against the target, †/‡ against SFT; "" unless the interval excludes zero (and
        for the comparisons only listed below a table: with a setting's ``compare_with`` rows)."""
        if not self.result.significant:
            return ""
        above = self.result.difference > 0
        if self.vs == SFT or self.vs.endswith(f"→ {SFT}"):
            return ABOVE_SFT if above else BELOW_SFT
        if self.vs == "target":
            return ABOVE_TARGET if above else BELOW_TARGET
        return ""


def _row_method(label: str, groups: dict) -> tuple[str | None, str | None]:
    """(method, teacher) of a row label, from any of its records with a value (None, None when
    it has none)."""
    record = next((recs[0] for (row, _), recs in groups.items() if row == label), None)
    return (None, None) if record is None else (record["method"], record.get("teacher"))


def _comparisons(
    groups: dict, rows: list[str], tasks: list[str], s: TransferSetting, several: bool
) -> list[Comparison]:
    """Every row but the target against the target; every trained row but SFT against the SFT
    row of its teacher and against the setting's ``compare_with`` rows; per task in column order,
    rows in table order. Pairs without items (old records) are left out."""
    out = []
    for row in rows:
        method, teacher = _row_method(row, groups)
        if method is None or method == s.target_row:
            continue
        sft = _row_label({"method": SFT, "teacher": teacher}, s.name, several)
        for task in tasks:
            if (row, task) not in groups:
                continue
            versus = [s.target_row]
            if method not in s.reference_rows and method != SFT:
                versus += [sft, *(r for r in s.compare_with if r != method)]
            for vs in versus:
                if (vs, task) not in groups:
                    continue
                result = comparisons.compare(groups[(row, task)], groups[(vs, task)])
                if result is not None:
                    out.append(Comparison(row, task, vs, result))
    return out


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _comparison_row(c: Comparison, columns: dict[str, str], percent: bool = True) -> list[str]:
    r = c.result
    if percent:
        interval = f"[{points(clip(r.low, -1.0, 1.0))}, {points(clip(r.high, -1.0, 1.0))}]"
    else:
        interval = f"[{r.low:+.3f}, {r.high:+.3f}]"
    return [
        c.row,
        columns.get(c.task, c.task),
        c.vs,
        points(r.difference) if percent else f"{r.difference:+.3f}",
        interval,
        _p(r.p_value),
        "yes" if r.significant else "no",
        f"{r.n} × {r.n_seeds}",
        _p(r.mcnemar_p),
    ]


# --------------------------------------------------------------------------- labels


def label_names(task: str, n_choices: int) -> tuple[str, ...]:
    """Names of a multiple-choice task's choices: MMLU's letters, a classification task's label
    words, else the choice indices."""
    if task.startswith("mmlu"):
        return tuple(comparisons.LETTERS[:n_choices])
    if task in CLS_TASKS and task in CLASSIFICATION_TASKS:
        return tuple(CLASSIFICATION_TASKS[task].label_words)
    return tuple(str(i) for i in range(n_choices))


def _n_choices(records: list[dict]) -> int | None:
    """How many choices a multiple-choice task's items have (None: not multiple choice)."""
    for r in records:
        if _decoding_method(r) != "loglikelihood":
            continue
        found = comparisons.items(r)
        if found and isinstance(found[0].get("prediction"), list):
            return len(found[0]["prediction"])
    return None


def _pct(share: float) -> str:
    return f"{100 * share:.1f}"


def _task_labels(groups: dict, rows: list[str], task: str, column: str) -> dict | None:
    """One multiple-choice task's label table (per row: share of each predicted label, pooled
    over seeds, and the one-label flag; last, the gold labels of the items), its majority-rate
    note and the rows' flags; None when no row has multiple-choice items."""
    task_records = [r for (_, t), recs in groups.items() if t == task for r in recs]
    n_choices = _n_choices(task_records)
    if n_choices is None:
        return None
    names = label_names(task, n_choices)
    summaries = {
        row: comparisons.label_summary(groups[(row, task)], names)
        for row in rows
        if (row, task) in groups
    }
    summaries = {row: s for row, s in summaries.items() if s is not None}
    gold = comparisons.gold_labels(_reference_first(groups, rows, task))
    if not summaries or gold is None:
        return None
    gold = [comparisons.name(names, g) for g in gold]
    header = ["row", *names, "predictions", "flag"]
    body = [
        [
            row,
            *(_pct(s.distribution.shares.get(n, 0.0)) for n in names),
            str(s.distribution.n),
            s.flag,
        ]
        for row, s in summaries.items()
    ]
    golds = label_distribution(gold, names)
    rate = majority_rate(gold)
    body.append(
        [
            "gold (these items)",
            *(_pct(golds.shares.get(n, 0.0)) for n in names),
            str(golds.n),
            f"majority rate {_pct(rate)}",
        ]
    )
    shares = ", ".join(f"{n} {_pct(golds.shares.get(n, 0.0))}%" for n in names)
    note = (
        f"{column} items: majority-label rate {_pct(rate)}% (gold `{golds.top_label}`, "
        f"n={golds.n}; gold shares {shares}): always answering `{golds.top_label}` scores "
        "that on this subset"
    )
    return {
        "task": task,
        "title": (
            f"{column}: predicted labels, % of all predictions (pooled over seeds; the choice "
            "of highest log-likelihood), and the gold labels of these items"
        ),
        "header": header,
        "rows": body,
        "note": note,
        "flags": {row: s.flag for row, s in summaries.items()},
    }


def _reference_first(groups: dict, rows: list[str], task: str) -> list[dict]:
    """A task's records, the untrained rows' (evaluated once) first."""
    ordered = sorted(rows, key=lambda row: row not in ("target", "source", "teacher"))
    return [r for row in ordered if (row, task) in groups for r in groups[(row, task)]]


def _macro_f1(records: list[dict]) -> str:
    """Mean macro-F1 (%) over the cell's seeds; "" when the records have none."""
    values = [r["metrics"].get("all", {}).get("macro_f1") for r in records]
    values = [v for v in values if v is not None]
    return _pct(sum(values) / len(values)) if values else ""


# --------------------------------------------------------------------------- the frame


def table(
    profile: str,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    setting: str = "table1",
) -> pd.DataFrame:
    """The setting's table of ``profile`` from its records: rows reference rows, then methods;
    columns the tasks (Table 1: always MMLU, GSM8K, HumanEval, MBPP; Table 2: the tasks that have
    records; a classification task adds its macro-F1 column); cells "mean [95% interval]
    (n=items, k seeds)" in %, marked where a paired comparison excludes zero, and "mean ± std"
    for records without per-item data; empty where no record exists.

    ``attrs``: caption, notes (chance levels or majority rates, the teacher), legend (the marks),
    comparisons (rows of :data:`COMPARISON_HEADER`), label_tables (per multiple-choice task:
    title, header, rows), seeds, profile."""
    s = get_setting(setting)
    records, older = _current_evaluation(_selected(profile, setting, methods, tasks, seeds))
    records = with_secondary(_target_once(records, s))
    several = len({r.get("teacher") for r in records}) > 1
    groups = _groups(records, setting, several)
    own = method_order() if s.rows is None else (*s.copies, *s.rows)
    rows = _rows(records, setting, several, (*s.reference_rows, *own))
    present = {r["task"] for r in records}
    always = s.columns if setting == "table1" else ()
    shown = [t for t in s.all_columns if t in always or t in present]
    percent = _percent_columns(records) | (set(s.columns) - present)
    intervals = {key: comparisons.score_interval(recs) for key, recs in groups.items()}
    compared = _comparisons(groups, rows, shown, s, several)
    marks: dict[tuple[str, str], str] = {}
    for c in compared:
        marks[(c.row, c.task)] = marks.get((c.row, c.task), "") + c.mark
    label_tables = {t: _task_labels(groups, rows, t, s.all_columns[t]) for t in shown}
    label_tables = {t: lt for t, lt in label_tables.items() if lt is not None}

    def cell(row: str, task: str) -> str:
        if (row, task) not in groups:
            return ""
        recs, interval = groups[(row, task)], intervals[(row, task)]
        if interval is None:
            return seeds_cell(
                [r["metrics"]["value"] for r in recs], [r["metrics"]["n"] for r in recs]
            )
        extra = [marks.get((row, task), "")]
        if task in label_tables:
            extra.append(label_tables[task]["flags"].get(row, ""))
        return " ".join([interval_cell(interval, task in percent), *(e for e in extra if e)])

    titles = s.all_columns
    columns: dict[str, list[str]] = {}
    for t in shown:
        columns[titles[t]] = [cell(row, t) for row in rows]
        if t in CLS_TASKS:
            columns[f"{s.columns[t]} macro-F1"] = [
                _macro_f1(groups.get((row, t), [])) for row in rows
            ]
    frame = pd.DataFrame(columns, index=pd.Index(rows, name="method"))
    frame.attrs["seeds"] = sorted({r["seed"] for r in records if r["seed"] is not None})
    frame.attrs["profile"] = profile
    frame.attrs["notes"] = _notes(s, shown, label_tables, intervals)
    if older:
        frame.attrs["notes"].append(
            f"{older} older record(s) evaluated under another protocol left out."
        )
    frame.attrs["comparisons"] = [
        _comparison_row(c, s.all_columns, c.task in percent) for c in compared
    ]
    frame.attrs["label_tables"] = [
        {k: lt[k] for k in ("title", "header", "rows")} for lt in label_tables.values()
    ]
    lower = sorted(t for t in shown if t not in percent)
    frame.attrs["legend"] = _legend(len(compared), bool(label_tables), lower)
    caption = CAPTIONS[setting]
    frame.attrs["caption"] = caption(
        profile, records, frame.attrs["seeds"], shown, cells_text(intervals)
    )
    if setting != "table1":
        frame.attrs["notes"] += _teacher_notes(records)
    return frame


def _notes(s: TransferSetting, shown: list[str], label_tables: dict, intervals: dict) -> list[str]:
    """Chance levels (a classification task with items: its subset's majority rate instead),
    every multiple-choice task's majority rate, and whether some cells lack an interval."""
    notes = []
    titles = s.all_columns
    for t, c in s.chance.items():
        if t in shown and not (t in CLS_TASKS and t in label_tables):
            notes.append(f"chance level: {titles[t]} {c:.0f}%")
    notes += [label_tables[t]["note"] for t in shown if t in label_tables]
    old = sorted(
        {titles.get(task, task) for (_, task), interval in intervals.items() if interval is None},
        key=list(titles.values()).index,
    )
    if old:
        notes.append(
            f"no interval available for the cells of {', '.join(old)} written `mean ± sample "
            "std`: their records were made before per-item scores were kept, so they show the "
            "spread over seeds only and enter no paired comparison"
        )
    return notes


def _legend(n_comparisons: int, flags: bool, lower: Sequence[str] = ()) -> str:
    """What the marks mean (empty when nothing was compared); ``lower``: columns where lower is
    better, whose marks still give the direction of the difference."""
    if not n_comparisons:
        return ""
    direction = (
        " In the bits-per-byte columns lower is better: there ▼ means the row assigns the "
        "reference solutions more probability than `target`."
        if lower
        else ""
    )
    flag = (
        f" `⚠ one label`: one label gets ≥ {100 * comparisons.ONE_LABEL_SHARE:.0f}% of the row's "
        "predictions (whatever its accuracy)."
        if flags
        else ""
    )
    return (
        f"Marks: {ABOVE_TARGET}/{BELOW_TARGET} the row's paired difference from `target` on the "
        f"same items has a 95% interval entirely above/below zero; {ABOVE_SFT}/{BELOW_SFT} the "
        f"same against `{SFT}`. An unmarked cell is not shown to differ from either, and no "
        "row is called better or worse than another unless marked. Each of the "
        f"{n_comparisons} comparisons (listed below the table) is at its own 95% level, "
        "without a correction for multiple comparisons: about 1 in 20 comparisons with no real "
        "difference is marked by chance. With one training seed an interval covers the "
        "sampling of items only: a mark then says that this trained model differs, not that "
        "the method would with another seed." + direction + flag
    )


def model_pair(records: list[dict]) -> tuple[str, str]:
    models = sorted({(r["config"]["source"], r["config"]["target"]) for r in records})
    return models[0] if models else ("?", "?")


def _decoding_method(record: dict) -> str | None:
    """The evaluation's own name of how answers were produced ("greedy", "loglikelihood",
    "reference_loglikelihood"), None when the record does not say."""
    decoding = record["metrics"].get("decoding")
    return decoding.get("method") if isinstance(decoding, dict) else decoding


def _decoding(record: dict) -> str:
    """How a record's answers were produced, from its metrics (the evaluation's own account),
    else from its config."""
    decoding = record["metrics"].get("decoding")
    if isinstance(decoding, dict):
        method = decoding.get("method")
        if method == "greedy" and decoding.get("max_new_tokens"):
            return f"greedy, ≤ {decoding['max_new_tokens']} new tokens"
        if method is not None:
            return DECODINGS.get(method, str(method))
    if isinstance(decoding, str):
        return DECODINGS.get(decoding, decoding)
    configured = record.get("config", {}).get("eval", {}).get("decoding")
    return f"{configured} (config)" if configured else "decoding not recorded"


def task_descriptions(s: TransferSetting, records: list[dict], shown: list[str]) -> str:
    """Per shown task with records: its metric and decoding, read from the records."""
    parts = []
    for t in shown:
        recs = [r for r in records if r["task"] == t]
        if not recs:
            continue
        metrics = sorted(
            {METRIC_NAMES.get(r["metrics"]["metric"], r["metrics"]["metric"]) for r in recs}
        )
        decodings = sorted({_decoding(r) for r in recs})
        splits = sorted(
            {r["config"]["eval"]["split"] for r in recs if r["config"].get("eval", {}).get("split")}
        )
        split = f", split {'/'.join(splits)}" if splits else ""
        title = s.all_columns.get(t, t)
        parts.append(f"{title}: {'/'.join(metrics)} by {' / '.join(decodings)}{split}")
    return "; ".join(parts) if parts else "no records"


INTERVALS = (
    "cells: mean [95% interval] (n = items per seed); one seed: percentile bootstrap over items; "
    "several seeds: the seeds × items interval (items resampled, plus a t term on the seed "
    "means; `semalign_core.statistics.score_interval`; bounds shown within [0, 100]); "
    f"{comparisons.N_BOOT:,} replicates, bootstrap seed {comparisons.BOOTSTRAP_SEED}"
)
NO_INTERVALS = "cells: mean ± sample std over seeds, n = items per seed (no per-item data)"


def cells_text(intervals: dict) -> str:
    """How the cells are written: with intervals, without (old records), or both."""
    have = [i is not None for i in intervals.values()]
    if have and all(have):
        return INTERVALS
    if not any(have):
        return NO_INTERVALS
    return INTERVALS + "; cells written `mean ± std` have no per-item data (see the note)"


def _table1_caption(
    profile: str, records: list[dict], seeds: list[int], shown: list[str], cells: str
) -> str:
    src, tgt = model_pair(records)
    return (
        f"Reproduced Table 1, profile `{profile}`: {src} → {tgt}; seeds {seeds}; "
        f"% ({task_descriptions(get_setting('table1'), records, shown)}; zero-shot); " + cells
    )


def _table2_caption(
    profile: str, records: list[dict], seeds: list[int], shown: list[str], cells: str
) -> str:
    src, tgt = model_pair(records)
    teachers = sorted({r["teacher"] for r in records})
    return (
        f"Reproduced Table 2, profile `{profile}`: fine-tuned teacher "
        f"({', '.join(teachers)}; base {src}) → target {tgt}; training seeds {seeds}; "
        f"% ({task_descriptions(get_setting('finetuned'), records, shown)}); "
        "teacher and target are untrained and the evaluation subset is fixed, so they are "
        "evaluated once; " + cells
    )


def _cross_family_caption(
    profile: str, records: list[dict], seeds: list[int], shown: list[str], cells: str
) -> str:
    _, tgt = model_pair(records)
    bases = sorted(
        {r["config"]["teacher"].get("base", "?") for r in records if r["method"] == "teacher"}
    )
    return (
        f"Cross-family transfer (beyond the papers), profile `{profile}`: teacher "
        f"{', '.join(bases) or '?'} fine-tuned on the task (another tokenizer and vocabulary) → "
        f"target {tgt}; training seeds {seeds}; % "
        f"({task_descriptions(get_setting('cross_family'), records, shown)}); `target`, `sft` "
        "and `semalign_same_family` (SemAlign from Table 2's same-family teacher, for scale) "
        "are Table 2's records of the same target on the same items; teacher and target are "
        "evaluated once; " + cells
    )


CAPTIONS = {
    "table1": _table1_caption,
    "finetuned": _table2_caption,
    "cross_family": _cross_family_caption,
}


def _teacher_notes(records: list[dict]) -> list[str]:
    """What each teacher scored before its fine-tuning (from the teacher rows' records)."""
    src, _ = model_pair(records)
    notes = []
    for r in records:
        info = r["metrics"].get("teacher")
        if info and info.get("before") and info["before"].get("acc") is not None:
            base = r["config"].get("teacher", {}).get("base", src)
            notes.append(
                f"teacher {r['teacher']} on {r['task']}: base {base} scored "
                f"{100 * info['before']['acc']:.1f} (n={info['before']['n']}) "
                "before fine-tuning on "
                f"{info['n_train']} training examples ({info['steps']} steps)"
            )
    return notes


# --------------------------------------------------------------------------- Tables 4-5 rows


def _lr(budget: TransferBudget, method: str) -> float:
    return budget.method_config.get(method, {}).get("lr", default_lr(method))


def _g(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _recorded_lr(records: list[dict], method: str, task: str) -> str | None:
    """The learning rate(s) ``method``'s records of ``task`` trained with, from their configs
    (``lr``, and any other ``*_lr`` of the method, e.g. ``map_lr``); None without records."""
    configs = [
        r["config"].get("transfer", {}).get("method_config", {})
        for r in records
        if r["method"] == method and r["task"] == task
    ]
    configs = [c for c in configs if "lr" in c]
    if not configs:
        return None
    texts = set()
    for c in configs:
        others = sorted(k for k in c if k.endswith("_lr") and k != "lr")
        extra = "".join(f" ({k} {_g(c[k])})" for k in others)
        texts.add(f"{_g(c['lr'])}{extra}")
    return " / ".join(sorted(texts))


def hyperparameter_table(
    prof: Profile, tasks: Sequence[str] = tuple(COLUMNS), records: list[dict] | None = None
) -> pd.DataFrame:
    """What Table 1's cells at ``prof`` train with, per task, in the rows of SemAlign Tables 4-5.

    The learning rates are one row per method, read from the configs of ``records`` (None: the
    profile's Table 1 records); a method and task without records shows the budget's value,
    marked ``*``."""
    records = load_records(prof.name) if records is None else records
    budgets = [transfer_budget(prof, t) for t in tasks]

    def lrs(method: str) -> list[str]:
        out = []
        for task, budget in zip(tasks, budgets):
            recorded = _recorded_lr(records, method, task)
            out.append(recorded if recorded is not None else f"{_g(_lr(budget, method))}*")
        return out

    rows = {
        "alignment: SemAlign steps per stage (T4 steps)": [b.steps_per_stage for b in budgets],
        "alignment: attribution examples (T4 align size)": [b.n_extract for b in budgets],
        "alignment: SemAlign lr (T4)": lrs("semalign"),
        "training: epochs (T5)": [b.epochs for b in budgets],
        "training: train examples (T5 train size)": [b.n_train or "all" for b in budgets],
    }
    for method in method_order():
        if method != "semalign":
            rows[f"training: lr of {method} (T5)"] = lrs(method)
    rows["evaluation: examples (None = whole split)"] = [b.eval_limit or "all" for b in budgets]
    rows["evaluation: max new tokens"] = [b.max_new_tokens for b in budgets]
    text = {
        k: [_g(v) if isinstance(v, float) else str(v) for v in vals] for k, vals in rows.items()
    }
    frame = pd.DataFrame(text, index=[COLUMNS[t] for t in tasks]).T
    frame.attrs["caption"] = (
        f"Per-task budgets at profile `{prof.name}` (each record's config holds the exact "
        "values; rows named after SemAlign Tables 4-5; `paper` uses the published "
        "per-task values); learning rates as each method's records trained with "
        "(`config.transfer.method_config`), `*` where no record exists yet: the budget's value"
    )
    return frame


# --------------------------------------------------------------------------- pages


def comparisons_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The paired comparisons behind ``frame``'s marks, one row each (columns
    :data:`COMPARISON_HEADER`)."""
    return pd.DataFrame(frame.attrs.get("comparisons", []), columns=list(COMPARISON_HEADER))


def side_by_side_html(
    ours: pd.DataFrame,
    published: pd.DataFrame,
    published_title: str = "Published (SemAlign paper, Table 1)",
) -> str:
    """Our table and the published one next to each other, each with its caption (for notebooks);
    below ours, its label tables and paired comparisons."""

    def block(frame, title):
        notes = "".join(f"<br><small>{n}</small>" for n in frame.attrs.get("notes", []))
        legend = frame.attrs.get("legend", "")
        legend = f"<br><small>{legend}</small>" if legend else ""
        extra = "".join(
            f"<p><small>{lt['title']}</small></p>"
            + pd.DataFrame(lt["rows"], columns=lt["header"]).to_html(index=False)
            for lt in frame.attrs.get("label_tables", [])
        )
        if frame.attrs.get("comparisons"):
            extra += "<p><small>Paired comparisons</small></p>" + comparisons_frame(frame).to_html(
                index=False
            )
        return (
            f"<div style='margin-right:2em'><h4>{title}</h4>"
            f"<p><small>{frame.attrs.get('caption', '')}</small>{notes}{legend}</p>"
            f"{frame.to_html()}{extra}</div>"
        )

    return (
        "<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>"
        + block(ours, f"Reproduced (ours, profile {ours.attrs.get('profile', '?')})")
        + block(published, published_title)
        + "</div>"
    )


def reproduced_section(frame: pd.DataFrame, seeds_label: str, heading: str = "Reproduced") -> str:
    """One profile's table as Markdown: heading, caption, notes, legend, the table (rows:
    "method"), then its label tables and the list of paired comparisons."""
    profile, seeds = frame.attrs["profile"], frame.attrs["seeds"]
    out = [
        f"\n## {heading}: profile `{profile}` ({seeds_label} {seeds})\n\n",
        frame.attrs["caption"] + ".\n",
    ]
    out += [f"Note: {note}.\n" for note in frame.attrs["notes"]]
    if frame.attrs.get("legend"):
        out.append(f"\n{frame.attrs['legend']}\n")
    out.append("\n" + frame_markdown(frame, ["method"]))
    for lt in frame.attrs.get("label_tables", []):
        out.append(f"\n{lt['title']} (profile `{profile}`):\n\n")
        out.append(markdown_table(lt["header"], lt["rows"]))
    if frame.attrs.get("comparisons"):
        out.append(
            f"\nPaired comparisons at profile `{profile}` (row minus vs, on the same items matched "
            "by id; a row evaluated once is compared with every seed of the other, two trained "
            "rows on their common seeds; difference in points, in bits per byte for the "
            "bits-per-byte columns; p: two-sided paired bootstrap; significant: the 95% "
            "interval excludes zero; exact McNemar p: one seed, 0/1 scores):\n\n"
        )
        out.append(markdown_table(COMPARISON_HEADER, frame.attrs["comparisons"]))
    return "".join(out)


def _hyperparameters(profile: str) -> str:
    """The per-task budgets behind a profile's Table 1 (rows of SemAlign Tables 4-5)."""
    frame = hyperparameter_table(get_profile(profile))
    return f"\n{frame.attrs['caption']}:\n\n" + frame_markdown(frame, ["setting"])


def _published_sections() -> str:
    spec = published_spec("semalign")
    out = []
    for key in ("table4_alignment", "table5_training"):
        out.append(f"\n## Published (SemAlign paper: {spec[key]['caption']})\n\n")
        out.append(published_markdown(spec[key], "setting"))
    pub = spec["table1_transfer"]
    out.append(f"\n## Published (SemAlign paper, Table 1: {pub['caption']})\n\n")
    out.append("Metrics: " + "; ".join(f"{k} {v}" for k, v in pub["metric"].items()) + ".\n\n")
    out.append(published_markdown(pub, "model / method (published)"))
    return "".join(out)


def semalign_table1_markdown() -> str | None:
    """Reproduced Table 1 of every profile with records (profile, n and seeds behind each number)
    and the published Table 1, labelled as such. None when no profile has transfer records."""
    profiles = [p for p in PROFILE_PREFERENCE if load_records(p)]
    if not profiles:
        return None
    sections = [reproduced_section(table(p), "seeds") + _hyperparameters(p) for p in profiles]
    return INTRO + "".join(sections) + _published_sections()


def semalign_table1(out_dir: Path) -> list[Path]:
    """``semalign_table1_transfer.md`` from results/semalign_transfer/ (nothing when no records)."""
    return save_markdown(semalign_table1_markdown(), Path(out_dir) / FIGURE_NAME)


__all__ = [
    "COMPARISON_HEADER",
    "Comparison",
    "cells_text",
    "clip",
    "comparisons_frame",
    "interval_cell",
    "model_pair",
    "points",
    "seeds_cell",
    "task_descriptions",
    "with_secondary",
    "hyperparameter_table",
    "label_names",
    "load_records",
    "reproduced_section",
    "semalign_table1",
    "semalign_table1_markdown",
    "side_by_side_html",
    "table",
]
