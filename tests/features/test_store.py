"""The Feast repo against the real embedded (SQLite) and Redis online stores."""
from __future__ import annotations

from pydantic import SecretStr

from features.store import OnlineWriter, apply_definitions, write_repo_yaml
from sassflow.settings import Settings

ROW = {"minute_tiles": [28_333_333, 3, 1], "hour_tiles": [472_221, 1, 1, 472_222, 4, 1],
       "recent_clicks": [7, 3]}
TILES = {"minute_tiles": [28_333_333, 3, 1], "hour_tiles": [472_222, 4, 1]}


def _roundtrip(settings):
    store = apply_definitions(settings)
    assert {fv.name for fv in store.list_feature_views()} == {"user_scenario_stats", "user_profile", "item_scenario_stats"}
    w = OnlineWriter(store)
    key = {"user_id": 42, "scenario": "drama"}
    w.write("user_scenario_stats", [(key, ROW, 1_700_000_000_500)])
    # a second absolute update within the same event second must win (late event, same newest time)
    w.write("user_scenario_stats", [(key, dict(ROW, hour_tiles=[472_221, 2, 1, 472_222, 4, 1]), 1_700_000_000_500)])
    ts, got = w.read("user_scenario_stats", [key])[0]
    assert ts // 1000 == 1_700_000_000 and got["hour_tiles"][1] == 2 and got["recent_clicks"] == [7, 3]
    # serving's one call: user in scenario + profile
    w.write("user_profile", [({"user_id": 42}, {"scenario_hour_tiles": [472_222, 4, 6, 2],
                                                 "recent_clicks_all": [7, 3]}, 1_700_000_000_500)])
    out = store.get_online_features(
        features=["user_scenario_stats:hour_tiles", "user_scenario_stats:recent_clicks",
                  "user_profile:scenario_hour_tiles"],
        entity_rows=[{"user_id": 42, "scenario": "drama"}]).to_dict()
    assert out["hour_tiles"] == [[472_221, 2, 1, 472_222, 4, 1]] and out["recent_clicks"] == [[7, 3]]
    assert out["scenario_hour_tiles"] == [[472_222, 4, 6, 2]]
    assert w.read("user_scenario_stats", [{"user_id": 43, "scenario": "drama"}]) == [(None, None)]


def test_sqlite_default_store(tmp_path):
    s = Settings(state_dir=tmp_path)
    _roundtrip(s)
    assert (tmp_path / "feast" / "online.db").exists()


def test_redis_store_with_sql_registry(tmp_path, redis_server):
    s = Settings(state_dir=tmp_path, feast={"online_store": "redis",
                                            "redis_connection_string": redis_server.connection_string,
                                            "registry_url": f"sqlite:///{tmp_path}/registry.db"})
    _roundtrip(s)
    text = write_repo_yaml(s).read_text()
    assert "${SASSFLOW_FEAST__REDIS_CONNECTION_STRING}" in text and redis_server.connection_string not in text
    assert "registry_type: 'sql'" in text and "${SASSFLOW_FEAST__REGISTRY_URL}" in text
    assert isinstance(s.feast.redis_connection_string, SecretStr)


def test_cli_apply(tmp_path):
    from cli.main import build_parser

    s = Settings(state_dir=tmp_path)
    args = build_parser().parse_args(["features", "apply"])
    assert args.func(args, s) == 0
    assert (tmp_path / "feast" / "registry.db").exists()


def test_redis_fast_writer_writes_what_feast_writes(tmp_path, redis_server):
    """OnlineWriter's direct Redis path leaves every hash byte-identical to Feast's own write."""
    import redis

    s = Settings(state_dir=tmp_path, feast={"online_store": "redis", "project": "fastpath",
                                            "redis_connection_string": redis_server.connection_string})
    w = OnlineWriter(apply_definitions(s))
    assert w.redis is not None
    rows = {
        "user_scenario_stats": [({"user_id": 42, "scenario": "drama"}, ROW, 1_700_000_000_500),
                                ({"user_id": 2**40, "scenario": "family"}, dict(ROW, recent_clicks=[], minute_tiles=[]),
                                 1_700_000_001_999)],
        "user_profile": [({"user_id": 42}, {"scenario_hour_tiles": [472_221, 0, 3, 1, 472_222, 2, 5, 0],
                                            "recent_clicks_all": [7, 3]}, 1_700_000_000_001)],
        "item_scenario_stats": [({"item_id": 9, "scenario": "action"}, TILES, 1_699_999_999_000)],
    }
    host, port = redis_server.connection_string.split(":")
    r = redis.Redis(host=host, port=int(port))

    def dump():
        return {k: r.hgetall(k) for k in sorted(r.scan_iter(match=b"*fastpath"))}

    fast = w.redis
    for view, view_rows in rows.items():
        w.redis = None
        w.write(view, view_rows)  # Feast's online_write_batch
    feast_written = dump()
    r.delete(*feast_written)
    w.redis = fast
    for view, view_rows in rows.items():
        w.write(view, view_rows)
    assert dump() == feast_written and len(feast_written) == 4
    assert w.read("user_scenario_stats", [{"user_id": 42, "scenario": "drama"}])[0][1]["recent_clicks"] == [7, 3]
