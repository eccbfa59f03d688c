"""SemAlign Table 1 (transfer into the target, four benchmarks) and the per-task budgets behind it
(the rows of SemAlign Tables 4-5), from ``results/semalign_transfer/<profile>/`` alone.

:func:`table` also renders Table 2's cells (``setting="finetuned"``, :mod:`.teacher_table`): one
cell is (row, task), mean ± sample std over seeds with the n behind it. :func:`semalign_table1`
writes ``semalign_table1_transfer.md``; :func:`side_by_side_html` shows a table beside the
published one in a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from semalign_core.experiments.budgets import TransferBudget, transfer_budget
from semalign_core.experiments.catalog import COLUMNS, get_setting
from semalign_core.profiles import Profile, get_profile
from semalign_core.report.markdown import frame_markdown, save_markdown
from semalign_core.report.method_info import default_lr, method_order
from semalign_core.report.published import published_markdown, published_spec
from semalign_core.report.results import PROFILE_PREFERENCE, read_records

FIGURE_NAME = "semalign_table1_transfer.md"
INTRO = (
    "# SemAlign Table 1: parametric knowledge transfer on four benchmarks\n\n"
    "Reproduced cells: mean ± sample std over seeds (%), n = benchmark examples evaluated per seed "
    "(greedy, zero-shot); each row `method` trains a fresh target on the transfer `train` split "
    "(`notebooks/03_semalign_transfer.ipynb`). `source`/`target`: the untransferred models.\n"
)


# --------------------------------------------------------------------------- records → cells


def load_records(profile: str, setting: str = "table1") -> list[dict]:
    """Every cell record of ``setting`` at ``profile`` (Table 1: ``<row>__<task>[__seed<s>].json``;
    Table 2: ``<teacher>__<row>__<task>[__seed<s>].json``; the untrained rows, evaluated once on
    the fixed items, carry no seed)."""
    pattern = "*__*.json" if setting == "table1" else "*__*__*.json"
    return read_records(get_setting(setting).experiment, profile, pattern)


def _cell(values: list[float], ns: list[int]) -> str:
    """ "mean (n=…)" for one seed, "mean ± sample std (n=…, k seeds)" for several, in %."""
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    n = "/".join(str(k) for k in sorted(set(ns)))
    if len(pct) == 1:
        return f"{mean:.1f} (n={n})"
    spread = math.sqrt(sum((p - mean) ** 2 for p in pct) / (len(pct) - 1))  # sample std over seeds
    return f"{mean:.1f} ± {spread:.1f} (n={n}, {len(pct)} seeds)"


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


def _cells(
    records: list[dict], setting: str, several: bool
) -> dict[tuple[str, str], tuple[list, list]]:
    """(row label, task) → (values, n per value) of the records that have a value."""
    cells: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for r in records:
        m = r["metrics"]
        if m.get("value") is None:
            continue
        vals, ns = cells.setdefault((_row_label(r, setting, several), r["task"]), ([], []))
        vals.append(m["value"])
        ns.append(m["n"])
    return cells


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
    records); cells "mean ± std over seeds (n=examples per seed)" in %, empty where no record
    exists. ``attrs``: caption, notes (chance levels, the teacher), seeds, profile."""
    s = get_setting(setting)
    records = _selected(profile, setting, methods, tasks, seeds)
    several = len({r.get("teacher") for r in records}) > 1
    cells = _cells(records, setting, several)
    rows = _rows(records, setting, several, (*s.reference_rows, *method_order()))
    present = {r["task"] for r in records}
    shown = [t for t in s.columns if setting == "table1" or t in present]
    frame = pd.DataFrame(
        {
            s.columns[t]: [_cell(*cells[(m, t)]) if (m, t) in cells else "" for m in rows]
            for t in shown
        },
        index=pd.Index(rows, name="method"),
    )
    frame.attrs["seeds"] = sorted({r["seed"] for r in records if r["seed"] is not None})
    frame.attrs["profile"] = profile
    frame.attrs["notes"] = [
        f"chance level: {s.columns[t]} {c:.0f}%"
        for t, c in s.chance.items()
        if setting == "table1" or t in present
    ]
    if setting == "table1":
        frame.attrs["caption"] = _table1_caption(profile, records, frame.attrs["seeds"])
    else:
        frame.attrs["caption"] = _table2_caption(profile, records, frame.attrs["seeds"])
        frame.attrs["notes"] += _teacher_notes(records)
    return frame


def _models(records: list[dict]) -> tuple[str, str]:
    models = sorted({(r["config"]["source"], r["config"]["target"]) for r in records})
    return models[0] if models else ("?", "?")


def _table1_caption(profile: str, records: list[dict], seeds: list[int]) -> str:
    src, tgt = _models(records)
    return (
        f"Reproduced Table 1, profile `{profile}`: {src} → {tgt}; seeds {seeds}; "
        "% (MMLU acc, GSM8K exact match, HumanEval/MBPP pass@1, greedy, zero-shot); "
        "mean ± sample std over seeds, n = benchmark examples per seed"
    )


def _table2_caption(profile: str, records: list[dict], seeds: list[int]) -> str:
    src, tgt = _models(records)
    teachers = sorted({r["teacher"] for r in records})
    return (
        f"Reproduced Table 2, profile `{profile}`: fine-tuned teacher "
        f"({', '.join(teachers)}; base {src}) → target {tgt}; training seeds {seeds}; "
        "% (SST-2: label-word log-likelihood accuracy on held-out dev sentences; "
        "HumanEval/MBPP: pass@1, greedy); methods: mean ± sample std over training seeds; "
        "teacher and target are untrained and the evaluation subset is fixed, "
        "so they are evaluated once"
    )


def _teacher_notes(records: list[dict]) -> list[str]:
    """What each teacher scored before its fine-tuning (from the teacher rows' records)."""
    src, _ = _models(records)
    notes = []
    for r in records:
        info = r["metrics"].get("teacher")
        if info and info.get("before") and info["before"].get("acc") is not None:
            notes.append(
                f"teacher {r['teacher']} on {r['task']}: base {src} scored "
                f"{100 * info['before']['acc']:.1f} (n={info['before']['n']}) "
                "before fine-tuning on "
                f"{info['n_train']} training examples ({info['steps']} steps)"
            )
    return notes


# --------------------------------------------------------------------------- Tables 4-5 rows


def _lr(budget: TransferBudget, method: str) -> float:
    return budget.method_config.get(method, {}).get("lr", default_lr(method))


def hyperparameter_table(prof: Profile, tasks: Sequence[str] = tuple(COLUMNS)) -> pd.DataFrame:
    """What Table 1's cells at ``prof`` train with, per task, in the rows of SemAlign Tables 4-5."""
    budgets = [transfer_budget(prof, t) for t in tasks]
    rows = {
        "alignment: SemAlign steps per stage (T4 steps)": [b.steps_per_stage for b in budgets],
        "alignment: attribution examples (T4 align size)": [b.n_extract for b in budgets],
        "alignment: SemAlign lr (T4)": [_lr(b, "semalign") for b in budgets],
        "training: epochs (T5)": [b.epochs for b in budgets],
        "training: train examples (T5 train size)": [b.n_train or "all" for b in budgets],
        "training: lr of Seeking / SFT / KL / hidden (T5)": [_lr(b, "seeking") for b in budgets],
        "evaluation: examples (None = whole split)": [b.eval_limit or "all" for b in budgets],
        "evaluation: max new tokens": [b.max_new_tokens for b in budgets],
    }
    text = {
        k: [f"{v:g}" if isinstance(v, float) else str(v) for v in vals] for k, vals in rows.items()
    }
    frame = pd.DataFrame(text, index=[COLUMNS[t] for t in tasks]).T
    frame.attrs["caption"] = (
        f"Per-task budgets at profile `{prof.name}` (each record's config holds the exact "
        "values; rows named after SemAlign Tables 4-5; `paper` uses the published "
        "per-task values)"
    )
    return frame


# --------------------------------------------------------------------------- pages


def side_by_side_html(
    ours: pd.DataFrame,
    published: pd.DataFrame,
    published_title: str = "Published (SemAlign paper, Table 1)",
) -> str:
    """Our table and the published one next to each other, each with its caption (for notebooks)."""

    def block(frame, title):
        notes = "".join(f"<br><small>{n}</small>" for n in frame.attrs.get("notes", []))
        return (
            f"<div style='margin-right:2em'><h4>{title}</h4>"
            f"<p><small>{frame.attrs.get('caption', '')}</small>{notes}</p>"
            f"{frame.to_html()}</div>"
        )

    return (
        "<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>"
        + block(ours, f"Reproduced (ours, profile {ours.attrs.get('profile', '?')})")
        + block(published, published_title)
        + "</div>"
    )


def reproduced_section(frame: pd.DataFrame, seeds_label: str) -> str:
    """One profile's table as Markdown: heading, caption, notes, the table (rows: "method")."""
    profile, seeds = frame.attrs["profile"], frame.attrs["seeds"]
    out = [
        f"\n## Reproduced: profile `{profile}` ({seeds_label} {seeds})\n\n",
        frame.attrs["caption"] + ".\n",
    ]
    out += [f"Note: {note}.\n" for note in frame.attrs["notes"]]
    return "".join(out) + "\n" + frame_markdown(frame, ["method"])


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
    "hyperparameter_table",
    "load_records",
    "reproduced_section",
    "semalign_table1",
    "semalign_table1_markdown",
    "side_by_side_html",
    "table",
]
