"""The `sassflow` console script.

Each part of the product contributes its own subcommands: a module listed in
``COMMAND_MODULES`` exposes ``register(commands, benches)`` and adds argparse
sub-parsers whose ``func(args, settings)`` does the work.  Those modules keep
heavy imports (torch, faiss, feast, airflow) inside the functions so that
``sassflow --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from sassflow.settings import Settings, get_settings

COMMAND_MODULES = [
    "streaming.cli",
    "streaming.ingest_cli",
    "streaming.datasets",
    "features.cli",
    "training.cli",
    "serving.cli",
    "sassflow.airflow_cli",
    "sassflow.demo",
]


def emit_json(result: dict) -> None:
    """Benchmarks and reports end with one JSON object on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, default=float), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sassflow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="benchmarks that print one JSON line")
    benches = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part that is not built yet
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(commands, benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings: Settings = get_settings()
    try:
        rc = args.func(args, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
