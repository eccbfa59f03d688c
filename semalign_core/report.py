"""Tables and figures rebuilt from ``results/`` alone (no models): ``make figures``.

Reproduced numbers are always shown with the profile they come from; the papers' numbers are read
from ``results/paper/`` and labelled as published. Output is deterministic (sorted keys, fixed
formats), so rebuilding from the same results gives byte-identical files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def build_all() -> list[Path]:
    FIGURES.mkdir(exist_ok=True)
    written = []
    target = FIGURES / "table3_model_statistics.md"
    target.write_text(model_statistics_table())
    written.append(target)
    return written


def main() -> int:
    for path in build_all():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
