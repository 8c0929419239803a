"""`sassflow features check`: sampled online rows against their recomputation from the history."""
from __future__ import annotations

import json

from cli.main import build_parser
from features.store import OnlineWriter, apply_definitions
from sassflow.settings import Settings
from streaming.history import append_history
from streaming.replay import recompute, write_rows
from streaming.sources import SyntheticSource, events_frame


def test_check_counts_exactly_the_keys_that_differ(tmp_path, capsys):
    s = Settings(state_dir=tmp_path, streaming={"metrics_port": 0})
    df = events_frame(SyntheticSource(n_users=40, n_items=60, n_events=1500, seed=8, mean_gap_ms=60_000.0).events())
    append_history(s.streaming.offline_dir, df)
    writer = OnlineWriter(apply_definitions(s))
    rows = recompute(df, s.scenarios)
    write_rows(writer, rows)
    args = build_parser().parse_args(["features", "check", "--sample", "25"])
    assert args.func(args, s) == 0
    clean = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert clean["mismatched_keys"] == 0 and clean["examples"] == []
    assert clean["sampled_users"] == 25 and clean["sampled_keys"] > 50
    # corrupt one stored row: exactly that key is reported, with both values
    key = sorted(rows.user_scenario)[0]
    feats, ts = rows.user_scenario[key]
    writer.write("user_scenario_stats", [({"user_id": key[0], "scenario": key[1]},
                                          dict(feats, recent_clicks=feats["recent_clicks"][1:] + [999_999]), ts)])
    from streaming.check import check_features

    everyone = check_features(s, sample=10_000)  # every user and item: the corrupted key is sampled
    assert everyone["mismatched_keys"] == 1 and everyone["missing_keys"] == 0
    (ex,) = everyone["examples"]
    assert ex["entity"] == {"user_id": key[0], "scenario": key[1]} and 999_999 in ex["got"][0]["recent_clicks"]
