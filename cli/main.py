"""The `sassflow` console script.

Every part contributes its subcommands through a module of ``cli.commands`` with
``register(commands, benches)``: argparse sub-parsers whose ``func(args, settings)`` does the work.
Those modules import the heavy libraries (torch, faiss, feast, airflow) inside the functions, so
``sassflow --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from cli.commands import airflow, data, features, serving, streaming, training
from cli.demo import run as demo
from sassflow.settings import Settings, get_settings

COMMAND_MODULES = (streaming, data, features, training, serving, airflow, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sassflow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="benchmarks that print one JSON line")
    benches = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for module in COMMAND_MODULES:
        module.register(commands, benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = get_settings()
    except ValidationError as exc:  # one line per problem, without the values (they may be secrets)
        for e in exc.errors(include_input=False, include_url=False):
            print(f"invalid setting {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        return 2
    try:
        rc = args.func(args, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
