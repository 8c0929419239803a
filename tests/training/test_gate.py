"""The champion/challenger gate: candidate, re-scored champion and popularity on the same
validation data; nothing worse than popularity is ever promoted."""
import numpy as np
import pytest
import torch

from training.baselines import build_model, fit
from training.export import export_artifacts
from training.gate import champion_scorer, count_queries, fresh_eval_set, gate_scores
from training.pipeline import register_and_gate
from training.registry import ModelRegistry
from training.trainer import TrainConfig


@pytest.fixture(scope="module")
def trained(syn_data, tmp_path_factory):
    """A SASS trained on the shared synthetic data (it beats popularity there), exported once."""
    from sassflow.settings import Settings

    ts = Settings(state_dir="/nonexistent", training={"batch_size": 256}).training
    f = fit("sass", syn_data, ts, TrainConfig.from_settings(ts, progress=False))
    out = tmp_path_factory.mktemp("trained") / "model"
    export_artifacts(f.model, out, syn_data, extra={"window": list(syn_data.window)})
    return out


@pytest.fixture
def untrained(syn_data, settings, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "untrained"
    export_artifacts(build_model(syn_data, settings.training).eval(), out, syn_data,
                     extra={"window": list(syn_data.window)})
    return out


def _gate(settings, model_dir, syn_events, syn_data, metrics=None):
    metrics = metrics or {"val": {"recall@50": {"mean": 0.0}}}
    return register_and_gate(settings, model_dir, metrics, events=syn_events, data=syn_data)


def test_first_model_must_beat_popularity(untrained, trained, settings, syn_events, syn_data):
    r = _gate(settings, untrained, syn_events, syn_data)
    assert r["candidate"] < r["popularity"] and r["champion"] is None
    assert not r["promoted"] and "does not beat popularity" in r["reason"]
    for number in (r["candidate"], r["popularity"]):
        assert f"{number:.4f}" in r["reason"]
    registry = ModelRegistry.from_settings(settings)
    assert registry.promoted() is None and registry.get(r["version"]).status == "rejected"
    r = _gate(settings, trained, syn_events, syn_data)
    assert r["promoted"] and r["candidate"] > r["popularity"] and "first promoted model" in r["reason"]


def test_champion_is_rescored_on_the_candidates_data(trained, untrained, settings, syn_events, syn_data):
    # the champion recorded an inflated validation recall: the gate does not read it, it re-scores
    first = _gate(settings, trained, syn_events, syn_data, metrics={"val": {"recall@50": {"mean": 0.99}}})
    assert first["promoted"]
    same = _gate(settings, trained, syn_events, syn_data)
    assert same["champion"] == pytest.approx(same["candidate"], abs=1e-6)  # the same model, scored alike
    assert same["promoted"] and f"v{first['version']} {same['champion']:.4f} (re-scored)" in same["reason"]
    worse = _gate(settings, untrained, syn_events, syn_data)
    assert not worse["promoted"] and worse["champion"] == pytest.approx(same["champion"], abs=1e-6)
    assert ModelRegistry.from_settings(settings).promoted().id == same["version"]


def test_a_tolerated_drop_below_the_champion_still_needs_to_beat_popularity(trained, settings, syn_events,
                                                                           syn_data):
    assert _gate(settings, trained, syn_events, syn_data)["promoted"]
    settings.training.quality_tolerance = 1.0  # any drop below the champion is tolerated ...
    bad = build_model(syn_data, settings.training).eval()
    export_artifacts(bad, settings.state_dir / "bad", syn_data, extra={"window": list(syn_data.window)})
    r = _gate(settings, settings.state_dir / "bad", syn_events, syn_data)
    assert not r["promoted"] and "does not beat popularity" in r["reason"]  # ... but not one below popularity


def test_fresh_validation_clicks_are_those_after_the_champions_window(syn_events, syn_data):
    val = syn_data.evals["val"]
    clicks = syn_events[syn_events["event_type"] == "click"]["event_time"]
    middle = int(clicks.quantile(0.9))
    fresh = fresh_eval_set(syn_events, syn_data, middle)
    assert 0 < count_queries(fresh) < count_queries(val)
    assert sum(map(len, fresh.targets)) < sum(map(len, val.targets))
    assert count_queries(fresh_eval_set(syn_events, syn_data, int(syn_events["event_time"].max()))) == 0
    assert fresh_eval_set(syn_events, syn_data, None) is val


def test_champion_scores_only_the_items_it_can_serve(trained, syn_events, syn_data):
    from training.data import prepare

    # the champion knows the first 2 % of the events; the candidate's data has every event
    early = syn_events.iloc[: int(len(syn_events) * 0.02)]
    champ_data = prepare(early, syn_data.scenarios)
    export_artifacts(build_model(champ_data, _ts()).eval(), trained.parent / "champ", champ_data)
    score = champion_scorer(trained.parent / "champ", syn_data)
    queries = {k: v[:4] for k, v in syn_data.evals["val"].queries.items()}
    unknown = 0
    for k in range(syn_data.n_scenarios):
        s = score(k, queries, syn_data.catalogs[k]).numpy()
        known = np.isin(syn_data.items.ids[syn_data.catalogs[k] - 1], champ_data.items.ids[champ_data.catalogs[k] - 1])
        assert np.isneginf(s[:, ~known]).all() and np.isfinite(s[:, known]).all()
        unknown += int((~known).sum())
    assert unknown > 0

def _ts():
    from sassflow.settings import Settings

    return Settings(state_dir="/nonexistent").training


def test_gate_scores_use_one_query_set(trained, syn_events, syn_data):
    s = gate_scores(syn_events, syn_data, trained, None)
    assert s.queries == count_queries(syn_data.evals["val"]) and s.fresh_after_ms is None
    assert 0 < s.popularity < s.candidate <= 1
