"""Raw ids <-> embedding rows: what both towers' id inputs go through, at training and at serving."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A raw id -> index table is used when the ids are small non-negative integers (MovieLens, catalogues
# numbered from 0): one gather instead of a binary search over a million ids per request.  Its size is
# bounded by a few entries per id, so sparse ids (hashes) keep the binary search.
DENSE_SLACK, DENSE_MIN = 4, 1 << 16


def dense_table(sorted_ids: np.ndarray) -> np.ndarray | None:
    """int32 table ``t[raw] = position + 1`` (0: not an id) of unique sorted non-negative ids, or None
    when the ids span more than ``DENSE_SLACK`` entries per id."""
    if len(sorted_ids) == 0 or sorted_ids[0] < 0 or sorted_ids[-1] >= DENSE_SLACK * len(sorted_ids) + DENSE_MIN:
        return None
    table = np.zeros(int(sorted_ids[-1]) + 1, np.int32)
    table[sorted_ids] = np.arange(1, len(sorted_ids) + 1, dtype=np.int32)
    return table


@dataclass
class Vocab:
    """Raw id <-> index; index 0 is the out-of-vocabulary / padding slot."""

    ids: np.ndarray  # sorted raw ids, int64
    _table: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self._table = dense_table(self.ids)

    def index(self, raw) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        if self._table is not None:
            inside = (raw >= 0) & (raw < len(self._table))
            return np.where(inside, self._table[np.where(inside, raw, 0)], 0).astype(np.int64)
        if len(self.ids) == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, raw), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == raw, pos + 1, 0).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)
