"""Checkpoints: window state saved atomically together with the offsets it covers.

One JSON file per owner (a user-stage partition, or an item-stage shard), written to a temp
file, fsynced and renamed, so a reader sees either the old or the new checkpoint, never half.
JSON, not pickle: checkpoints may be copied between machines and are never executed.
"""
from __future__ import annotations

import json
from pathlib import Path

from sassflow.files import write_text_atomic


class CheckpointStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def save(self, name: str, meta: dict, **parts: str) -> None:
        """Save ``meta`` (offsets, watermark...) with each of ``parts`` (JSON texts, e.g. the window
        state and the dedup state) under its own name, in one atomic file."""
        body = json.dumps(meta, separators=(",", ":"))[:-1]
        for key, text in parts.items():
            body += ("," if len(body) > 1 else "") + json.dumps(key) + ":" + text
        write_text_atomic(self.path(name), body + "}")

    def load(self, name: str) -> dict | None:
        try:
            with open(self.path(name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


def checkpoint_root(settings, group: str, topic: str) -> Path:
    return Path(settings.streaming.checkpoint_dir) / group / topic
