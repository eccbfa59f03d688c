"""Command line: `python -m semalign_core.cli models --profile cpu` and friends.

Errors caused by input (unknown model, offline hub id, missing data) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from semalign_core.data.resolve import data_root
from semalign_core.devices import compute_dtype
from semalign_core.errors import ArtifactError
from semalign_core.experiments import planner
from semalign_core.experiments.notebook import require_models
from semalign_core.models.registry import REGISTRY, load_model
from semalign_core.models.standins import STANDINS_ENV, standins_enabled
from semalign_core.profiles import get_profile

# Profiles that stop without a GPU unless --allow-cpu (stand-ins run anywhere).
NEEDS_GPU = ("paper",)


def _models(args) -> None:
    names = args.names or get_profile(args.profile).models()
    for name in names:
        loaded = load_model(name, verbose=False)
        print(json.dumps(loaded.stats) if args.json else loaded.summary())


def _list(args) -> None:
    for name, spec in sorted(REGISTRY.items()):
        print(f"{name:26s} {spec.kind:8s} {spec.description}")


def _print_plan(args, prof) -> list[tuple[str, float]]:
    """Print the profile's memory plan and where its hub weights go; return the GPUs seen."""
    gpus = planner.visible_gpus()
    # the dtype the models will compute in here (a bf16 profile loads in fp32 on a T4)
    dtype = args.dtype or (compute_dtype(prof.dtype, "cuda") if gpus else prof.dtype)
    settings = planner.PlanSettings(
        fp32_master=args.fp32_master,
        throughput=planner.Throughput(args.peak_tflops * 1e12, args.utilisation),
        dtype=dtype,
    )
    print(planner.format_plan(prof, planner.plan_profile(prof, settings), gpus, settings))
    hub_ids = [REGISTRY[m].hub_id for m in planner.hub_models(prof)]
    if hub_ids and standins_enabled():
        print(f"{STANDINS_ENV}=1: the plan is the real models'; their tiny stand-ins run anywhere")
    elif hub_ids:
        print(f"download into the cache this run reads:\n{planner.download_command(hub_ids)}")
    return gpus


def _check(args) -> None:
    """The profile's memory plan, then everything it needs offline (models, benchmark data) and
    a GPU where it needs one, or one line saying what is missing and how to get it (exit 2) --
    `make reproduce` runs this before any notebook."""
    prof = get_profile(args.profile)
    gpus = _print_plan(args, prof)
    require_models(prof)
    if prof.name in NEEDS_GPU and not gpus and not standins_enabled() and not args.allow_cpu:
        raise ArtifactError(
            f"profile '{prof.name}' needs a GPU and this machine has none (torch.cuda sees no "
            "device); run it on a GPU machine, or pass --allow-cpu to run it on the CPU anyway"
        )
    root = data_root()
    print(f"profile {prof.name}: models {', '.join(prof.models())}; benchmark data {root}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semalign", description="SemAlign/SALF artifact tools")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="load (and cache) models, print their statistics")
    models.add_argument("names", nargs="*", help="registry names, directories or hub ids")
    models.add_argument("--profile", default="cpu")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)
    check = sub.add_parser(
        "check", help="stop with what is missing unless the profile can run here"
    )
    check.add_argument("--profile", default="cpu")
    check.add_argument(
        "--allow-cpu", action="store_true", help="run a GPU profile (paper) without a GPU"
    )
    check.add_argument(
        "--fp32-master",
        action="store_true",
        help="plan an fp32 master copy and fp32 AdamW states beside 16-bit weights",
    )
    check.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="plan this compute dtype (default: the profile's, or float32 on a GPU without "
        "native bf16, as the models load there; e.g. --dtype float32 plans a Colab T4)",
    )
    check.add_argument(
        "--peak-tflops", type=float, default=312.0, help="GPU peak (A100 bf16: 312; H100: 989)"
    )
    check.add_argument(
        "--utilisation", type=float, default=0.4, help="share of the peak the GPU-hours assume"
    )
    check.set_defaults(func=_check)
    listing = sub.add_parser("list-models", help="the model registry")
    listing.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
