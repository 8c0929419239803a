"""Produce → consume round trips against the real broker, with exact counts."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from kafka import KafkaProducer

from streaming.topics import ensure_topics
from streaming.produce import produce_events, read_back
from streaming.sources import MovieLensSource, SyntheticSource, events_frame

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_round_trip_exact(kafka):
    ensure_topics(kafka)
    source = SyntheticSource(n_users=200, n_items=500, n_events=20_000, scenarios=kafka.scenarios, seed=11)
    expected = Counter((e.scenario, e.event_type) for e in source.events())
    result = produce_events(kafka, source.events(), show_progress=False)
    assert result.events == 20_000
    back = read_back(kafka, show_progress=False)
    assert back.messages == back.valid == back.distinct_event_ids == 20_000
    assert back.by_scenario_type == expected


def test_malformed_messages_on_the_wire_are_counted_by_reason(kafka):
    ensure_topics(kafka)
    producer = KafkaProducer(**kafka.kafka.client_kwargs())
    good = next(iter(SyntheticSource(n_users=5, n_items=5, n_events=1, scenarios=kafka.scenarios).events()))
    bad = [b"{oops", json.dumps({**json.loads(good.to_bytes()), "scenario": "nowhere"}).encode(),
           json.dumps({**json.loads(good.to_bytes()), "user_id": "x"}).encode(), b"x" * 5000]
    for value in [good.to_bytes(), *bad]:
        producer.send(kafka.kafka.events_topic, key=b"1", value=value)
    producer.flush()
    producer.close()
    back = read_back(kafka, show_progress=False)
    assert back.messages == 5 and back.valid == 1
    assert back.invalid == Counter({"not_json": 1, "unknown_scenario": 1, "wrong_type": 1, "oversized": 1})


def test_synthetic_source_is_deterministic_and_planted():
    a = SyntheticSource(n_users=100, n_items=300, n_events=5000, seed=5)
    b = SyntheticSource(n_users=100, n_items=300, n_events=5000, seed=5)
    ea, eb = list(a.events()), list(b.events())
    assert ea == eb and len(ea) == 5000
    times = [e.event_time for e in ea]
    assert times == sorted(times)
    # clicks follow the planted affinity: clicked (user, item) pairs score higher than shown-only ones
    frame = events_frame(ea)
    idx = {s: i for i, s in enumerate(a.scenarios)}
    aff = a.truth.affinity(frame.user_id.to_numpy(), frame.item_id.to_numpy(), 0)  # shape check
    assert aff.shape == (5000,)
    per = [a.truth.affinity([u], [i], idx[s])[0] for u, i, s in zip(frame.user_id, frame.item_id, frame.scenario)]
    frame["aff"] = per
    means = frame.groupby("event_type")["aff"].mean()
    assert means["click"] > means["impression"] + 0.05


def _tiny_movielens(folder: Path) -> int:
    folder.mkdir(parents=True)
    (folder / "movies.csv").write_text("item_id,title,year,genres\n1,Toy,1995,Animation|Comedy\n"
                                       "2,Heat,1995,Action|Crime\n3,Up,2009,Drama\n")
    (folder / "users.csv").write_text("user_id,gender,age,occupation,zip\n1,F,1,10,1\n2,M,25,3,2\n")
    rows = [(1, 1, 5, 100), (2, 2, 3, 101), (1, 3, 4, 102), (2, 1, 2, 103), (1, 2, 4, 104)]
    with gzip.open(folder / "ratings.csv.gz", "wt") as fh:
        fh.write("user_id,item_id,rating,timestamp\n")
        fh.writelines(f"{u},{i},{r},{t + 1_000_000_000}\n" for u, i, r, t in rows)
    (folder.parent / "scenarios.json").write_text(json.dumps({"scenarios": [
        {"id": 0, "name": "family", "genres": ["Animation"]},
        {"id": 1, "name": "thriller", "genres": ["Crime"]},
        {"id": 2, "name": "action", "genres": ["Action"]},
        {"id": 3, "name": "comedy", "genres": ["Comedy"]},
        {"id": 4, "name": "drama", "genres": ["Drama"]}]}))
    return len(rows) + sum(1 for r in rows if r[2] >= 4)


def test_movielens_replay_rules(tmp_path):
    n = _tiny_movielens(tmp_path / "ds" / "ml")
    src = MovieLensSource(tmp_path / "ds" / "ml")
    events = list(src.events())
    assert len(events) == n == 8 == src.n_events
    assert [(e.item_id, e.scenario, e.event_type) for e in events[:3]] == [
        (1, "family", "impression"), (1, "family", "click"), (2, "thriller", "impression")]
    assert events[0].event_time == 1_000_000_100_000
    from sassflow.datasets import load_events

    frame = load_events(tmp_path / "ds" / "ml")  # training's view of the folder: the same events
    assert list(frame.event_id) == [e.event_id for e in events]
    assert list(frame.event_type) == [e.event_type for e in events]


def test_cli_produce_movielens_and_read_back(kafka, tmp_path):
    data = tmp_path / "ds" / "ml"
    n = _tiny_movielens(data)
    env = {**os.environ, "SASSFLOW_STATE_DIR": str(tmp_path / "cli"),
           "SASSFLOW_KAFKA__BOOTSTRAP_SERVERS": kafka.kafka.bootstrap_servers,
           "SASSFLOW_KAFKA__EVENTS_TOPIC": kafka.kafka.events_topic,
           "SASSFLOW_KAFKA__DLQ_TOPIC": kafka.kafka.dlq_topic}
    cli = [sys.executable, "-m", "cli.main"]
    out = subprocess.run([*cli, "produce", "--source", "movielens", "--data", str(data), "--limit", "6"],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["events"] == 6 < n
    back = subprocess.run([*cli, "readback"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert back.returncode == 0, back.stderr
    counts = json.loads(back.stdout.strip().splitlines()[-1])
    assert counts["messages"] == counts["valid"] == counts["distinct_event_ids"] == 6
