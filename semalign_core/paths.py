"""Where things live: repo root, caches, run folders and results, all inside the repo unless
overridden.

A run (a notebook, a cell, ``make reproduce``) writes into its run folder, ``runs/<name>/``
(git-ignored; ``SEMALIGN_RUN_DIR`` moves it): records in ``results/``, figures in ``figures/``
there. The repo's ``results/`` and ``figures/`` are the committed reference: only ``promote``
(:mod:`semalign_core.runs`) and ``make figures`` write them.

Caches (HF_HOME, MPLCONFIGDIR, IPYTHONDIR, Jupyter dirs, converted models) are kept under
``<repo>/.cache`` so a checkout is self-contained and nothing is written to the user's home.
``SEMALIGN_CACHE_DIR`` moves them (e.g. to a Colab drive).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    return Path(os.environ.get("SEMALIGN_CACHE_DIR", REPO_ROOT / ".cache"))


def model_cache_dir() -> Path:
    return cache_dir() / "models"


def reference_results_dir() -> Path:
    """The committed results (``results/``; ``SEMALIGN_REFERENCE_DIR`` moves it, e.g. in tests)."""
    return Path(os.environ.get("SEMALIGN_REFERENCE_DIR", REPO_ROOT / "results"))


def reuse_reference() -> bool:
    """Whether a valid committed record may stand in for a run's own (``SEMALIGN_REUSE_REFERENCE``
    = 1/true; ``make ... REUSE=true``). Off by default: a reproduction recomputes every number and
    then compares it with the committed one (:mod:`semalign_core.report.reproduction`)."""
    return os.environ.get("SEMALIGN_REUSE_REFERENCE", "").lower() in ("1", "true", "yes")


def reference_figures_dir() -> Path:
    """The committed tables and figures, built from :func:`reference_results_dir`."""
    return reference_results_dir().parent / "figures"


def run_dir() -> Path:
    """The run folder runs write into: ``SEMALIGN_RUN_DIR``, else ``runs/default``."""
    return Path(os.environ.get("SEMALIGN_RUN_DIR", REPO_ROOT / "runs" / "default"))


def results_dir() -> Path:
    """The records in use: ``SEMALIGN_RESULTS_DIR``, else the run folder's ``results/``."""
    return Path(os.environ.get("SEMALIGN_RESULTS_DIR", run_dir() / "results"))


def figures_dir() -> Path:
    """Where the report writes: ``SEMALIGN_FIGURES_DIR``, else ``figures/`` beside the results in
    use (the repo's ``figures/`` only when those are the reference results)."""
    return Path(os.environ.get("SEMALIGN_FIGURES_DIR", results_dir().parent / "figures"))


def configure_cache_env() -> None:
    """Point library caches into the repo cache unless the user already set them."""
    root = cache_dir()
    defaults = {
        "HF_HOME": root / "huggingface",
        "MPLCONFIGDIR": root / "matplotlib",
        "IPYTHONDIR": root / "ipython",
        "JUPYTER_CONFIG_DIR": root / "jupyter" / "config",
        "JUPYTER_DATA_DIR": root / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": root / "jupyter" / "runtime",
    }
    for key, path in defaults.items():
        os.environ.setdefault(key, str(path))
