"""Run folders and the committed reference: promote a finished notebook, run a reproduce tier.

    python -m semalign_core.runs promote --profile cpu [NOTEBOOK ...] [--prune]
    python -m semalign_core.runs promote --profile paper --from /path/to/cluster/run  # import
    python -m semalign_core.runs merge /path/to/job1 /path/to/job2 ...  # cluster jobs, one run
    python -m semalign_core.runs reproduce --tier reproduce-full [--profile cpu] [--promote-each]

Every run writes into its run folder (:func:`semalign_core.paths.run_dir`, ``runs/<name>/``,
git-ignored). ``promote`` copies what a finished notebook wrote there (the records of its
experiments at one profile, its executed copy and run log) into the committed ``results/``, then
rebuilds ``figures/`` from ``results/`` alone; nothing else writes either folder. What a notebook
produced is what its run log lists: every record it computed or reused, noted as it happened
(``records.note_in_manifest``), with its sha256. ``reproduce``
runs every notebook with the seeds its tier holds (``budgets.REPRODUCE_TIERS``), computing every
number afresh (the committed records are not reused unless ``SEMALIGN_REUSE_REFERENCE`` says so),
and after each notebook sets its numbers beside the committed ones
(:mod:`semalign_core.report.reproduction`: ``results/reproduction/<profile>/check.json`` in the run
folder, ``figures/reproduction_check.md``). With ``--promote-each`` each notebook is promoted as
soon as it finishes (after its check), so a run cut short loses nothing; a tier is resumed from
its run folder, whose valid records are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments.budgets import REPRODUCE_TIERS, TIER_PARAMS
from semalign_core.experiments.catalog import NOTEBOOKS
from semalign_core.paths import REPO_ROOT, reference_results_dir, results_dir, reuse_reference
from semalign_core.profiles import get_profile
from semalign_core.records import atomic_write, file_digests, git_commit, write_json_atomic
from semalign_core.report import published_check, reproduction
from semalign_core.run_notebook import executed_path, run, run_log_path

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
REPORT_NOTEBOOK = "08_report"  # reads results only: promoted for its executed copy alone
# Every notebook in `make reproduce` order.
ORDER: tuple[str, ...] = (*dict.fromkeys(NOTEBOOKS.values()), REPORT_NOTEBOOK)


def experiments_of(notebook: str) -> list[str]:
    """The experiments (results folders) ``notebook`` writes."""
    if notebook not in ORDER:
        raise InvalidParameterError(
            f"unknown notebook {notebook!r}; choose from {', '.join(ORDER)}"
        )
    return [experiment for experiment, nb in NOTEBOOKS.items() if nb == notebook]


def finished(profile: str, run_results: Path | None = None) -> list[str]:
    """The notebooks that finished at ``profile`` in the run folder (those with a run log)."""
    folder = (run_results or results_dir()) / "notebooks" / profile
    done = {p.name.removesuffix(".run.json") for p in folder.glob("*.run.json")}
    return [nb for nb in ORDER if nb in done]


@dataclass
class Promotion:
    """What one ``promote`` did: the files copied into the reference and the reference records
    of the notebook's experiments that its run did not produce (deleted when ``pruned``)."""

    notebook: str
    copied: list[Path] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    pruned: bool = False

    def summary(self) -> str:
        kept = "deleted" if self.pruned else "kept (--prune deletes them)"
        line = f"promoted {self.notebook}: {len(self.copied)} file(s)"
        if self.stale:
            line += f"; {len(self.stale)} older record(s) not in this run {kept}"
        return line


def promote(
    notebook: str,
    profile: str,
    run_results: Path | None = None,
    reference: Path | None = None,
    prune: bool = False,
) -> Promotion:
    """Copy what a finished ``notebook`` produced at ``profile`` from the run folder's results
    into the reference (``results/``): exactly the records its run log lists (whatever their
    experiment), each checked against the sha256 the log holds, then its executed copy and log.

    Nothing is copied when the notebook has not finished (no run log: it failed, was killed or
    never ran), when its log lists no records manifest, or when a listed record has changed
    since (a later cell or run rewrote it): an ArtifactError says which."""
    run_results = run_results or results_dir()
    reference = reference or reference_results_dir()
    experiments = experiments_of(notebook)
    executed = executed_path(NOTEBOOK_DIR / f"{notebook}.ipynb", profile, run_results)
    records = _finished_records(notebook, profile, run_log_path(executed), run_results)
    _refuse_standins(notebook, run_results, records)
    done = Promotion(notebook, pruned=prune)
    done.copied = [_copy(run_results / name, reference / name) for name in records]
    for experiment in experiments:
        done.stale += [
            path
            for path in sorted((reference / experiment / profile).glob("*.json"))
            if str(path.relative_to(reference)) not in records and _is_record(path)
        ]
    if prune:
        for path in done.stale:
            path.unlink()
    for path in (executed, run_log_path(executed)):
        done.copied.append(_copy(path, reference / "notebooks" / profile / path.name))
    check = reproduction.check_path(run_results, profile)
    if check.is_file():  # the run's comparison with what was committed before it
        done.copied.append(_copy(check, reproduction.check_path(reference, profile)))
    return done


def import_run(
    folder: Path, notebook: str, profile: str, reference: Path | None = None, prune: bool = False
) -> Promotion:
    """Promote ``notebook`` from a run folder computed elsewhere (a GPU cluster, another machine):
    ``folder`` is that run folder (or its ``results/``). Each record keeps its own provenance
    (commit, machine, device, packages); the imported check says where the run came from."""
    run_results = folder / "results" if (folder / "results").is_dir() else folder
    if not run_results.is_dir():
        raise ArtifactError(f"no run folder at {folder}")
    done = promote(notebook, profile, run_results, reference, prune)
    check = reproduction.check_path(reference or reference_results_dir(), profile)
    if check.is_file():
        reproduction.note_import(check, str(folder), _machines(done.copied))
    return done


MERGE_LOG = "merged_from.json"  # in a run folder's results/: what `merge` brought in


def merge(sources: Sequence[Path], into: Path | None = None) -> list[Path]:
    """Copy the records of run folders computed elsewhere (the jobs of a job array over cells,
    several machines) into the run folder ``into`` (default: this run's), byte for byte, so every
    record keeps its provenance. A notebook run on the merged folder then reuses them as valid
    records of its own run (config and model hashes permitting) and writes its tables and run
    log, which ``promote`` needs. A record both sides hold with other metrics is an error; the
    same metrics (a reference row every job computed) keep the first copy. Returns the copied
    records; ``merged_from.json`` lists each source, its records and machines."""
    into = into or results_dir()
    log_path = into / MERGE_LOG
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"sources": []}
    copied = []
    for source in sources:
        results = source / "results" if (source / "results").is_dir() else source
        if not results.is_dir():
            raise ArtifactError(f"no run folder at {source}")
        names = _merge_one(results, into)
        copied += [into / name for name in names]
        machines = _machines([into / name for name in names])
        log["sources"].append({"from": str(source), "records": names, "computed_on": machines})
    if copied:
        write_json_atomic(log_path, log)
    return copied


def _merge_one(results: Path, into: Path) -> list[str]:
    """The records of one source copied into ``into`` (results-relative names)."""
    names = []
    for path in sorted(results.rglob("*.json")):
        name = str(path.relative_to(results))
        if name == MERGE_LOG or name.startswith("notebooks/") or not _is_record(path):
            continue
        target = into / name
        if target.is_file() and target.read_bytes() != path.read_bytes():
            ours, theirs = json.loads(target.read_text()), json.loads(path.read_text())
            if ours.get("metrics") != theirs.get("metrics"):
                raise ArtifactError(
                    f"{name}: {results} holds other numbers than the run folder's copy "
                    "(two jobs computed the same cell differently); remove one and merge again"
                )
            continue
        if not target.is_file():
            _copy(path, target)
            names.append(name)
    return names


def _machines(paths: Sequence[Path]) -> list[str]:
    """The machines and devices records were computed on (their provenance)."""
    found = set()
    for path in paths:
        try:
            provenance = json.loads(path.read_text()).get("provenance") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if provenance.get("machine"):
            found.add(f"{provenance['machine']}, {provenance.get('device', '?')}")
    return sorted(found)


def _refuse_standins(notebook: str, run_results: Path, records: Sequence[str]) -> None:
    """Stand-in models (``SEMALIGN_STANDINS=1``) test the code paths; their numbers are never
    committed."""
    made = [name for name in records if _has_standin(json.loads((run_results / name).read_text()))]
    if made:
        raise ArtifactError(
            f"{notebook}: {len(made)} record(s) were made with stand-in models (random weights, "
            f"SEMALIGN_STANDINS=1), e.g. {made[0]}; stand-in numbers are never promoted"
        )


def _has_standin(value) -> bool:
    """Whether a record names a stand-in model (a model identity whose origin is "standin")."""
    if isinstance(value, dict):
        origin = value.get("origin")
        if isinstance(origin, str) and origin.startswith("standin"):
            return True
        return any(_has_standin(v) for v in value.values())
    return isinstance(value, list) and any(_has_standin(v) for v in value)


def _finished_records(notebook: str, profile: str, log: Path, run_results: Path) -> list[str]:
    """The records a finished notebook's run log lists, after checking they are unchanged."""
    if not log.is_file():
        raise ArtifactError(
            f"{notebook} has not finished at profile {profile} in {run_results} (no {log.name}): "
            "run it to the end first"
        )
    listed = json.loads(log.read_text()).get("records")
    if listed is None:
        raise ArtifactError(f"{log.name} lists no records (an older run log): rerun {notebook}")
    now = file_digests(run_results, listed)
    for name, digest in listed.items():
        if now.get(name) != digest:
            raise ArtifactError(
                f"{name} changed after {notebook} finished (a later cell or run rewrote it): "
                f"rerun {notebook} before promoting it"
            )
    return sorted(listed)


def _is_record(path: Path) -> bool:
    """Whether ``path`` is a result record (bench outputs beside them are never pruned)."""
    try:
        return "config_hash" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _copy(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    return atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))


def build_reference_figures(reference: Path | None = None) -> None:
    """Rebuild the reference's figures from its results alone (a fresh process: the report's
    results folder is an environment setting, which must not leak into later notebooks)."""
    results = reference or reference_results_dir()
    out = results.parent / "figures"
    command = [
        sys.executable,
        "-m",
        "semalign_core.report",
        "--results",
        str(results),
        "--out",
        str(out),
    ]
    if subprocess.run(command, check=False).returncode != 0:
        raise ArtifactError(f"building the figures from {results} failed")


# --------------------------------------------------------------------------- tiers


def tier_parameters(tier: str, profile: str, notebook: str) -> dict:
    """The notebook parameters tier ``tier`` adds at ``profile``: the seeds of its experiment,
    and at the tier's own profile its ``TIER_PARAMS`` (cells computed at once where that helps,
    SALF's headline setting)."""
    if tier not in REPRODUCE_TIERS:
        raise InvalidParameterError(
            f"unknown tier {tier!r}; choose from {', '.join(REPRODUCE_TIERS)}"
        )
    tier_profile, seeds = REPRODUCE_TIERS[tier]
    # processes at once are sized to the tier's own profile and machine (cpu: 2 cores)
    extra = TIER_PARAMS.get(tier, {}) if profile == tier_profile else {}
    for experiment in experiments_of(notebook):
        if experiment in seeds:
            return {"seeds": list(seeds[experiment][profile]), **extra.get(experiment, {})}
    return {}


def reproduce(
    tier: str,
    profile: str,
    notebooks: Sequence[str] = ORDER,
    promote_each: bool = False,
    force: bool = False,
    timeout: int | None = None,
    prune: bool = False,
) -> None:
    """Run ``notebooks`` at ``profile`` with the seeds of ``tier``; with ``promote_each``, promote
    each one as it finishes (``prune``: deleting the reference records it did not produce) and
    rebuild the reference figures once anything was promoted, even when a later notebook fails."""
    get_profile(profile)
    promoted = False
    try:
        for notebook in notebooks:
            params = {"force": force, **tier_parameters(tier, profile, notebook)}
            run(NOTEBOOK_DIR / f"{notebook}.ipynb", profile, 0, timeout, params)
            print(check_reproduction(notebook, profile, tier), flush=True)
            if promote_each:
                print(promote(notebook, profile, prune=prune).summary(), flush=True)
                promoted = True
    finally:
        if promoted:
            build_reference_figures()


def check_reproduction(notebook: str, profile: str, tier: str) -> str:
    """Set the numbers ``notebook`` just produced in the run folder beside the committed ones (its
    rows of the run's reproduction check); a one-line summary."""
    experiments = experiments_of(notebook)
    rows = reproduction.compare_results(
        results_dir(), reference_results_dir(), profile, experiments
    )
    if get_profile(profile).needs_hub:  # no committed run at the hub profiles: the paper's numbers
        rows += published_check.compare_published(results_dir(), profile, experiments)
    reused = " (committed records reused: REUSE=true)" if reuse_reference() else ""
    about = {
        "run": f"tier `{tier}` at code {git_commit() or 'unknown'}{reused}",
        "reference": "the committed results/ (each record's own commit in its provenance)",
    }
    reproduction.merge_check(results_dir(), profile, rows, about)
    counts = reproduction.verdict_counts(r.verdict for r in rows)
    summary = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no numbers to compare"
    return f"reproduction check of {notebook}: {summary}"


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m semalign_core.runs", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    prom = sub.add_parser("promote", help="copy finished notebooks into results/, rebuild figures/")
    prom.add_argument("notebooks", nargs="*", help="notebook names (default: every finished one)")
    prom.add_argument("--profile", default="cpu")
    prom.add_argument("--prune", action="store_true", help="delete reference records not rerun")
    prom.add_argument("--no-figures", action="store_true", help="do not rebuild figures/")
    prom.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="import from this run folder, computed elsewhere (default: this machine's run folder)",
    )
    mer = sub.add_parser(
        "merge", help="copy the records of run folders made elsewhere (cluster jobs) into this one"
    )
    mer.add_argument("folders", nargs="+", type=Path, help="run folders (or their results/)")
    rep = sub.add_parser("reproduce", help="run every notebook with a tier's seeds")
    rep.add_argument("--tier", default="reproduce", help=f"one of {', '.join(REPRODUCE_TIERS)}")
    rep.add_argument("--profile", help="default: the tier's profile")
    rep.add_argument("--notebooks", nargs="+", default=list(ORDER))
    rep.add_argument("--promote-each", action="store_true", help="promote each as it finishes")
    rep.add_argument("--prune", action="store_true", help="with --promote-each: see promote")
    rep.add_argument("--force", action="store_true", help="recompute valid records")
    rep.add_argument("--timeout", type=int, help="per-cell timeout (s); default: the profile's")
    return parser


def _promote_command(args) -> None:
    source = args.source
    run_results = results_dir() if source is None else source
    if source is not None and (source / "results").is_dir():
        run_results = source / "results"
    notebooks = args.notebooks or finished(args.profile, run_results)
    if not notebooks:
        raise ArtifactError(f"no notebook has finished at profile {args.profile} in {run_results}")
    for notebook in notebooks:
        if source is None:
            done = promote(notebook, args.profile, prune=args.prune)
        else:
            done = import_run(source, notebook, args.profile, prune=args.prune)
        print(done.summary(), flush=True)
    if not args.no_figures:
        build_reference_figures()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "promote":
            _promote_command(args)
        elif args.command == "merge":
            copied = merge(args.folders)
            print(f"merged {len(copied)} record(s) into {results_dir()}", flush=True)
        else:
            profile = args.profile or REPRODUCE_TIERS.get(args.tier, ("cpu",))[0]
            reproduce(
                args.tier,
                profile,
                args.notebooks,
                args.promote_each,
                args.force,
                args.timeout,
                args.prune,
            )
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ORDER",
    "Promotion",
    "build_reference_figures",
    "check_reproduction",
    "experiments_of",
    "finished",
    "import_run",
    "main",
    "merge",
    "promote",
    "reproduce",
    "tier_parameters",
]

if __name__ == "__main__":
    sys.exit(main())
