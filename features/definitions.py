"""The one definitions module of the sassflow Feast repo.

Serving fetches "user u in scenario s" in one call: ``user_scenario_stats`` is keyed by the
(user_id, scenario) pair, ``item_scenario_stats`` by (item_id, scenario), ``user_profile`` by
user_id.  Every view is fed by a push source; values are written by ``streaming/`` as absolute
feature values (never increments) stamped with the key's newest event time.  The file batch
sources only exist because Feast requires one behind a push source: the high-rate offline
record is our own partitioned parquet history (``streaming.history``).

``ttl=0`` (no expiry): windows end at the key's newest event, so an idle key keeps its last
values instead of disappearing.
"""
from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a user")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="an item")
scenario = Entity(name="scenario", join_keys=["scenario"], value_type=ValueType.STRING,
                  description="a recommendation scenario (settings.scenarios)")

WINDOW_FIELDS = [Field(name=n, dtype=Int64) for n in ("imp_1h", "imp_24h", "imp_7d", "clk_1h", "clk_24h", "clk_7d")]
CTR_FIELDS = [Field(name="ctr_24h", dtype=Float32), Field(name="ctr_7d", dtype=Float32)]


def _push_source(name: str) -> PushSource:
    batch = FileSource(name=f"{name}_history", path=f"offline/{name}.parquet", timestamp_field="event_timestamp")
    return PushSource(name=f"{name}_push", batch_source=batch)


user_scenario_stats = FeatureView(
    name="user_scenario_stats",
    entities=[user, scenario],
    ttl=timedelta(0),
    schema=WINDOW_FIELDS + CTR_FIELDS + [
        Field(name="recent_clicks", dtype=Array(Int64)),
        Field(name="last_click_ms", dtype=Int64),
    ],
    source=_push_source("user_scenario_stats"),
    online=True,
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="total_imp_7d", dtype=Int64),
        Field(name="total_clk_7d", dtype=Int64),
        Field(name="scenario_click_share", dtype=Array(Float32)),
        Field(name="recent_clicks_all", dtype=Array(Int64)),
    ],
    source=_push_source("user_profile"),
    online=True,
)

item_scenario_stats = FeatureView(
    name="item_scenario_stats",
    entities=[item, scenario],
    ttl=timedelta(0),
    schema=WINDOW_FIELDS + CTR_FIELDS + [Field(name="trending", dtype=Float32)],
    source=_push_source("item_scenario_stats"),
    online=True,
)

ENTITIES = [user, item, scenario]
FEATURE_VIEWS = [user_scenario_stats, user_profile, item_scenario_stats]
