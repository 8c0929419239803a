"""The one definitions module of the sassflow Feast repo, derived from the feature contract
(``sassflow.contracts.features``): an entity per join key, a feature view per contract view.

Every view is fed by a push source; values are written by ``streaming/`` as absolute feature
values (never increments) stamped with the key's newest event time.  The file batch sources only
exist because Feast requires one behind a push source: the high-rate offline record is our own
partitioned parquet history (``sassflow.contracts.history``).

``ttl=0`` (no expiry): an idle key keeps its last row, whose tiles ``features.windows`` reads as of the
read time, so its windows empty out as time passes (Feast's TTL is not applied on the online read path).
"""
from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

from sassflow.contracts import features as contract

_VALUE_TYPES = {contract.INT64: ValueType.INT64, contract.STRING: ValueType.STRING}
_DTYPES = {contract.INT64: Int64, contract.FLOAT32: Float32, contract.STRING: String,
           contract.INT64_LIST: Array(Int64), contract.FLOAT32_LIST: Array(Float32)}
_ENTITY_NAMES = {"user_id": "user", "item_id": "item", "scenario": "scenario"}
_ENTITY_DOCS = {"user_id": "a user", "item_id": "an item",
                "scenario": "a recommendation scenario (settings.scenarios)"}

ENTITIES = {key: Entity(name=_ENTITY_NAMES[key], join_keys=[key], value_type=_VALUE_TYPES[dtype],
                        description=_ENTITY_DOCS[key])
            for view in contract.VIEWS for key, dtype in view.entity_keys}


def _push_source(name: str) -> PushSource:
    batch = FileSource(name=f"{name}_history", path=f"offline/{name}.parquet", timestamp_field="event_timestamp")
    return PushSource(name=f"{name}_push", batch_source=batch)


def feature_view(view: contract.View) -> FeatureView:
    return FeatureView(
        name=view.name,
        entities=[ENTITIES[k] for k in view.join_keys],
        ttl=timedelta(0),
        schema=[Field(name=f.name, dtype=_DTYPES[f.dtype], description=f.description) for f in view.features],
        source=_push_source(view.name),
        online=True,
        description=view.description,
    )


FEATURE_VIEWS = [feature_view(v) for v in contract.VIEWS]
