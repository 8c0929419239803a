"""The item catalogue contract: what an item *is* (its content), as opposed to what users did with it.

On the wire a catalogue event is one compact JSON object on the items topic
(``kafka.items_topic``), Kafka key = ``str(item_id)`` (one item's versions keep their order)::

    {"event_id": "ml-item-1193", "item_id": 1193, "title": "One Flew Over the Cuckoo's Nest",
     "tags": ["Drama"], "year": 1975, "scenarios": ["drama"], "event_time": 978300760000}

| field        | rule                                                                              |
|--------------|-----------------------------------------------------------------------------------|
| event_id     | string, 1-128 chars (dedup key)                                                   |
| item_id      | integer 0 .. 2^63-1 (strict, as in the event contract)                            |
| title        | string, 1-512 chars                                                               |
| tags         | list of at most 32 strings of 1-64 chars (genres, categories), optional           |
| year         | integer 1800 .. 2100, optional                                                    |
| attributes   | object of at most 32 keys, values string/number/bool, optional                    |
| scenarios    | the surfaces the item is shown on, each in ``settings.scenarios``; optional: all  |
| image        | base64 of a PNG of at most ``MAX_IMAGE_SIDE`` px a side, optional                 |
| event_time   | epoch milliseconds, 2000-01-01 .. 2100-01-01                                      |

``parse_item`` raises ``EventError`` only, with the event contract's reason codes (``oversized``,
``encoding``, ``not_json``, ``not_object``, ``missing_field``, ``wrong_type``, ``invalid_value``,
``unknown_field``, ``unknown_scenario``) plus ``bad_image`` (not base64, not a PNG, too large);
malformed catalogue events go to ``kafka.items_dlq_topic`` with that reason, as click events do.

The offline catalogue history is ``<offline_dir>/items/<segment>.parquet`` with ``ITEM_SCHEMA``; a
segment is named after the Kafka offsets it covers (``segment_name``), so appends are idempotent.
The latest version of an item (largest ``event_time``, then offset) is the one that counts.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sassflow.contracts.events import (  # one set of byte-level checks and error messages for both contracts
    MAX_CONTEXT_KEYS, MAX_EVENT_TIME_MS, MAX_ID, MIN_EVENT_TIME_MS, EventError, _decode, _describe,
)

MAX_TAGS = 32
MAX_IMAGE_SIDE = 64  # posters are thumbnails: the content tower reads IMAGE_SIDE x IMAGE_SIDE
IMAGE_SIDE = 16  # what the image encoder sees (images are resized to it)


class ItemEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    item_id: int = Field(ge=0, le=MAX_ID)
    title: str = Field(min_length=1, max_length=512)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    year: int | None = Field(default=None, ge=1800, le=2100)
    attributes: dict[str, str | int | float | bool] | None = None
    scenarios: list[str] | None = Field(default=None, min_length=1)
    image: str | None = Field(default=None, min_length=1)
    event_time: int = Field(ge=MIN_EVENT_TIME_MS, le=MAX_EVENT_TIME_MS, description="epoch milliseconds")

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, v):
        bad = [t for t in v if not 1 <= len(t) <= 64]
        if bad:
            raise ValueError(f"tags must be 1-64 characters, got {bad[0][:70]!r}")
        return v

    @field_validator("attributes")
    @classmethod
    def _small_attributes(cls, v):
        if v is not None and len(v) > MAX_CONTEXT_KEYS:
            raise ValueError(f"attributes has {len(v)} keys, at most {MAX_CONTEXT_KEYS} allowed")
        return v

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def key(self) -> bytes:
        return str(self.item_id).encode()

    @property
    def event_type(self) -> str:
        """What the producer counts it as (``streaming.produce`` tallies messages by type)."""
        return "item"

    def shown_in(self, scenarios: list[str]) -> list[str]:
        """The scenarios of the item (all configured ones when the event names none), settings order."""
        return [s for s in scenarios if self.scenarios is None or s in self.scenarios]


def decode_image(data: str) -> np.ndarray:
    """A catalogue event's image field -> uint8 [IMAGE_SIDE, IMAGE_SIDE, 3] (RGB). Raises
    ``EventError("bad_image")``."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError("bad_image", f"image is not base64: {exc}") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise EventError("bad_image", "image is not a PNG")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if max(img.size) > MAX_IMAGE_SIDE:
                raise EventError("bad_image", f"image is {img.size[0]}x{img.size[1]}, at most "
                                              f"{MAX_IMAGE_SIDE} px a side allowed")
            rgb = img.convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise EventError("bad_image", f"image is not a readable PNG: {exc}") from None


def encode_image(pixels: np.ndarray) -> str:
    """uint8 [H, W, 3] -> the base64 PNG a catalogue event carries."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def parse_item(raw: bytes | None, scenarios: list[str] | set[str], max_bytes: int = 65536) -> ItemEvent:
    """Validate one catalogue message (JSON, fields, scenarios, image). Raises ``EventError``."""
    obj = _decode(raw, max_bytes)
    try:
        item = ItemEvent.model_validate(obj)
    except ValidationError as exc:
        raise _describe(exc) from None
    unknown = sorted(set(item.scenarios or ()) - set(scenarios))
    if unknown:
        raise EventError("unknown_scenario", f"scenarios {unknown} are not in {sorted(scenarios)}")
    if item.image is not None:
        decode_image(item.image)
    return item


# --------------------------------------------------------------------------- offline catalogue history

ITEM_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("item_id", pa.int64()), ("title", pa.string()),
    ("tags", pa.list_(pa.string())), ("year", pa.int64()), ("attributes", pa.string()),  # JSON text
    ("scenarios", pa.list_(pa.string())), ("image", pa.string()), ("event_time", pa.int64()),
    ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
])
ITEM_COLUMNS = ITEM_SCHEMA.names


def items_dir(offline_dir) -> Path:
    return Path(offline_dir) / "items"


def item_row(item: ItemEvent, partition: int, offset: int) -> dict:
    """One catalogue history row (``ITEM_COLUMNS``)."""
    return {"event_id": item.event_id, "item_id": item.item_id, "title": item.title, "tags": list(item.tags),
            "year": item.year, "attributes": json.dumps(item.attributes) if item.attributes is not None else None,
            "scenarios": item.scenarios, "image": item.image, "event_time": item.event_time,
            "kafka_partition": partition, "kafka_offset": offset}


def item_from_row(row: dict) -> ItemEvent:
    """A history row back as the event it was (already validated when it was written)."""
    fields = {k: row[k] for k in ("event_id", "item_id", "title", "event_time")}
    fields["tags"] = list(row.get("tags") if row.get("tags") is not None else [])
    for name in ("year", "image"):
        if row.get(name) is not None and row.get(name) == row.get(name):  # NaN-safe
            fields[name] = int(row[name]) if name == "year" else row[name]
    if row.get("scenarios") is not None:
        fields["scenarios"] = list(row["scenarios"])
    if row.get("attributes"):
        fields["attributes"] = json.loads(row["attributes"])
    return ItemEvent.model_construct(**fields)
