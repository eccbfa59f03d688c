"""Every table and figure from ``results/`` alone (no models): ``python -m semalign_core.report``.

The command line reads the committed ``results/`` (``--results`` or ``SEMALIGN_RESULTS_DIR``
elsewhere) and writes ``figures/`` beside them; :func:`build_all` (what notebook 08 calls) reads
the results in use, a run folder's during a run.

Reproduced numbers are always shown with the profile they come from; the papers' numbers are read
from ``results/paper/`` and labelled as published. Output is deterministic (sorted keys, fixed
formats), so rebuilding from the same results gives byte-identical files. Output goes to
:func:`semalign_core.paths.figures_dir` unless told otherwise: the repo's ``figures/`` only when
the results read are the repo's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.paths import REPO_ROOT, figures_dir, reference_results_dir
from semalign_core.report.ablations import ablation_figures
from semalign_core.report.analysis_figures import salf_analysis_figures, semalign_analysis_figures
from semalign_core.report.cross_family_table import cross_family_figures
from semalign_core.report.model_statistics import model_statistics
from semalign_core.report.reproduction import reproduction_check
from semalign_core.report.salf import salf_cost_benefit_figures, salf_main_table
from semalign_core.report.semalign_tables import semalign_table1
from semalign_core.report.teacher_table import teacher_table_figures

# Every table/figure group by name (``make fig-<name>``), in the order ``make figures`` builds them;
# each writes its files into the folder it is given and returns their paths.
BUILDERS: dict[str, Callable[[Path], list[Path]]] = {
    "table3": model_statistics,
    "semalign-analyses": semalign_analysis_figures,
    "salf-analysis": salf_analysis_figures,
    "table1": semalign_table1,
    "table2": teacher_table_figures,
    "ablations": ablation_figures,
    "cross-family": cross_family_figures,
    "salf-main": salf_main_table,
    "salf-cost-benefit": salf_cost_benefit_figures,
    "reproduction": reproduction_check,
}


def build_all(out_dir: Path | None = None, names: Sequence[str] | None = None) -> list[Path]:
    """Every table and figure (or the groups ``names``) from the results in ``results_dir()``,
    written into ``out_dir`` (None: :func:`~semalign_core.paths.figures_dir`); the paths written."""
    unknown = sorted(set(names or ()) - set(BUILDERS))
    if unknown:
        raise InvalidParameterError(
            f"unknown figure(s) {', '.join(unknown)}; choose from: {', '.join(BUILDERS)}"
        )
    out_dir = figures_dir() if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in BUILDERS.items():
        if names is None or name in names:
            written += build(out_dir)
    return written


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semalign_core.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "groups", nargs="*", help=f"groups to build (default: all): {', '.join(BUILDERS)}"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results to read (default: SEMALIGN_RESULTS_DIR, else the committed results/)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: SEMALIGN_FIGURES_DIR, else figures/ beside the results)",
    )
    return parser.parse_args(argv)


@contextmanager
def reading(results: Path | None):
    """Within: the report reads ``results`` (None: ``SEMALIGN_RESULTS_DIR`` when set, else the
    committed results), and by default writes the figures beside them."""
    before = os.environ.get("SEMALIGN_RESULTS_DIR")
    if results is not None or before is None:
        os.environ["SEMALIGN_RESULTS_DIR"] = str(results or reference_results_dir())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SEMALIGN_RESULTS_DIR", None)
        else:
            os.environ["SEMALIGN_RESULTS_DIR"] = before


def main(argv: Sequence[str] | None = None) -> int:
    """Build the groups named in ``argv`` (all when none); 2 with a one-line error on a bad name."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        with reading(args.results):
            paths = build_all(args.out, args.groups or None)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


__all__ = ["BUILDERS", "build_all", "main", "reading"]
