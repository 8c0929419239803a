"""The changelog's records and the local checkpoint, without a broker: a stage's state rebuilt from
its changelog (whole, compacted, or a checkpoint plus the tail after it) is the live state, and
``plan_restore`` reads only what the checkpoint lacks."""
from __future__ import annotations

import copy
import json
import random

import pytest

from streaming.aggregate import HOUR_MS, Ev, UserFeatures
from streaming.dedup import Deduper
from streaming.stages import OwnerLog
from streaming.state import (CACHE_VERSION, DEDUP_CHUNK_IDS, CheckpointStore, DedupLog, StateImage, checkpoint_meta,
                             checkpoint_parts, plan_restore)

SCEN = ["family", "thriller", "action", "comedy", "drama"]
DAY = 24 * HOUR_MS
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


def _stream(n=6000, seed=0):
    """~4 days of events of 40 users, with producer retries (a copy a few records later)."""
    rng, out, t = random.Random(seed), [], T0
    for i in range(n):
        t += rng.randrange(0, 120_000)
        e = Ev(f"e{i}", rng.randrange(40), rng.randrange(300), rng.choice(SCEN), rng.random() < 0.2, t)
        out.append(e)
        if rng.random() < 0.05:
            out.insert(len(out) - rng.randrange(0, 3), e)
    return out


class Owner:
    """One user-stage partition's live state and its changelog, as the stage keeps them."""

    def __init__(self):
        self.features, self.dedup = UserFeatures(SCEN), Deduper(DAY)
        self.dedup_log, self.log = DedupLog(0), OwnerLog(None, 0, None, {0: 0})
        self.next_offset, self.watermark = 0, 0
        self.changelog: list[tuple[bytes, bytes | None]] = []

    def process(self, offset: int, e: Ev) -> None:
        self.next_offset = offset + 1
        if self.dedup.admit(e.event_id, e.event_time):
            self.watermark = max(self.watermark, e.event_time)
            self.features.add(e)

    def position(self) -> dict:
        return {"next_offset": self.next_offset, "watermark": self.watermark, "dedup_newest_ms": self.dedup.newest_ms}

    def commit(self) -> int:
        """The records of one transaction onto the changelog; returns its end."""
        records = self.log.changes(self.features, {0: (self.dedup, self.dedup_log)}, {0: self.position()})  # the stage's
        self.changelog += [(k.encode(), None if v is None else v.encode()) for k, v in records]
        self.log.logged = {0: self.next_offset}
        return len(self.changelog)

    def checkpoint(self, end: int) -> dict:
        """The local checkpoint after a commit, through its file format."""
        store = CheckpointStore(self.root)
        store.save("p0", checkpoint_meta("t-user-changelog", 0, end, {0: self.position()}, T0),
                   **checkpoint_parts(self.features, {0: self.dedup_log}))
        return store.load("p0")


def _run(tmp_path, commit_every=97, checkpoint_at=None):
    owner = Owner()
    owner.root = tmp_path
    saved = None
    for offset, e in enumerate(_stream()):
        owner.process(offset, e)
        if offset % commit_every == 0:
            end = owner.commit()
            if checkpoint_at is not None and saved is None and offset >= checkpoint_at:
                saved = (owner.checkpoint(end), end)
    owner.commit()
    return owner, saved


def _image(records, image=None):
    image = image or StateImage()
    for k, v in records:
        image.apply(k, v)
    return image


def _compacted(records):
    """What compaction leaves: each key's last record, unless it is a tombstone, in log order."""
    last = {k: i for i, (k, _) in enumerate(records)}
    return [(k, v) for i, (k, v) in enumerate(records) if last[k] == i and v is not None]


def _same_state(owner: Owner, image: StateImage) -> None:
    users = UserFeatures(SCEN)
    users.load_json(json.loads(json.dumps(image.features)))
    every = set(owner.features.keys)
    assert set(users.keys) == every
    assert users.rows(every) == owner.features.rows(every)
    assert image.position(0) == owner.position()
    restored, live = Deduper.from_json(image.dedup_json(0), DAY), copy.deepcopy(owner.dedup)
    later = _stream(n=800, seed=1) + [Ev(e, 1, 1, "drama", False, live.newest_ms) for e in
                                      random.Random(2).sample(sorted(live.hour_of), 200)]
    decisions = [live.admit(e.event_id, e.event_time) for e in later]
    assert [restored.admit(e.event_id, e.event_time) for e in later] == decisions
    assert decisions.count(False) >= 200  # the remembered ids were recognised


def test_the_changelog_rebuilds_the_live_state_whole_or_compacted(tmp_path):
    owner, _ = _run(tmp_path)
    _same_state(owner, _image(owner.changelog))
    compacted = _compacted(owner.changelog)
    assert len(compacted) < len(owner.changelog) / 2  # compaction has something to drop
    _same_state(owner, _image(compacted))


def test_dedup_ids_are_logged_once_and_expired_hours_deleted(tmp_path):
    owner, _ = _run(tmp_path)
    written = [json.loads(v) for k, v in owner.changelog if k.startswith(b"d|") and v is not None]
    ids = [i for chunk in written for i in chunk]
    assert len(ids) == len(set(ids))  # each id once (the stream has no copy beyond the horizon)
    assert max(len(chunk) for chunk in written) <= DEDUP_CHUNK_IDS
    tombstones = {k for k, v in owner.changelog if k.startswith(b"d|") and v is None}
    live_hours = {int(k.split(b"|")[2]) for k, v in _compacted(owner.changelog) if k.startswith(b"d|")}
    assert tombstones and live_hours == set(owner.dedup.by_hour)  # ~a day of hours, not four
    assert max(live_hours) - min(live_hours) <= 25


def test_a_checkpoint_plus_the_changelog_after_it_is_the_whole_state(tmp_path):
    owner, (saved, cached_end) = _run(tmp_path, checkpoint_at=3000)
    end = len(owner.changelog)
    plan = plan_restore(saved, end, T0 + 1000, DAY)
    assert (plan.source, plan.start, plan.relog) == ("cache+changelog", cached_end, False)
    _same_state(owner, _image(owner.changelog[plan.start:], plan.image))
    # the tail after a checkpoint, compacted on its own, still completes it
    tail = _compacted(owner.changelog[cached_end:])
    _same_state(owner, _image(tail, StateImage.from_checkpoint(saved)))


def test_plan_restore_reads_only_what_the_checkpoint_lacks(tmp_path):
    owner, (saved, cached_end) = _run(tmp_path, checkpoint_at=3000)
    now, fresh = T0 + 1000, saved["saved_at_ms"]
    current = plan_restore(saved, cached_end, now, DAY)
    assert (current.source, current.start) == ("cache", cached_end)
    assert plan_restore(None, 500, now, DAY).source == "changelog"
    assert plan_restore(saved, cached_end - 1, now, DAY).source == "changelog"  # ahead of the changelog
    too_old = plan_restore(saved, cached_end + 10, fresh + DAY, DAY)  # a tombstone may be compacted away
    assert (too_old.source, too_old.start) == ("changelog", 0)
    empty = plan_restore(saved, 0, now, DAY)  # first start with a changelog, or the topic recreated
    assert (empty.source, empty.relog) == ("cache, first changelog commit", True)
    assert saved["version"] == CACHE_VERSION


def test_a_checkpoint_of_the_version_before_the_changelog_is_taken_over(tmp_path):
    """A partition checkpointed before the changelog existed: its state is kept, and the first commit
    logs all of it (a relog), so the changelog alone then rebuilds it."""
    owner, _ = _run(tmp_path)
    v1 = {"topic": "t", "partition": 0, "next_offset": owner.next_offset, "watermark": owner.watermark,
          "state": json.loads(owner.features.snapshot.text()), "dedup": json.loads(owner.dedup.snapshot_text())}
    plan = plan_restore(json.loads(json.dumps(v1)), 0, T0, DAY)
    assert plan.relog and plan.start == 0
    _same_state(owner, plan.image)
    taken = Owner()
    taken.features.load_json(plan.image.features)  # marked changed: all of it goes to the changelog
    taken.dedup = Deduper.from_json(plan.image.dedup_json(0), DAY)
    taken.dedup_log, taken.log = plan.image.dedup_log(0, logged=False), OwnerLog(None, 0, None, {})
    taken.next_offset, taken.watermark = owner.next_offset, owner.watermark
    taken.commit()
    _same_state(owner, _image(taken.changelog))


def test_an_unknown_record_is_an_error_not_a_silent_loss():
    with pytest.raises(ValueError, match="unknown key"):
        StateImage().apply(b"x|1", b"{}")
