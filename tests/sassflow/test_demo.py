"""The main job: `sassflow demo --quick` runs the whole loop and its summary says what happened."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_quick_end_to_end(kafka_broker, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SASSFLOW_", "AIRFLOW"))}
    env.update({
        "SASSFLOW_CONFIG": os.devnull,
        "SASSFLOW_STATE_DIR": str(tmp_path / "state"),
        # the session's broker: the demo uses it and leaves it running (it is not the demo's local one)
        "SASSFLOW_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
        "SASSFLOW_LOCAL_KAFKA__PORT": "19792",
        "SASSFLOW_STREAMING__METRICS_PORT": "0",
        "OMP_NUM_THREADS": "1",
    })
    # the synthetic source sized by the demo itself (users and items follow the events replayed)
    run = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--quick", "--source", "synthetic",
                          "--limit", "30000"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-6000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    assert summary["ok"] is True
    assert summary["events_total"] == 30_000
    assert summary["phase1"]["produced"]["events"] == summary["phase1"]["history_events"] == 24_000
    assert summary["phase2"]["history_events"] == 30_000  # every event in the history exactly once
    for phase in ("phase1", "phase2"):  # every consumer group has committed the whole topic
        assert summary[phase]["consumer_lag"] and set(summary[phase]["consumer_lag"].values()) == {0}
    for r in ("retrain1", "retrain2"):
        assert summary[r]["state"] == "success", summary[r]
        assert set(summary[r]["quality_test"]) >= {"sass", "pop"}
    # the gate's evidence per retrain: candidate, re-scored champion, popularity on the same data
    for r in ("retrain1", "retrain2"):
        gate = summary[r]["gate"]
        assert {"promoted", "reason", "candidate", "champion", "popularity"} <= set(gate)
        assert f"{gate['candidate']:.4f}" in gate["reason"] and f"{gate['popularity']:.4f}" in gate["reason"]
        assert gate["promoted"] == (gate["candidate"] > gate["popularity"]
                                    and (gate["champion"] is None or gate["candidate"] >= gate["champion"] - 0.02))
    # the synthetic structure is learnable at this size: SASS beats popularity, so it is served
    assert summary["retrain1"]["gate"]["promoted"] is True and summary["retrain1"]["gate"]["champion"] is None
    assert summary["retrain1"]["quality_test"]["sass"]["recall@50"] > summary["retrain1"]["quality_test"]["pop"]["recall@50"]
    assert summary["retrain2"]["gate"]["champion"] is not None  # the first model, re-scored
    first_bundle = summary["retrain1"]["bundle_id"]
    assert summary["served_before"]["bundle_id"] == first_bundle

    recs = summary["sample_recommendations"]
    assert {r["scenario"] for r in recs} == {"family", "thriller", "action", "comedy", "drama"}
    assert all(r["status"] == 200 and r["items"] for r in recs)
    assert all(r["fallback"] for r in recs if r["user_id"] == 10**12)  # the unknown user: popular items

    swap = summary["hot_swap"]
    assert swap["failed"] == 0 and swap["requests"] > 0
    if summary["retrain2"]["gate"]["promoted"]:
        assert swap["swapped"] and swap["new_bundle"] == summary["retrain2"]["bundle_id"] != first_bundle
        assert summary["served_after"]["bundle_id"] == swap["new_bundle"]
        assert swap["bundles_seen"][0] == first_bundle
    report = Path(summary["report"])
    assert report.exists() and "<img" in report.read_text()



def test_demo_stops_when_a_stage_died_or_left_events_behind():
    from cli.demo.run import require_drained

    require_drained("replay1", 0, {"g": 0, "g-items-0-of-1": 0})
    with pytest.raises(RuntimeError, match="exit code 1"):
        require_drained("replay1", 1, {"g": 0})
    with pytest.raises(RuntimeError, match="g-items-0-of-1.*120"):
        require_drained("replay2", 0, {"g": 0, "g-items-0-of-1": 120})
