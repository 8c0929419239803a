"""The recall store on both backends: absolute writes, deletes, batched reads, keys; rows round-trip
bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from features.recall_store import RedisRecallStore, SqliteRecallStore, open_recall_store
from sassflow.contracts.recall import RecallRow
from tests.conftest import make_settings


def _row(n: int, seed: int) -> RecallRow:
    rng = np.random.default_rng(seed)
    return RecallRow(rng.integers(0, 2**62, n), rng.standard_normal(n) * 1000, float(rng.standard_normal()))


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return open_recall_store(make_settings(tmp_path))
    server = request.getfixturevalue("redis_server")
    s = make_settings(tmp_path, recall={"store": "redis", "redis_prefix": f"t{tmp_path.name}:"},
                      feast={"redis_connection_string": server.connection_string})
    return open_recall_store(s)


def test_rows_round_trip_and_deletes(store):
    assert isinstance(store, (SqliteRecallStore, RedisRecallStore))
    rows = {f"i2i|{i}|drama": _row(i, i) for i in range(5)} | {"trending|drama": _row(500, 9)}
    store.write(rows)
    assert store.read(list(rows)) == list(rows.values())  # exact: int64 ids and float64 log-weights
    assert store.read(["i2i|1|drama", "nope", "i2i|0|drama"]) == [rows["i2i|1|drama"], None, rows["i2i|0|drama"]]
    store.write({"i2i|1|drama": None, "i2i|2|drama": _row(3, 42)})
    assert store.read(["i2i|1|drama", "i2i|2|drama"]) == [None, _row(3, 42)]
    assert store.keys() == sorted(set(rows) - {"i2i|1|drama"})
    assert store.read([]) == []


def test_a_corrupt_value_is_refused():
    data = _row(3, 1).encode()
    assert RecallRow.decode(data) == _row(3, 1)
    with pytest.raises(ValueError, match="recall row of 3 items"):
        RecallRow.decode(data[:-1])
