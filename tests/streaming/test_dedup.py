"""The pure event-id deduper: one copy per id within the horizon, the same decisions whatever the
checkpoint boundaries, state through its JSON checkpoint format."""
from __future__ import annotations

import json
import random

from streaming.dedup import Deduper

H = 3_600_000
DAY = 24 * H
T0 = 1_700_000_000_000 - 1_700_000_000_000 % H


def _stream(n=3000, seed=0):
    """Events over ~3 days with producer retries: a copy re-sent a few records (and minutes) later."""
    rng = random.Random(seed)
    out, t = [], T0
    for i in range(n):
        t += rng.randrange(0, 90_000)
        out.append((f"e{i}", t))
        if rng.random() < 0.1:
            out.append((f"e{i}", t))  # the same event at a later offset
    for k in range(len(out) - 1, 0, -1):  # retries arrive a little later, not right behind
        if rng.random() < 0.3:
            j = max(0, k - rng.randrange(1, 20))
            out[k], out[j] = out[j], out[k]
    return out


def _decisions(stream, restart_every=None, horizon=DAY):
    d, out = Deduper(horizon), []
    for k, (event_id, t) in enumerate(stream):
        out.append(d.admit(event_id, t))
        if restart_every and k % restart_every == 0:  # checkpoint, restart from it
            d = Deduper.from_json(json.loads(d.snapshot_text()), horizon)
    return out


def test_each_id_is_admitted_once_and_copies_counted():
    stream = _stream()
    admitted = [s for s, ok in zip(stream, _decisions(stream)) if ok]
    assert len(admitted) == len({e for e, _ in stream})
    assert len(stream) - len(admitted) > 200  # the copies were there and dropped


def test_decisions_do_not_depend_on_checkpoint_boundaries():
    stream = _stream(seed=1)
    assert _decisions(stream, restart_every=7) == _decisions(stream) == _decisions(stream, restart_every=331)


def test_state_is_bounded_by_the_horizon():
    d = Deduper(DAY)
    for i in range(5 * 24 * 60):  # five days, one event a minute
        d.admit(f"e{i}", T0 + i * 60_000)
    d.prune()
    assert 24 * 60 <= len(d.hour_of) <= 26 * 60  # about one day of ids
    assert d.admit("e0", T0) is True  # a copy of an event older than the horizon is not recognised
    assert d.admit(f"e{5 * 24 * 60 - 1}", T0 + (5 * 24 * 60 - 1) * 60_000) is False
