"""Tables and figures rebuilt from ``results/`` alone (no models): ``make figures``.

Reproduced numbers are always shown with the profile they come from; the papers' numbers are read
from ``results/paper/`` and labelled as published. Output is deterministic (sorted keys, fixed
formats), so rebuilding from the same results gives byte-identical files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from semalign_core.paths import REPO_ROOT, results_dir

FIGURES = REPO_ROOT / "figures"


PUBLISHED = REPO_ROOT / "results" / "paper"  # part of the artifact, not of a run's results


def _paper(paper: str) -> dict:
    return json.loads((PUBLISHED / f"{paper}_published.json").read_text())


def published_table(paper: str, table: str):
    """One published table as a DataFrame, its caption marking it as published."""
    import pandas as pd

    spec = _paper(paper)[table]
    frame = pd.DataFrame.from_dict(spec["rows"], orient="index", columns=spec["columns"])
    frame.attrs["caption"] = f"{spec['caption']} (published, {paper})"
    return frame


def save_markdown(text: str | None, path: Path) -> list[Path]:
    """Write one generated table (nothing when ``text`` is None: no records yet); [path] or []."""
    if text is None:
        return []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [path]


def _markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def model_statistics_table() -> str:
    """Table 3 beside the models each reproduced profile actually used."""
    out = ["# Model statistics (SemAlign Table 3)\n"]
    pub = _paper("semalign")["table3_models"]
    out.append("\n## Published (paper setting)\n\n")
    out.append(_markdown(["model", *pub["columns"]], [[m, *v] for m, v in pub["rows"].items()]))
    for path in sorted((results_dir() / "models").glob("*/model_stats.json")):
        record = json.loads(path.read_text())
        rows = [[name, s["heads"], s["layers"], s["hidden"], s["vocab"], f"{s['parameters'] / 1e6:.1f}M", s["origin"]]
                for name, s in sorted(record["metrics"]["models"].items())]
        out.append(f"\n## Reproduced: profile `{record['profile']}` (measured on the loaded models)\n\n")
        out.append(_markdown(["model", "heads", "layers", "dimension", "vocabulary", "parameters", "origin"], rows))
    return "".join(out)


# --------------------------------------------------------------------------- analysis figures

# A figure shows one profile: the largest that has results (the title names it).
PROFILE_PREFERENCE = ("paper", "gpu-small", "cpu", "smoke")


def _preferred_record(experiment: str, run: str) -> dict | None:
    for profile in PROFILE_PREFERENCE:
        path = results_dir() / experiment / profile / f"{run}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _salf_records(profile: str) -> list[dict]:
    paths = sorted((results_dir() / "salf_analysis" / profile).glob("*__*.json"))
    return [json.loads(p.read_text()) for p in paths]


def semalign_analysis_figures(out_dir: Path = FIGURES) -> list[Path]:
    """SemAlign Fig. 2 (fidelity) and Figs. 4-6 (CKA) from results/semalign_analyses/."""
    from semalign_core.report import plots

    written = []
    for run, name, draw in (("fidelity", "semalign_fig2_fidelity.png", plots.fidelity_figure),
                            ("cka", "semalign_fig4-6_cka.png", plots.cka_figure)):
        record = _preferred_record("semalign_analyses", run)
        if record is not None:
            written.append(plots.save_png(draw(record), Path(out_dir) / name))
    return written


def salf_eof_rows(records: Sequence[dict]) -> list[dict]:
    """One row per SALF analysis record: model, task, n, layers, gain used, its eof, and the eof
    the same deviation trace gives under every registered gain formula."""
    rows = []
    for r in sorted(records, key=lambda r: (r["config"]["model"], r["config"]["task"])):
        m = r["metrics"]
        rows.append({"model": r["config"]["model"], "task": r["config"]["task"], "n": m["n"], "layers": m["layers"],
                     "gain": m["gain_kind"], "eof": m["eof"],
                     **{f"eof[{g}]": e for g, e in sorted(m["eof_by_gain"].items())}})
    return rows


def salf_eof_table() -> str:
    """The eof chosen per model × task and the eof under every registered gain formula."""
    out = ["# SALF: end of freezing (eof) per model and task\n\n",
           "eof = e freezes the embeddings and blocks 1..e (argmax gain over blocks 1..L-1). "
           "The chosen eof uses the run's gain; the other columns re-choose it from the same "
           "deviation trace with every registered gain formula (docs/decisions.md).\n"]
    for profile in PROFILE_PREFERENCE:
        records = _salf_records(profile)
        if not records:
            continue
        rows = salf_eof_rows(records)
        header = list(rows[0])
        dev = sorted({r["metrics"]["deviation_kind"] for r in records})
        out.append(f"\n## Reproduced: profile `{profile}` (deviation: {', '.join(dev)})\n\n")
        out.append(_markdown(header, [[row.get(h, "") for h in header] for row in rows]))
    return "".join(out)


def salf_analysis_figures(out_dir: Path = FIGURES) -> list[Path]:
    """SALF deviation/gain panels (largest profile with results) and the eof table (every profile)."""
    from semalign_core.report import plots

    profile = next((p for p in PROFILE_PREFERENCE if _salf_records(p)), None)
    if profile is None:
        return []
    out_dir = Path(out_dir)
    fig = plots.salf_deviation_gain_figure(_salf_records(profile))
    return [plots.save_png(fig, out_dir / "salf_fig2_deviation_gain.png"),
            *save_markdown(salf_eof_table(), out_dir / "salf_eof_table.md")]


# --------------------------------------------------------------------------- SemAlign Table 1


def _hyperparameters(profile: str) -> str:
    """The per-task budgets behind a profile's Table 1 (rows of SemAlign Tables 4-5)."""
    from semalign_core.experiments import transfer_tables as transfer_table
    from semalign_core.profiles import get_profile

    frame = transfer_table.hyperparameter_table(get_profile(profile))
    return (f"\n{frame.attrs['caption']}:\n\n"
            + _markdown(["setting", *frame.columns], [[i, *row] for i, row in zip(frame.index, frame.values.tolist())]))


def semalign_table1_markdown() -> str | None:
    """Reproduced Table 1 of every profile with records (profile, n and seeds behind each number)
    and the published Table 1, labelled as such. None when no profile has transfer records."""
    from semalign_core.experiments import transfer_tables as transfer_table

    out = ["# SemAlign Table 1: parametric knowledge transfer on four benchmarks\n\n",
           "Reproduced cells: mean ± sample std over seeds (%), n = benchmark examples evaluated per seed "
           "(greedy, zero-shot); each row `method` trains a fresh target on the transfer `train` split "
           "(`notebooks/03_semalign_transfer.ipynb`). `source`/`target`: the untransferred models.\n"]
    found = False
    for profile in PROFILE_PREFERENCE:
        if not transfer_table.load_records(profile):
            continue
        found = True
        frame = transfer_table.table(profile)
        out.append(f"\n## Reproduced: profile `{profile}` (seeds {frame.attrs['seeds']})\n\n")
        out.append(frame.attrs["caption"] + ".\n")
        for note in frame.attrs["notes"]:
            out.append(f"Note: {note}.\n")
        out.append("\n" + _markdown(["method", *frame.columns], [[i, *row] for i, row in zip(frame.index, frame.values.tolist())]))
        out.append(_hyperparameters(profile))
    if not found:
        return None
    for key in ("table4_alignment", "table5_training"):
        pub = _paper("semalign")[key]
        out.append(f"\n## Published (SemAlign paper: {pub['caption']})\n\n")
        out.append(_markdown(["setting", *pub["columns"]], [[k, *v] for k, v in pub["rows"].items()]))
    pub = _paper("semalign")["table1_transfer"]
    out.append(f"\n## Published (SemAlign paper, Table 1: {pub['caption']})\n\n")
    out.append("Metrics: " + "; ".join(f"{k} {v}" for k, v in pub["metric"].items()) + ".\n\n")
    out.append(_markdown(["model / method (published)", *pub["columns"]], [[m, *v] for m, v in pub["rows"].items()]))
    return "".join(out)


def semalign_table1(out_dir: Path = FIGURES) -> list[Path]:
    """``semalign_table1_transfer.md`` from results/semalign_transfer/ (nothing when no records)."""
    return save_markdown(semalign_table1_markdown(), Path(out_dir) / "semalign_table1_transfer.md")


def model_statistics(out_dir: Path = FIGURES) -> list[Path]:
    """``table3_model_statistics.md``: published Table 3 beside the models each profile used."""
    return save_markdown(model_statistics_table(), Path(out_dir) / "table3_model_statistics.md")


def _module(name: str):
    """The renderer modules import torch; load them only when their group is built."""
    import importlib

    return importlib.import_module(f"semalign_core.{name}")


def _builders() -> dict:
    """Every table/figure group by name (``make fig-<name>``), in the order ``make figures`` runs them."""
    return {
        "table3": model_statistics,
        "semalign-analyses": semalign_analysis_figures,
        "salf-analysis": salf_analysis_figures,
        "table1": semalign_table1,
        "table2": lambda out: _module("report.teacher_table").teacher_table_figures(out),
        "ablations": lambda out: _module("experiments.ablations").ablation_figures(out),
        "salf-main": lambda out: _module("report.salf").salf_main_table(out),
        "salf-cost-benefit": lambda out: _module("report.salf").salf_cost_benefit_figures(out),
    }


def build_all(out_dir: Path = FIGURES, names: Sequence[str] | None = None) -> list[Path]:
    """Every table and figure (or those ``names``) from the results in ``results_dir()``."""
    from semalign_core.errors import InvalidParameterError

    builders = _builders()
    unknown = sorted(set(names or ()) - set(builders))
    if unknown:
        raise InvalidParameterError(f"unknown figure(s) {', '.join(unknown)}; choose from: {', '.join(builders)}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in builders.items():
        if names is None or name in names:
            written += build(Path(out_dir))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from semalign_core.errors import ArtifactError

    names = list(sys.argv[1:] if argv is None else argv) or None
    try:
        paths = build_all(names=names)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
