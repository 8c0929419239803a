"""Raw ids <-> embedding rows: what both towers' id inputs go through, at training and at serving."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Vocab:
    """Raw id <-> index; index 0 is the out-of-vocabulary / padding slot."""

    ids: np.ndarray  # sorted raw ids, int64

    def index(self, raw) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        if len(self.ids) == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, raw), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == raw, pos + 1, 0).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)
