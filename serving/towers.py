"""User towers the service can run: they turn a feature row into a query vector.

``load_tower(bundle_path, config)`` dispatches on ``config["kind"]``:

* training kinds (``"sass"`` and the baselines) → ``training.export.load_user_encoder``
  on the bundle's ``tower/`` folder (same file layout as a training artifact);
* ``"mean_history"`` → ``MeanHistoryTower``, a real, parameter-free tower owned by
  serving for synthetic catalogs and benchmarks: the normalised mean of the
  scenario's item vectors of the user's ``recent_clicks``.

Every tower has ``encode(rows, scenario) -> float32 [B, d]``.  A row the tower
cannot place (no known clicks) encodes to the zero vector; the service answers
those with the popular fallback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.index import ScenarioCatalog, item_vectors

MEAN_HISTORY = "mean_history"


class MeanHistoryTower:
    def __init__(self, catalogs: dict[str, ScenarioCatalog], dim: int):
        self.catalogs = catalogs
        self.dim = dim

    def encode(self, rows: list[dict], scenario: str) -> np.ndarray:
        catalog = self.catalogs[scenario]
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            clicks = row.get("recent_clicks") or []
            item_rows = catalog.rows_of(clicks)
            if item_rows.size:
                v = item_vectors(catalog.index, item_rows).mean(axis=0)
                norm = float(np.linalg.norm(v))
                if norm > 0:
                    out[i] = v / norm
        return out


def load_tower(bundle_path: Path, config: dict, catalogs: dict[str, ScenarioCatalog] | None = None):
    """The user tower of a bundle.  ``catalogs`` (already loaded indexes) lets the
    mean-history tower share the index's vectors instead of loading them twice."""
    kind = config.get("kind")
    if kind == MEAN_HISTORY:
        if catalogs is None:
            from serving.bundle import load_catalogs

            catalogs = load_catalogs(Path(bundle_path))
        return MeanHistoryTower(catalogs, int(config["dim"]))
    if not kind:
        raise ValueError("tower config has no 'kind'")
    from training.export import load_user_encoder  # the lead wires training; imported lazily

    return load_user_encoder(Path(bundle_path) / "tower")
