"""Command line: `python -m semalign_core.cli models --profile cpu` and friends.

Errors caused by input (unknown model, offline hub id, missing data) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from semalign_core.data.resolve import data_root
from semalign_core.errors import ArtifactError
from semalign_core.experiments.notebook import require_models
from semalign_core.models.registry import REGISTRY, load_model
from semalign_core.profiles import get_profile


def _models(args) -> None:
    names = args.names or get_profile(args.profile).models()
    for name in names:
        loaded = load_model(name, verbose=False)
        print(json.dumps(loaded.stats) if args.json else loaded.summary())


def _list(args) -> None:
    for name, spec in sorted(REGISTRY.items()):
        print(f"{name:26s} {spec.kind:8s} {spec.description}")


def _check(args) -> None:
    """Everything the profile needs offline (models, benchmark data), or one line saying what is
    missing and how to get it (exit 2) -- `make reproduce` runs this before any notebook."""
    prof = get_profile(args.profile)
    require_models(prof)
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
