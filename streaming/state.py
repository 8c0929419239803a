"""The state of a stateful stage in its two copies, and how one is rebuilt from the other.

The authoritative copy is the stage's changelog (a compacted Kafka topic, ``streaming.changelog``):
one record per state change, written in the same transaction as the input offsets it covers
(``streaming.commit``).  What compaction converges to -- the latest value of every key -- is the
*image* (``StateImage``).  Keys (UTF-8) and values (JSON):

* ``k|<entity id>|<scenario>`` -> that key's window state (``KeyState.to_json``, ``streaming.aggregate``);
* ``d|<input partition>|<event hour>|<chunk>`` -> a list of event ids the partition's deduper admitted
  in that hour (``streaming.dedup``).  Each commit writes an hour's new ids as new chunks, so an id is
  written once, and an hour that leaves the dedup horizon gets a tombstone per chunk (``DedupLog``);
* ``o|<input partition>`` -> ``{"next_offset", "watermark", "dedup_newest_ms"}``: the input position
  the image covers.

The local checkpoint (``CheckpointStore``, one JSON file per state owner) is a cache of the image
with the changelog end offset it matches (``changelog.end``); ``plan_restore`` decides from it how
much of the changelog a new owner has to read.  Both are pure data here: the Kafka side is
``streaming.changelog``.  JSON, not pickle: state moves between machines and is never executed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sassflow.files import write_text_atomic

CACHE_VERSION = 2  # 1: the checkpoints before the changelog (no changelog position)
DEDUP_CHUNK_IDS = 2000  # ids per dedup record: ~60 KB, far below any broker's message size limit
_JSON = {"separators": (",", ":")}


class CheckpointStore:
    """The local copy: one atomic JSON file per state owner (temp file, fsync, rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def save(self, name: str, meta: dict, **parts: str) -> None:
        """Save ``meta`` (changelog position, input positions...) with each of ``parts`` (JSON texts,
        e.g. the window state and the dedup state) under its own name, in one atomic file."""
        body = json.dumps(meta, **_JSON)[:-1]
        for key, text in parts.items():
            body += ("," if len(body) > 1 else "") + json.dumps(key) + ":" + text
        write_text_atomic(self.path(name), body + "}")

    def load(self, name: str) -> dict | None:
        try:
            with open(self.path(name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


def checkpoint_root(settings, group: str, topic: str) -> Path:
    return Path(settings.streaming.checkpoint_dir) / group / topic


def checkpoint_meta(changelog_topic: str, changelog_partition: int, changelog_end: int, positions: dict[int, dict],
                    now_ms: int) -> dict:
    """The local checkpoint's header: the changelog position its image matches, and the input positions."""
    return {"version": CACHE_VERSION, "changelog": {"topic": changelog_topic, "partition": changelog_partition,
                                                    "end": changelog_end},
            "saved_at_ms": now_ms, "positions": {str(p): pos for p, pos in positions.items()}}


def checkpoint_parts(features, dedup_logs: dict[int, "DedupLog"]) -> dict[str, str]:
    """The local checkpoint's JSON texts: the window state of every key (``features``: the owner's
    ``UserFeatures``/``ItemFeatures``) and the logged dedup chunks of every input partition."""
    dedup = "{" + ",".join(f'"{p}":{d.text()}' for p, d in sorted(dedup_logs.items())) + "}"
    return {"state": features.snapshot.text(), "dedup": dedup}


def feature_key(name: str) -> str:
    return f"k|{name}"


def dedup_key(partition: int, hour: int, chunk: int) -> str:
    return f"d|{partition}|{hour}|{chunk}"


def position_key(partition: int) -> str:
    return f"o|{partition}"


@dataclass
class StateImage:
    """The latest value of every changelog key of one state owner, parsed."""

    positions: dict[int, dict] = field(default_factory=dict)  # input partition -> position
    features: dict[str, list] = field(default_factory=dict)  # "<entity>|<scenario>" -> KeyState JSON
    dedup: dict[int, dict[int, dict[int, list]]] = field(default_factory=dict)  # partition -> hour -> chunk -> ids

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One changelog record (``value`` None: a tombstone)."""
        kind, _, rest = key.decode().partition("|")
        parsed = None if value is None else json.loads(value)
        if kind == "k":
            _put(self.features, rest, parsed)
        elif kind == "o":
            _put(self.positions, int(rest), parsed)
        elif kind == "d":
            partition, hour, chunk = (int(x) for x in rest.split("|"))
            hours = self.dedup.setdefault(partition, {})
            _put(hours.setdefault(hour, {}), chunk, parsed)
            if not hours[hour]:
                del hours[hour]
        else:
            raise ValueError(f"changelog record with an unknown key {key[:80]!r} (written by a newer version?)")

    def position(self, partition: int) -> dict:
        return {"next_offset": 0, "watermark": 0, "dedup_newest_ms": 0, **self.positions.get(partition, {})}

    def dedup_json(self, partition: int) -> dict:
        """The partition's deduper state in ``Deduper.from_json``'s format."""
        hours = self.dedup.get(partition, {})
        return {"newest_ms": self.position(partition)["dedup_newest_ms"],
                "hours": {h: [i for c in sorted(chunks) for i in chunks[c]] for h, chunks in hours.items()}}

    def dedup_log(self, partition: int, logged: bool = True) -> "DedupLog":
        """The chunk bookkeeping of the partition's ids (``logged`` False: none is on the changelog yet)."""
        hours = self.dedup.get(partition, {}) if logged else {}
        texts = {h: {c: json.dumps(ids, **_JSON) for c, ids in chunks.items()} for h, chunks in hours.items()}
        return DedupLog(partition, texts, {h: sum(len(ids) for ids in chunks.values()) for h, chunks in hours.items()})

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "StateImage":
        """From a local checkpoint: this version's (``CACHE_VERSION``) or the one before."""
        if saved.get("version") == CACHE_VERSION:
            return cls({int(p): v for p, v in saved["positions"].items()}, saved["state"],
                       {int(p): {int(h): {int(c): ids for c, ids in chunks.items()} for h, chunks in hours.items()}
                        for p, hours in saved["dedup"].items()})
        return _from_version_1(saved)


def _put(d: dict, key, value) -> None:
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value


def _from_version_1(saved: dict) -> StateImage:
    """A checkpoint written before the changelog: a user partition's (``partition``, ``next_offset``,
    ``watermark``, one deduper) or an item shard's (``offsets``, a deduper per partition)."""
    if "partition" in saved:
        offsets, dedups = {saved["partition"]: saved["next_offset"]}, {saved["partition"]: saved.get("dedup")}
    else:
        offsets, dedups = {int(p): o for p, o in saved["offsets"].items()}, saved.get("dedup", {})
    image = StateImage(features=saved["state"])
    for p, offset in offsets.items():
        d = dedups.get(p) or dedups.get(str(p)) or {"newest_ms": 0, "hours": {}}
        image.positions[p] = {"next_offset": offset, "watermark": saved.get("watermark", 0),
                              "dedup_newest_ms": d["newest_ms"]}
        image.dedup[p] = {int(h): {0: ids} for h, ids in d["hours"].items() if ids}
    return image


@dataclass
class RestorePlan:
    image: StateImage
    start: int  # changelog offset to read from
    source: str  # "cache", "cache+changelog", "changelog" or "cache, first changelog commit"
    relog: bool = False  # the changelog lacks this image: the next commit writes all of it


def plan_restore(saved: dict | None, changelog_end: int, now_ms: int, max_cache_age_ms: int) -> RestorePlan:
    """Where a new owner's state comes from, given its local checkpoint (None: missing) and the end of
    its changelog partition (the last stable offset, read once the previous owner is fenced):

    1. the changelog is empty (a first start with the changelog, or the topic was recreated) -> the
       checkpoint, whole, and the next commit writes all of it to the changelog;
    2. the checkpoint matches the changelog's end -> the checkpoint alone;
    3. the checkpoint is older -> the checkpoint, then the changelog from the checkpoint's end on (a
       key changed since has a record there, which compaction keeps); only while it is younger than
       ``max_cache_age_ms``, the topic's tombstone retention, after which a deletion may be gone;
    4. otherwise (no checkpoint, or one ahead of the changelog or too old) -> the changelog, whole."""
    if saved is None:
        return RestorePlan(StateImage(), 0, "changelog")
    if changelog_end == 0:
        return RestorePlan(StateImage.from_checkpoint(saved), 0, "cache, first changelog commit", relog=True)
    cached_end = saved["changelog"]["end"] if saved.get("version") == CACHE_VERSION else None
    if cached_end == changelog_end:
        return RestorePlan(StateImage.from_checkpoint(saved), changelog_end, "cache")
    if cached_end is not None and cached_end < changelog_end and now_ms - saved["saved_at_ms"] < max_cache_age_ms:
        return RestorePlan(StateImage.from_checkpoint(saved), cached_end, "cache+changelog")
    return RestorePlan(StateImage(), 0, "changelog")


class DedupLog:
    """Which ids of one partition's deduper are on the changelog, as chunks per event hour: each
    commit logs only the ids admitted since the last one, and an hour that left the horizon is
    deleted (a tombstone per chunk).  Chunk texts are kept for the local checkpoint."""

    def __init__(self, partition: int, chunks: dict[int, dict[int, str]] | None = None,
                 logged: dict[int, int] | None = None):
        self.partition = partition
        self.chunks = chunks or {}  # hour -> chunk number -> JSON text of its ids
        self.logged = logged or {}  # hour -> how many of the deduper's ids of that hour the chunks hold

    def changes(self, deduper) -> list[tuple[str, str | None]]:
        """The records that bring the changelog up to ``deduper`` (pruned first)."""
        deduper.prune()
        out: list[tuple[str, str | None]] = []
        for hour in [h for h in self.chunks if h not in deduper.by_hour]:
            out += [(dedup_key(self.partition, hour, c), None) for c in self.chunks.pop(hour)]
            self.logged.pop(hour, None)
        for hour, ids in deduper.by_hour.items():
            done = self.logged.get(hour, 0)
            chunks = self.chunks.setdefault(hour, {})
            for start in range(done, len(ids), DEDUP_CHUNK_IDS):
                number = max(chunks, default=-1) + 1
                chunks[number] = json.dumps(ids[start:start + DEDUP_CHUNK_IDS], **_JSON)
                out.append((dedup_key(self.partition, hour, number), chunks[number]))
            self.logged[hour] = len(ids)
            if not chunks:
                del self.chunks[hour]
        return out

    def text(self) -> str:
        """The chunks as the local checkpoint's JSON: {hour: {chunk: [ids]}}."""
        return "{" + ",".join(f'"{h}":{{' + ",".join(f'"{c}":{t}' for c, t in cs.items()) + "}"
                              for h, cs in self.chunks.items()) + "}"
