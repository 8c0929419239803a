"""The DAG-callable functions and the end-to-end pipeline on small synthetic data."""
import json

import numpy as np

from training import pipeline
from serving.towers import load_sass_tower as load_user_encoder
from training.registry import ModelRegistry


def test_train_pipeline_exports_registers_gates_and_reports(syn_events, settings):
    res = pipeline.train_pipeline(settings, syn_events, baselines=("pop",), progress=False)
    out = res["artifact_dir"]
    enc = load_user_encoder(out)
    assert enc.encode([{"user_id": 1}], "family").shape == (1, settings.training.embedding_dim)
    assert res["registry"]["promoted"]  # the first model passes the gate: it beats popularity
    assert res["registry"]["candidate"] > res["registry"]["popularity"]
    reg = ModelRegistry(settings.training.registry_url.get_secret_value())
    v = reg.promoted()
    assert v.id == res["registry"]["version"] and reg.verify_artifact(v.id)
    assert v.metrics["val"]["recall@50"]["mean"] == res["metrics"]["val"]["recall@50"]["mean"]
    assert v.data_start_ms == int(syn_events["event_time"].min())
    rdir = res["report"]["dir"]
    for png in ("loss_curves.png", "recall_per_scenario.png"):
        with open(f"{rdir}/{png}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(res["baselines"]) == {"pop"}


def test_stepwise_functions_from_offline_history(syn_events, settings, tmp_path):
    from streaming.history import append_history

    ev = syn_events.assign(kafka_partition=np.int32(0), kafka_offset=np.arange(len(syn_events), dtype=np.int64))
    append_history(settings.streaming.offline_dir, ev)
    end = int(ev["event_time"].max()) + 1
    built = pipeline.build_training_set(settings, None, end, tmp_path / "set")
    assert built["events"] == len(ev)
    pre = pipeline.pretrain(settings, tmp_path / "set", tmp_path / "pre")
    assert pre["steps"] > 0
    fine = pipeline.finetune(settings, tmp_path / "set", tmp_path / "pre", tmp_path / "model")
    assert fine["files"] >= 3 + 3 * len(settings.scenarios)
    metrics = pipeline.evaluate(settings, tmp_path / "set", tmp_path / "model")
    assert 0 < metrics["val"]["recall@50"]["mean"] <= 1
    gate = pipeline.register_and_gate(settings, tmp_path / "model", dataset_dir=tmp_path / "set")
    assert gate["promoted"] and gate["candidate"] > gate["popularity"] and gate["champion"] is None
    assert fine["epochs"] >= fine["best_epoch"] >= 1 and len(fine["val_curve"]) == fine["epochs"]
    json.dumps([built, pre, fine, metrics, gate])  # everything a DAG task returns is JSON-able
