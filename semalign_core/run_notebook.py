"""Run notebooks through Papermill with a timeout, keep the executed copy without machine paths.

``python -m semalign_core.run_notebook notebooks/X.ipynb --profile cpu`` executes X with the
given parameters, with the repo root as working directory and an execution timeout per cell (a
dead kernel then fails the run instead of hanging it), and writes the executed notebook to
``<results>/notebooks/<profile>/X.ipynb`` (the run folder's results, see
:mod:`semalign_core.paths`) with machine paths removed. A notebook that finishes also gets its run
log beside it, ``X.run.json`` (parameters, wall time, threads, the code's identity): what
``promote`` takes as the sign of a finished notebook.
"""

from __future__ import annotations

import argparse
import os
import re
import site
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm
import yaml

from semalign_core.errors import ArtifactError
from semalign_core.paths import REPO_ROOT, cache_dir, results_dir, run_dir
from semalign_core.profiles import get_profile
from semalign_core.records import MANIFEST_ENV, code_identity, read_manifest, write_json_atomic

MACHINE_KEYS = ("input_path", "output_path")


def executed_path(notebook: Path, profile: str, results: Path | None = None) -> Path:
    """Where the executed copy of ``notebook`` goes (``results``: default the run's results)."""
    return (results or results_dir()) / "notebooks" / profile / notebook.name


class NotebookFailed(ArtifactError):
    """A cell of the notebook raised (or its kernel died): the executed copy shows where."""


def run_log_path(executed: Path) -> Path:
    """The run log beside an executed notebook: ``X.run.json`` for ``X.ipynb``."""
    return executed.with_suffix(".run.json")


def write_run_log(executed: Path, params: dict, wall_s: float, records: dict) -> Path:
    """Record that ``executed`` finished: its parameters, wall time, thread setting, code and the
    records it produced or reused (results-relative path → sha256)."""
    log = {
        "notebook": executed.name,
        "parameters": params,
        "wall_s": round(wall_s, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "code": code_identity(),
        "records": records,
    }
    return write_json_atomic(run_log_path(executed), log)


# Any absolute path into a virtual environment or a cache folder, whichever machine made it.
_FOREIGN_PREFIXES = (
    (re.compile(r"(?:/[\w.+-]+)+/\.venv/"), "<venv>/"),
    (re.compile(r"(?:/[\w.+-]+)+/\.cache/"), "<cache>/"),
)
# Base64 images are data, not text: a path-like run of characters there is a coincidence.
_BINARY_MIME = re.compile(r"image/(?!svg)")


def machine_prefixes() -> list[tuple[str, str]]:
    """This machine's folders that outputs may name, as (path, placeholder), longest path first
    so that a venv inside the repo reads ``<venv>``, not ``<repo>/.venv``."""
    folders = [
        (run_dir(), "<run>"),
        (cache_dir(), "<cache>"),
        (os.environ.get("HF_HOME"), "<hf_home>"),
        *((p, "<site-packages>") for p in (*site.getsitepackages(), site.getusersitepackages())),
        (sys.prefix, "<venv>"),
        (sysconfig.get_paths()["stdlib"], "<stdlib>"),
        (REPO_ROOT, "<repo>"),
        (tempfile.gettempdir(), "<tmp>"),
        (Path.home(), "<home>"),
    ]
    names: dict[str, str] = {}
    for folder, name in folders:
        for spelling in {str(folder), os.path.realpath(folder)} if folder else ():
            if spelling.rstrip("/"):  # a home of "/" would otherwise rename every path
                names.setdefault(spelling.rstrip("/"), name)
    return sorted(names.items(), key=lambda item: -len(item[0]))


def scrub_machine_paths(text: str) -> str:
    """``text`` with this machine's paths (repo, run folder, venv, site-packages, stdlib, caches,
    home, temp) and any machine's venv or cache paths replaced by placeholders such as
    ``<repo>``; a path matches only whole folder names (a sibling ``main2`` of a repo ``main``
    stays as it is)."""
    names = dict(machine_prefixes())
    # One pass over alternatives listed longest first: each path gets its longest folder's name.
    exact = re.compile("(?:" + "|".join(map(re.escape, names)) + r")(?![\w.+-])")
    text = exact.sub(lambda match: names[match.group()], text)
    for pattern, name in _FOREIGN_PREFIXES:
        text = pattern.sub(name, text)
    return text


def scrub_outputs(value):
    """Cell outputs (or any JSON value) with :func:`scrub_machine_paths` applied to every string:
    streams, text and HTML data, error names, values and tracebacks; base64 images left alone."""
    if isinstance(value, str):
        return scrub_machine_paths(value)
    if isinstance(value, list):
        return [scrub_outputs(item) for item in value]
    if isinstance(value, dict):
        return {
            key: item if _BINARY_MIME.match(key) else scrub_outputs(item)
            for key, item in value.items()
        }
    return value


def strip_machine_paths(path: Path) -> None:
    """Drop papermill's absolute paths from the executed notebook's metadata and replace machine
    paths in every cell output (warnings name the venv's files, model loads the cache)."""
    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    for key in MACHINE_KEYS:
        pm.pop(key, None)
    for cell in nb.cells:
        if cell.get("outputs"):
            cell.outputs = nbformat.from_dict(scrub_outputs(cell.outputs))
    nbformat.write(nb, path)


def cell_timeout(profile: str, timeout: int | None = None) -> int:
    """Per-cell timeout (s) of a run at ``profile``: ``timeout`` when given, else the profile's."""
    default = get_profile(profile).cell_timeout_s  # an unknown profile fails even with a timeout
    return timeout if timeout is not None else default


def run(
    notebook: Path, profile: str, seed: int, timeout: int | None, extra: dict | None = None
) -> Path:
    """Execute ``notebook`` at ``profile``; ``timeout`` per cell (None: the profile's default)."""
    timeout = cell_timeout(profile, timeout)  # an unknown profile stops here, before a kernel
    if not notebook.exists():
        raise ArtifactError(f"notebook {notebook} does not exist")
    out = executed_path(notebook, profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_log_path(out).unlink(missing_ok=True)  # finished again only when this run finishes
    params = {"profile": profile, "seed": seed, **(extra or {})}
    start = time.perf_counter()
    shown = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out
    print(f"running {notebook.name} (profile={profile}, seed={seed}) -> {shown}")
    manifest = out.with_suffix(".records.txt")
    manifest.unlink(missing_ok=True)
    manifest.touch()
    os.environ[MANIFEST_ENV] = str(manifest)  # the kernel inherits it: every record is noted
    try:
        pm.execute_notebook(
            str(notebook),
            str(out),
            parameters=params,
            cwd=str(REPO_ROOT),
            kernel_name="python3",
            execution_timeout=timeout,
            progress_bar=False,
            request_save_on_cell_execute=True,
        )
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(
            f"{notebook.name} failed: {err.ename}: {err.evalue} (executed copy kept in {shown})"
        ) from err
    finally:
        os.environ.pop(MANIFEST_ENV, None)
        if out.exists():
            strip_machine_paths(out)
    wall_s = time.perf_counter() - start
    write_run_log(out, params, wall_s, read_manifest(manifest, results_dir()))
    manifest.unlink()
    print(f"done {notebook.name} in {wall_s:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=int, help="per-cell execution timeout (s); default: the profile's"
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra notebook parameter (value parsed as YAML)",
    )
    args = parser.parse_args(argv)

    extra = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.param)}
    try:
        for nb in args.notebooks:
            run(nb, args.profile, args.seed, args.timeout, extra)
    except NotebookFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
