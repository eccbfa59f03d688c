"""One experiment cell by name: in this process (what the notebooks do) or in its own.

    python -m semalign_core.experiments.cells semalign_transfer --list --profile smoke
    python -m semalign_core.experiments.cells semalign_transfer sft__mmlu__seed0 --profile smoke
    python -m semalign_core.experiments.cells salf_main tiny-salf__sst2__full__seed0 \\
        --profile smoke --process

A cell is one record of a notebook's grid, named as the notebook names its record: Table 1
``<method>__<task>__seed<s>`` (Table 2 prefixes ``<teacher>__``); ablations
``<axis>-<value>__<task>__seed<s>`` on each informative task of the profile (the default variant
is Table 2's ``semalign`` cell of the task); SALF's main table and cost–benefit sweeps
``<model>__<task>__<policy>__seed<s>`` (zero-shot without the seed part). Running it calls the
notebook's own functions (``transfer_tables.cell_record``, ``ablations.run_variant``,
``SalfGrid.run``), so it reuses or writes exactly the record the notebook would; a cell another
one needs first (the default variant, SALF's run) is reused when valid, else computed. The
cost–benefit sweeps of a model × task × seed are named after its SALF run, so naming them
(``--list``, or a sweep cell) gets that record, computing it when missing.

``--process`` runs the same command in a fresh Python process, which adds its peak memory to the
cost of a record it computes (``process_peak_rss_mb``, ``process_peak_cuda_mb`` on a GPU,
``process_peak_scope: "own process"``); records computed in-process carry none of these keys.
A valid stored record is reused, not measured: pass ``--force`` (or an empty results folder) to
measure. This entry point is also what ``accelerate launch`` or a cluster job array calls, one
cell per task.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from itertools import product
from typing import Any

import torch
from tqdm.auto import tqdm

from semalign_core.costs import PeakMemory
from semalign_core.devices import default_device
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments import (
    ablations,
    budgets,
    cell_process,
    salf_cells,
    salf_cost_benefit,
    salf_main,
    transfer_tables,
)
from semalign_core.experiments.catalog import (
    FINETUNED_TEACHER,
    SALF_COST_BENEFIT,
    SALF_MAIN,
    SALF_TIMING,
    SEMALIGN_ABLATIONS,
    SEMALIGN_CROSS_FAMILY,
    SEMALIGN_TRANSFER,
    SHARDED_EXPERIMENTS,
    SHARDED_METHODS,
    ZERO_SHOT,
    get_setting,
)
from semalign_core.experiments.model_pool import ModelPool
from semalign_core.experiments.notebook import check_seeds, require_models
from semalign_core.lm import sharding
from semalign_core.profiles import Profile, get_profile
from semalign_core.records import Measure, RecordParts, record_path
from semalign_core.transfer.registry import METHODS

OWN_PROCESS = "own process"
# runner(force, measure) -> the cell's record
CellRunner = Callable[[bool, Measure | None], dict[str, Any]]


# --------------------------------------------------------------------------- measuring


def _process_peak_rss_mb() -> float:
    """This process's peak RSS so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024


def own_process_peak(compute: Callable[[], RecordParts]) -> RecordParts:
    """``compute()`` with this process's peak memory added to its cost (the own-process keys)."""
    # PeakMemory blocks inside the methods reset the kernel's peak counter: read it first, then
    # let an enclosing block collect the peaks of the nested ones.
    before_mb = _process_peak_rss_mb()
    with PeakMemory(default_device()) as block:
        parts = compute()
    parts.cost["process_peak_rss_mb"] = round(max(before_mb, block.peak_rss_mb), 1)
    if block.peak_cuda_mb is not None:
        parts.cost["process_peak_cuda_mb"] = round(block.peak_cuda_mb, 1)
    parts.cost["process_peak_scope"] = OWN_PROCESS
    return parts


# --------------------------------------------------------------------------- the experiments


class _Cells(Mapping[str, CellRunner]):
    """Runners by run name, in run order. A part may be a function that names its cells only
    when asked (the cost–benefit sweeps follow SALF's record): a lookup tries the named parts
    first; iterating names them all."""

    def __init__(self, parts: Sequence[dict[str, CellRunner] | Callable[[], dict]]):
        self._parts = list(parts)

    def _named(self, name_all: bool) -> Iterator[dict[str, CellRunner]]:
        for i, part in enumerate(self._parts):
            if name_all and callable(part):
                part = self._parts[i] = part()
            if isinstance(part, dict):
                yield part

    def __getitem__(self, name: str) -> CellRunner:
        for name_all in (False, True):
            for part in self._named(name_all):
                if name in part:
                    return part[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        for part in self._named(True):
            yield from part

    def __len__(self) -> int:
        return sum(map(len, self._named(True)))


def _transfer_cells(setting: str, prof: Profile, seeds: Sequence[int]) -> dict[str, CellRunner]:
    """Every cell of Table 1 or 2 (the notebook's defaults), by run name, in run order."""
    methods, tasks, seeds = transfer_tables.check_parameters(prof, 0, seeds, setting=setting)
    cells = transfer_tables.table_cells(prof, methods, tasks, seeds, None, setting, None)
    return {cell.run: partial(transfer_tables.cell_record, cell) for cell in cells}


def _ablation_cells(prof: Profile, seeds: Sequence[int]) -> dict[str, CellRunner]:
    """Every task × variant × seed of the ablations (notebook 05's defaults: every informative
    task of the profile), by run name, in run order; the default variant is Table 2's
    ``semalign`` cell of the task (``semalign_finetuned_teacher``)."""
    axes, tasks, seeds = ablations.check_parameters(prof, 0, seeds)
    return {
        variant.run(seed, task): partial(ablations.run_variant, prof, variant, seed, task)
        for task in tasks
        for variant in ablations.variants(prof, axes, task)
        if not variant.is_default
        for seed in seeds
    }


# make_grid(force=..., measure=...) -> the notebook's SalfGrid
GridMaker = Callable[..., salf_cells.SalfGrid]
BASE_LABELS = (ZERO_SHOT, "full", "salf")  # what SalfGrid.run_all runs before labels_for's


def _grid_run(
    make_grid: GridMaker,
    run: tuple[str, str, str, int | None],
    force: bool,
    measure: Measure | None,
) -> dict[str, Any]:
    return make_grid(force=force, measure=measure).run(*run)


def _grid_cells(
    make_grid: GridMaker, model: str, task: str, labels: Sequence[str], seed: int | None
) -> dict[str, CellRunner]:
    return {
        salf_cells.run_name(model, task, label, seed): partial(
            _grid_run, make_grid, (model, task, label, seed)
        )
        for label in labels
    }


def _followers(
    make_grid: GridMaker,
    labels_for: Callable[[dict], Sequence[str]],
    model: str,
    task: str,
    seed: int,
) -> dict[str, CellRunner]:
    """The cells of ``labels_for(SALF's record)``, that record got (or computed) unforced."""
    salf_record = make_grid(force=False, measure=None).run(model, task, "salf", seed)
    labels = [label for label in labels_for(salf_record) if label not in BASE_LABELS]
    return _grid_cells(make_grid, model, task, labels, seed)


def _salf_grid_cells(
    make_grid: GridMaker,
    labels: Sequence[str] | Callable[[dict], Sequence[str]],
    models: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
) -> _Cells:
    """The runs of ``SalfGrid.run_all`` by run name, in its order; ``labels``: the labels after
    full and salf, or ``labels_for`` (they follow SALF's record: named on first need)."""
    parts: list = []
    for model, task in product(models, tasks):
        parts.append(_grid_cells(make_grid, model, task, [ZERO_SHOT], None))
        for seed in seeds:
            parts.append(_grid_cells(make_grid, model, task, BASE_LABELS[1:], seed))
            if callable(labels):
                parts.append(partial(_followers, make_grid, labels, model, task, seed))
            else:
                followers = [label for label in labels if label not in BASE_LABELS]
                parts.append(_grid_cells(make_grid, model, task, followers, seed))
    return _Cells(parts)


@cache
def _pool(profile: str) -> ModelPool:
    """One model pool per profile and process: a process running several cells loads each model
    once."""
    return ModelPool(get_profile(profile))


def _main_grid(prof: Profile) -> GridMaker:
    salf_kw = dict(salf_cells.SALF_OPTIONS)
    return partial(
        salf_cells.SalfGrid, prof, None, SALF_MAIN, salf_kw, verbose=False, pool=_pool(prof.name)
    )


def _salf_main_cells(prof: Profile, seeds: Sequence[int]) -> _Cells:
    """Every run of the SALF main table (notebook 06's defaults), by run name, in run order."""
    salf_kw = dict(salf_cells.SALF_OPTIONS)
    models, tasks, policies, seeds = salf_main.check_parameters(prof, 0, seeds, salf_kw=salf_kw)
    return _salf_grid_cells(_main_grid(prof), policies, models, tasks, seeds)


def compute_salf_main_in_processes(
    prof: Profile,
    models: Sequence[str],
    tasks: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    force: bool = False,
    jobs: int = 2,
) -> None:
    """Compute notebook 06's runs (the profile's budget and SALF options; these checked models,
    tasks, policies and seeds) in ``jobs`` one-thread processes at once, each computing its
    share in turn; valid records are reused. The runs that take SALF's eof from its record
    (``salf_cells.NEEDS_SALF``) start once every SALF run is done. The notebook then reads the
    records with ``salf_main.run_main_table``."""
    if _launches_on_gpus(prof):
        jobs = 1  # its shardable runs launch on every GPU, one at a time
    grid = _main_grid(prof)
    every = list(_salf_grid_cells(grid, policies, models, tasks, seeds))
    independent = [p for p in policies if p not in salf_cells.NEEDS_SALF]
    first = list(_salf_grid_cells(grid, independent, models, tasks, seeds))
    for name in every:
        find_cell(SALF_MAIN, name, prof)  # every name is checked before any process starts
    require_models(prof)
    done = set(first)
    for names in (first, [n for n in every if n not in done]):
        run_shares_in_processes(SALF_MAIN, names, prof.name, force, jobs)


def _cost_benefit_cells(prof: Profile, seeds: Sequence[int]) -> _Cells:
    """Every run of the cost–benefit sweeps (notebook 07's defaults), by run name, in run order.
    The sweeps of a model × task × seed are named after its SALF record: listing them gets it,
    or computes it first."""
    salf_kw = dict(salf_cells.SALF_OPTIONS)
    models, tasks, groups, seeds = salf_cost_benefit.check_parameters(
        prof, 0, seeds, salf_kw=salf_kw
    )
    grid = partial(salf_cost_benefit.make_grid, prof, None, salf_kw, verbose=False)
    labels_for = partial(salf_cost_benefit.run_labels, groups=groups)
    return _salf_grid_cells(grid, labels_for, models, tasks, seeds)


def _salf_timing_cells(
    prof: Profile, seeds: Sequence[int], policies: Sequence[str] | None = None
) -> dict[str, CellRunner]:
    """Every timing repeat of notebook 07 (its defaults; only ``policies`` when given), by run
    name, in its random order."""
    salf_kw = dict(salf_cells.SALF_OPTIONS)
    models, tasks, _, seeds = salf_cost_benefit.check_parameters(prof, 0, seeds, salf_kw=salf_kw)
    cells = {}
    for model, task, label, seed, repeat in salf_cost_benefit.timing_plan(
        prof, models, tasks, seeds[0]
    ):
        if policies is None or label in policies:
            grid = partial(salf_cost_benefit.timing_grid, prof, repeat, None, salf_kw)
            name = salf_cells.run_name(model, task, label, seed, repeat)
            cells[name] = partial(_grid_run, grid, (model, task, label, seed))
    return cells


def _transfer_summary(record: dict) -> str:
    m = record["metrics"]
    same = " [same plan as the default: not retrained]" if m.get("same_plan") else ""
    return f"{m['metric']} = {m['value']} (n={m['n']}){same}"


@dataclass(frozen=True)
class Experiment:
    """How one experiment names its cells and shows a record in one line.

    Attributes:
        cells: (profile, seeds or None for the profile's default) -> {run name: runner}.
        summary: one line of a record.
    """

    cells: Callable[[Profile, Sequence[int] | None], Mapping[str, CellRunner]]
    summary: Callable[[dict], str]


EXPERIMENTS: dict[str, Experiment] = {
    SEMALIGN_TRANSFER: Experiment(partial(_transfer_cells, "table1"), _transfer_summary),
    FINETUNED_TEACHER: Experiment(partial(_transfer_cells, "finetuned"), _transfer_summary),
    SEMALIGN_ABLATIONS: Experiment(_ablation_cells, _transfer_summary),
    SEMALIGN_CROSS_FAMILY: Experiment(partial(_transfer_cells, "cross_family"), _transfer_summary),
    SALF_MAIN: Experiment(_salf_main_cells, salf_cells.summary),
    SALF_COST_BENEFIT: Experiment(_cost_benefit_cells, salf_cells.summary),
    SALF_TIMING: Experiment(_salf_timing_cells, salf_cells.summary),
}


def _experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise InvalidParameterError(
            f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}"
        )
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------- the runner


def cell_names(
    experiment: str, profile: str, seed: int = 0, seeds: Sequence[int] | None = None
) -> list[str]:
    """The run names of ``experiment`` at ``profile`` (seeds: the notebook's ``seed``/``seeds``),
    in the notebook's run order."""
    prof, cells = get_profile(profile), _experiment(experiment).cells
    return list(cells(prof, check_seeds(seeds, seed, experiment, prof.name)))


def _seeds_of(name: str) -> tuple[int, ...] | None:
    """The seed a run name carries (None: a seed-independent row, found among the defaults)."""
    match = re.search(r"__seed(\d+)(__rep\d+)?$", name)
    return None if match is None else (int(match.group(1)),)


def find_cell(experiment: str, name: str, prof: Profile) -> CellRunner:
    """The runner of the cell called ``name``, or a one-line InvalidParameterError."""
    cells = _experiment(experiment).cells(prof, _seeds_of(name))
    if name not in cells:
        raise InvalidParameterError(
            f"unknown cell {name!r} of {experiment} at profile {prof.name}; "
            f"`--list` names them (e.g. {next(iter(cells), 'none')})"
        )
    return cells[name]


def run_cell(
    experiment: str,
    name: str,
    profile: str,
    force: bool = False,
    own_process: bool = False,
) -> dict[str, Any]:
    """The record of one cell: reused when valid, else computed, exactly as the notebook would.

    ``own_process``: compute it in a fresh Python process (same results folder, same thread
    count), whose peak memory goes into the record's cost (see the module docstring)."""
    prof = get_profile(profile)
    runner = find_cell(experiment, name, prof)  # unknown names fail here, before any process
    if not own_process:
        require_models(prof)
        return runner(force, None)
    _spawn(experiment, name, profile, force, torch.get_num_threads())
    return json.loads(record_path(experiment, profile, name).read_text())


def run_timing_repeats(
    profile: str, seed: int = 0, force: bool = False, policies: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Notebook 07's timing repeats (``budgets.TIMING`` at the profile's sweep setting; only
    ``policies`` of it when given), one fresh process each (the parent's thread count), in their
    seeded random order; valid records are reused, not re-timed (``force`` re-times them)."""
    prof = get_profile(profile)
    timed = budgets.TIMING[prof.name]["policies"]
    unknown = sorted(set(policies or ()) - set(timed))
    if unknown:
        raise InvalidParameterError(
            f"timing policies at {profile} are {', '.join(sorted(timed))}; got {', '.join(unknown)}"
        )
    cells = _salf_timing_cells(prof, (seed,), policies)
    require_models(prof)
    return [
        run_cell(SALF_TIMING, name, profile, force, own_process=True)
        for name in tqdm(list(cells), desc="timing repeats (own processes)", unit="run")
    ]


def run_cells_in_processes(
    experiment: str, names: Sequence[str], profile: str, force: bool = False, jobs: int = 2
) -> list[dict[str, Any]]:
    """The records of ``names``, computed in ``jobs`` fresh processes at a time with one torch
    thread each (each records its own peak memory): on a small CPU box two one-thread processes
    usually finish two cells sooner than one two-thread process runs them in turn.

    Not for the SALF timing repeats, whose config holds the thread count (their times are the
    result): a one-thread repeat is another record than the notebook's."""
    if jobs < 1:
        raise InvalidParameterError(f"jobs must be at least 1, not {jobs}")
    prof = get_profile(profile)
    for name in names:
        find_cell(experiment, name, prof)  # every name is checked before any process starts
    require_models(prof)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = pool.map(lambda name: _spawn(experiment, name, profile, force, 1), names)
        list(done)  # re-raises the first failure
    return [json.loads(record_path(experiment, profile, n).read_text()) for n in names]


def compute_table_in_processes(
    prof: Profile,
    methods: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    force: bool = False,
    jobs: int = 2,
    setting: str = "table1",
) -> None:
    """Compute the cells of a transfer table (checked ``methods``, ``tasks``, ``seeds``) in
    ``jobs`` one-thread processes at once (:func:`run_cells_in_processes`); valid records are
    reused. The notebook then reads them with ``transfer_tables.run_table``."""
    cells = transfer_tables.table_cells(prof, methods, tasks, seeds, None, setting, None)
    experiment = get_setting(setting).experiment
    run_cells_in_processes(experiment, [c.run for c in cells], prof.name, force, jobs)


def compute_table(
    prof: Profile,
    methods: Sequence[str] | None,
    tasks: Sequence[str] | None,
    seeds: Sequence[int],
    force: bool = False,
    jobs: int = 1,
    setting: str = "table1",
) -> list[dict]:
    """A transfer table's records as its notebook shows them (``transfer_tables.run_table``),
    its cells computed first in fresh processes where :func:`in_own_processes` says so (``jobs``
    one-thread processes at once; under FSDP, each cell in one process per GPU)."""
    if in_own_processes(prof, jobs):
        if _launches_on_gpus(prof):
            jobs = 1  # each launch takes every GPU
        compute_table_in_processes(prof, methods, tasks, seeds, force, jobs, setting)
        force = False  # computed just now
    return transfer_tables.run_table(prof, methods, tasks, seeds, force, setting=setting)


def run_shares_in_processes(
    experiment: str, names: Sequence[str], profile: str, force: bool = False, jobs: int = 2
) -> None:
    """``names`` dealt in turn to ``jobs`` fresh one-thread processes that each compute their
    share one cell after another (each model loaded once per process, no per-cell start-up):
    for many short cells. The records carry no own-process peak memory."""
    if jobs < 1:
        raise InvalidParameterError(f"jobs must be at least 1, not {jobs}")
    shares = [list(names[i::jobs]) for i in range(jobs) if names[i::jobs]]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = pool.map(lambda share: _spawn(experiment, share, profile, force, 1, False), shares)
        list(done)  # re-raises the first failure


def sharded_cells(experiment: str, names: Sequence[str]) -> bool:
    """Whether every cell of ``names`` trains with a method FSDP shards (a run name holds its
    method: ``sft__gsm__seed0``, ``ft-source__sft__sst2__seed0``) or, in SALF's tables, a
    policy it shards (``<model>__<task>__<policy>__seed<s>``: ``salf_cells.shardable``)."""
    if experiment in (SALF_MAIN, SALF_COST_BENEFIT):
        return all(salf_cells.shardable(salf_cells.label_of(n)) for n in names)
    methods = {next((p for p in n.split("__") if p in METHODS), None) for n in names}
    return experiment in SHARDED_EXPERIMENTS and methods <= set(SHARDED_METHODS)


def in_own_processes(prof: Profile, jobs: int) -> bool:
    """Whether a notebook computes a table's cells in fresh processes first: when asked
    (``jobs`` > 1) and wherever the profile's cells run under FSDP over several GPUs."""
    return jobs > 1 or _launches_on_gpus(prof)


def _launches_on_gpus(prof: Profile) -> bool:
    """Whether this machine starts the profile's sharded cells as one process per GPU."""
    return sharding.launches_several(prof.train_engine)


def _spawn(
    experiment: str,
    names: str | Sequence[str],
    profile: str,
    force: bool,
    threads: int,
    measure: bool = True,
) -> None:
    """:func:`cell_process.spawn`, launched on every GPU where the cells train under FSDP."""
    names = [names] if isinstance(names, str) else list(names)
    sharded = sharded_cells(experiment, names)
    cell_process.spawn(experiment, names, profile, force, threads, measure, sharded)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semalign_core.experiments.cells",
        description="Run one experiment cell by name (the record its notebook would write).",
    )
    parser.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("cells", nargs="*", help="run names, e.g. sft__mmlu__seed0")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--list", action="store_true", help="print the experiment's cell names")
    parser.add_argument(
        "--index",
        type=int,
        help="run the cell at this 0-based position of --list (one job of a job array, e.g. "
        "--index $SLURM_ARRAY_TASK_ID); --seed/--seeds choose the list",
    )
    parser.add_argument("--seed", type=int, default=0, help="--list: the first seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="--list: these seeds")
    parser.add_argument("--force", action="store_true", help="recompute a valid record")
    parser.add_argument(
        "--process", action="store_true", help="run in a fresh process; record its peak memory"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="run the cells in this many fresh processes at once, one thread each",
    )
    # set by --process for the fresh process it starts: measure there
    parser.add_argument("--measure-own-process", action="store_true", help=argparse.SUPPRESS)
    return parser


def _run(args) -> None:
    sharding.current_engine()  # one of a launch's processes: its GPU, before any model loads
    if args.list:
        for name in cell_names(args.experiment, args.profile, args.seed, args.seeds):
            print(name)
        return
    if args.index is not None:
        args.cells = [cell_at(args.experiment, args.profile, args.index, args.seed, args.seeds)]
    if not args.cells:
        raise InvalidParameterError("name a cell, or pass --list to see the names")
    if args.jobs:
        records = run_cells_in_processes(
            args.experiment, args.cells, args.profile, args.force, args.jobs
        )
        for name, record in zip(args.cells, records, strict=True):
            _print(args, name, record)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.cells:
        _run_one(args, name)


def cell_at(
    experiment: str, profile: str, index: int, first: int = 0, seeds: Sequence[int] | None = None
) -> str:
    """The cell at 0-based ``index`` of :func:`cell_names` (a job array runs one cell per job)."""
    names = cell_names(experiment, profile, first, seeds)
    if not 0 <= index < len(names):
        raise InvalidParameterError(
            f"--index {index} is outside the {len(names)} cells of {experiment} at {profile} "
            f"(0..{len(names) - 1})"
        )
    return names[index]


def _run_one(args, name: str) -> None:
    if args.measure_own_process:
        prof = get_profile(args.profile)
        runner = find_cell(args.experiment, name, prof)
        require_models(prof)
        record = runner(args.force, own_process_peak)
    elif args.process:
        run_cell(args.experiment, name, args.profile, args.force, own_process=True)
        return  # the fresh process has printed its line
    else:
        record = run_cell(args.experiment, name, args.profile, args.force)
    _print(args, name, record)


def _print(args, name: str, record: dict) -> None:
    path = record_path(args.experiment, args.profile, name)
    print(f"{path}: {_experiment(args.experiment).summary(record)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """The command line; an input error prints one line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "EXPERIMENTS",
    "cell_at",
    "Experiment",
    "OWN_PROCESS",
    "cell_names",
    "compute_salf_main_in_processes",
    "compute_table_in_processes",
    "find_cell",
    "main",
    "own_process_peak",
    "run_cell",
    "run_cells_in_processes",
    "run_shares_in_processes",
    "run_timing_repeats",
]

if __name__ == "__main__":
    sys.exit(main())
