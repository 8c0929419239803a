"""The feature contract: online views, their entity keys, the columns they store, the features read
from them, the windows and the click-sequence length.  Declared once here; the Feast definitions
(``features.definitions``), the read-time window evaluation (``features.windows``), the stream
aggregation (``streaming.aggregate``), the replay, the training-set builder (``training.data``) and
the serving reader (``serving.feature_reader``) all derive from it.

Windows are evaluated when they are read, as of a given time (Chronon-style tiles): a view stores
per-key *tiles* (impression/click counts per UTC minute for the last hour and per UTC hour for the
last 7 days, behind the key's newest event) and ``features.windows`` sums the tiles of each window
as of the read time.  ``*_1h`` sums the 60 one-minute tiles ending with the tile that holds the read
time, ``*_24h`` and ``*_7d`` the 24 and 168 one-hour tiles.  ``window_start_ms`` is the one
definition of which events a window holds.

A view's ``features`` are its stored columns (the Feast schema); ``derived`` are the window features
computed from its tiles at read time.  ``row_names`` is what a reader gets for a key: the stored
columns that are not tiles, then the derived ones.
"""
from __future__ import annotations

from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

SEQ_LEN = 20  # length of the click sequences (recent_clicks, recent_clicks_all)


@dataclass(frozen=True)
class Window:
    name: str  # the feature-name suffix: clk_<name>
    tile_ms: int
    tiles: int

    @property
    def span_ms(self) -> int:
        return self.tile_ms * self.tiles


WINDOW_1H = Window("1h", MINUTE_MS, 60)
WINDOW_24H = Window("24h", HOUR_MS, 24)
WINDOW_7D = Window("7d", HOUR_MS, 168)
WINDOWS = (WINDOW_1H, WINDOW_24H, WINDOW_7D)


def window_start_ms(window: Window, end_ms: int) -> int:
    """The first event time inside ``window`` when it ends at ``end_ms``: the start of the oldest of
    its tiles (the newest tile is the one holding ``end_ms``)."""
    return (end_ms // window.tile_ms - (window.tiles - 1)) * window.tile_ms


# Feature value types (the Feast schema and the stores' encodings follow them).
INT64, FLOAT32, INT64_LIST, FLOAT32_LIST, STRING = "int64", "float32", "int64_list", "float32_list", "string"


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    description: str = ""
    tiles: bool = False  # a tile column: read by ``features.windows`` only, never handed to a model


@dataclass(frozen=True)
class View:
    """One online feature view: rows keyed by ``entity_keys`` (join key, dtype)."""

    name: str
    entity_keys: tuple[tuple[str, str], ...]
    features: tuple[Feature, ...]  # stored columns
    description: str = ""
    derived: tuple[Feature, ...] = ()  # evaluated from the tiles at read time (features.windows)

    @property
    def feature_names(self) -> list[str]:
        """The stored columns (the Feast schema)."""
        return [f.name for f in self.features]

    @property
    def row_names(self) -> list[str]:
        """What a reader gets for a key: the stored columns that are not tiles, then the derived ones."""
        return [f.name for f in self.features if not f.tiles] + [f.name for f in self.derived]

    @property
    def join_keys(self) -> list[str]:
        return [k for k, _ in self.entity_keys]

    def entity(self, key) -> dict:
        """A row key (a tuple in ``entity_keys`` order, or the one value) as {join key: value}."""
        return dict(zip(self.join_keys, key if isinstance(key, tuple) else (key,)))


USER_ID, ITEM_ID, SCENARIO = ("user_id", INT64), ("item_id", INT64), ("scenario", STRING)

WINDOW_COUNTS = tuple(Feature(f"{kind}_{w.name}", INT64, f"{kind_name} in the last {w.name}")
                      for kind, kind_name in (("imp", "impressions"), ("clk", "clicks")) for w in WINDOWS)
CTRS = tuple(Feature(f"ctr_{w.name}", FLOAT32, f"clicks / impressions over {w.name} (0 without impressions)")
             for w in (WINDOW_24H, WINDOW_7D))

# Tile columns: flat int64 lists of fixed-width records, sorted by tile index.
MINUTE_TILES = Feature("minute_tiles", INT64_LIST, "[minute, impressions, clicks] per UTC minute of the last "
                       "hour behind the key's newest event, flattened", tiles=True)
HOUR_TILES = Feature("hour_tiles", INT64_LIST, "[hour, impressions, clicks] per UTC hour of the last 7 days "
                     "behind the key's newest event, flattened", tiles=True)
SCENARIO_HOUR_TILES = Feature("scenario_hour_tiles", INT64_LIST, "[hour, scenario index (settings order), "
                              "impressions, clicks] per UTC hour and scenario of the last 7 days behind the "
                              "user's newest event, flattened", tiles=True)
TILE_WIDTH = {MINUTE_TILES.name: 3, HOUR_TILES.name: 3, SCENARIO_HOUR_TILES.name: 4}

SINCE_CLICK = Feature("since_click_ms", INT64, "ms from the start of the tile of the newest click to the read time "
                      "(minute tiles within the last hour, hour tiles within 7d; none beyond 7d)")
USER_SCENARIO_STATS = View(
    "user_scenario_stats", (USER_ID, SCENARIO),
    (MINUTE_TILES, HOUR_TILES,
     Feature("recent_clicks", INT64_LIST, f"the {SEQ_LEN} newest clicked items in the scenario, newest first")),
    "a user's activity in one scenario",
    derived=WINDOW_COUNTS + CTRS + (SINCE_CLICK,),
)
USER_PROFILE = View(
    "user_profile", (USER_ID,),
    (SCENARIO_HOUR_TILES,
     Feature("recent_clicks_all", INT64_LIST, f"the {SEQ_LEN} newest clicked items in any scenario")),
    "a user across scenarios",
    derived=(
        Feature("total_imp_7d", INT64, "impressions over every scenario in the last 7d"),
        Feature("total_clk_7d", INT64, "clicks over every scenario in the last 7d"),
        Feature("scenario_click_share", FLOAT32_LIST, "7d clicks per scenario / all 7d clicks, settings order"),
    ),
)
ITEM_SCENARIO_STATS = View(
    "item_scenario_stats", (ITEM_ID, SCENARIO),
    (MINUTE_TILES, HOUR_TILES),
    "an item's activity in one scenario",
    derived=WINDOW_COUNTS + CTRS + (
        Feature("trending", FLOAT32, "(clk_1h + 1) / (clk_24h / 24 + 1): last hour against the day's hourly mean"),
    ),
)
VIEWS = (USER_SCENARIO_STATS, USER_PROFILE, ITEM_SCENARIO_STATS)
VIEWS_BY_NAME = {v.name: v for v in VIEWS}

# What the request-time user tower reads: one (user, scenario) row joins these two views.
USER_VIEWS = (USER_SCENARIO_STATS, USER_PROFILE)
USER_FEATURE_NAMES = [n for v in USER_VIEWS for n in v.row_names]
# What recall branches and ranking read of an item in a scenario (``serving.feature_reader``).
ITEM_FEATURE_NAMES = ITEM_SCENARIO_STATS.row_names

# The inputs of the SASS user tower (a subset of the user features) and of its item tower.
MODEL_USER_INPUTS = ("user_id", "scenario", "recent_clicks", "recent_clicks_all", "scenario_click_share")
MODEL_ITEM_INPUTS = ("item_id", "scenario")


def model_feature_spec(scenarios: list[str]) -> dict:
    """What a trained model was fed: recorded in its artifact, hashed into the registry."""
    return {"user": list(MODEL_USER_INPUTS), "item": list(MODEL_ITEM_INPUTS), "seq_len": SEQ_LEN,
            "scenarios": list(scenarios), "point_in_time": "strictly before"}
