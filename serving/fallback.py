"""The popularity bundle: what the service serves while no model has passed the quality gate.

It is built from a model artifact of the current data window (the rejected candidate's): per
scenario, the catalog and its items by training click count.  Its tower is ``PopularityTower``
(``serving.towers``), which places nobody, so every answer comes from the popular fallback and
says ``fallback: true``; ``/version`` shows ``kind: popularity`` and model version ``popularity``.
The item vectors are the candidate's, only because a bundle's scenarios need an index; nothing
queries them.
"""
from __future__ import annotations

from sassflow.contracts.artifacts import ModelArtifact
from sassflow.settings import Settings
from serving.bundle import BundleError, publish_bundle, write_bundle
from serving.towers import POPULARITY

MODEL_VERSION = "popularity"


def build_popularity_bundle(settings: Settings, artifact_dir, reason: str = "", publish: bool = True):
    """A popularity bundle from ``artifact_dir``'s catalogs; published unless ``publish`` is False.
    ``reason`` (why no model is served) goes into the tower config."""
    artifact = ModelArtifact(artifact_dir)
    try:
        scenarios = {s: artifact.read_scenario(s) for s in settings.scenarios}
    except FileNotFoundError as exc:
        raise BundleError(str(exc)) from None
    dim = next(iter(scenarios.values())).vectors.shape[1]
    path = write_bundle(settings, MODEL_VERSION, {"kind": POPULARITY, "dim": dim, "reason": reason}, {}, scenarios)
    if publish:
        publish_bundle(settings, path.name)
    return path
