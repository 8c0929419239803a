"""The content tower: an item's content (title, tags, year, attributes, optional image) -> one vector
per scenario in that scenario's SASS item space, so an item the SASS model never saw is retrievable
from its content alone (cold start).  Serving loads it (``load_content_tower``) to encode new items
as their catalogue events arrive; the training loop is ``training.content``.

Parts:

- ``featurize``: catalogue items -> hashed token bags + images (pure; the same at training and
  serving).  Text: lower-cased words, word bigrams and the character 3-grams of each word (with
  ``<``/``>`` boundary marks), hashed (CRC32, stable across processes) into ``text_buckets`` rows.
  Tags: each tag, the year and its decade, each ``attribute=value``, hashed into ``tag_buckets``.
  Nothing is downloaded: the vocabularies are the hash buckets, trained from scratch.
- ``ImageEncoder``: a small CNN over ``IMAGE_SIDE`` x ``IMAGE_SIDE`` RGB thumbnails.
- ``ContentTower``: text bag + tag bag + image (a learned "no image" vector when absent) -> MLP
  trunk -> one linear head per scenario -> L2 norm.  Trained contrastively (InfoNCE, in-batch
  negatives) to land on the item's SASS vector of that scenario (``training.content``).
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sassflow.contracts.artifacts import ModelArtifact
from sassflow.contracts.catalog import IMAGE_SIDE, ItemEvent, decode_image

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ContentConfig:
    scenarios: list[str]
    dim: int  # = the SASS model's item vector size
    text_buckets: int = 1 << 14
    tag_buckets: int = 1 << 12
    embed_dim: int = 64
    hidden_dim: int = 128
    image: bool = True
    image_dim: int = 32
    # ``encode`` returns ``blend * v + (1 - blend) * anchors[scenario]`` (set by
    # ``training.content.calibrate_blend``; anchors: each scenario's mean SASS item vector).  A
    # content vector is a blurred, "typical" behaviour vector: as it is, new items crowd warm ones
    # out of a shared index.  Moving it toward the scenario's average item lets a new item in only on
    # a clear match, and keeps the order among new items (a user's score of the anchor is one constant).
    blend: float = 1.0
    anchors: list | None = None  # [n_scenarios][dim]

    def to_dict(self) -> dict:
        return asdict(self)


def _hash(token: str, buckets: int) -> int:
    return zlib.crc32(token.encode()) % buckets


def text_tokens(title: str, buckets: int) -> list[int]:
    words = _WORD.findall(title.lower())
    toks = [f"w:{w}" for w in words] + [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
    for w in words:
        padded = f"<{w}>"
        toks += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
    return [_hash(t, buckets) for t in toks]


def tag_tokens(item: ItemEvent, buckets: int) -> list[int]:
    toks = [f"t:{t.lower()}" for t in item.tags]
    if item.year is not None:
        toks += [f"y:{item.year}", f"d:{item.year // 10}"]
    for k, v in sorted((item.attributes or {}).items()):
        toks.append(f"a:{k}={v}")
    return [_hash(t, buckets) for t in toks]


@dataclass
class ContentBatch:
    """Featurized items: two token bags (flat ids + offsets) and images."""

    text: torch.Tensor  # int64 [T]
    text_offsets: torch.Tensor  # int64 [B]
    tags: torch.Tensor
    tag_offsets: torch.Tensor
    images: torch.Tensor  # float32 [B, 3, IMAGE_SIDE, IMAGE_SIDE] in [0, 1]
    has_image: torch.Tensor  # float32 [B, 1]

    def __len__(self) -> int:
        return len(self.text_offsets)

    def take(self, rows) -> "ContentBatch":
        rows = torch.as_tensor(rows, dtype=torch.long)
        text, text_off = _take_bags(self.text, self.text_offsets, rows)
        tags, tag_off = _take_bags(self.tags, self.tag_offsets, rows)
        return ContentBatch(text, text_off, tags, tag_off, self.images[rows], self.has_image[rows])


def _bags(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    offsets = np.r_[0, np.cumsum(lengths)[:-1]] if len(lists) else np.zeros(0, np.int64)
    flat = np.fromiter((t for x in lists for t in x), np.int64, int(lengths.sum()))
    return torch.from_numpy(flat), torch.from_numpy(offsets.astype(np.int64))


def _take_bags(flat: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor):
    ends = torch.cat([offsets[1:], torch.tensor([len(flat)])])
    starts, stops = offsets[rows], ends[rows]
    lengths = stops - starts
    new_offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)[:-1]]) if len(rows) else lengths
    idx = torch.repeat_interleave(starts - new_offsets, lengths) + torch.arange(int(lengths.sum()))
    return flat[idx], new_offsets


def featurize(items: list[ItemEvent], cfg: ContentConfig) -> ContentBatch:
    """Catalogue items -> a ``ContentBatch`` (images decoded here; an undecodable one counts as absent)."""
    text, text_off = _bags([text_tokens(it.title, cfg.text_buckets) for it in items])
    tags, tag_off = _bags([tag_tokens(it, cfg.tag_buckets) for it in items])
    images = np.zeros((len(items), IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    has = np.zeros((len(items), 1), np.float32)
    if cfg.image:
        for r, it in enumerate(items):
            if it.image:
                try:
                    images[r] = decode_image(it.image)
                    has[r] = 1.0
                except ValueError:  # EventError: validated on the way in; a bad one is just absent
                    pass
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return ContentBatch(text, text_off, tags, tag_off, pixels.contiguous(), torch.from_numpy(has))


class ImageEncoder(nn.Module):
    """Two strided convolutions and a global average pool: colour and coarse shape of a thumbnail
    (strided rather than pooled: small-channel convolutions are slow on CPU, this is a quarter)."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, out_dim, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ContentTower(nn.Module):
    def __init__(self, cfg: ContentConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.embed_dim
        self.text = nn.EmbeddingBag(cfg.text_buckets, E, mode="mean")
        self.tags = nn.EmbeddingBag(cfg.tag_buckets, E, mode="mean")
        for bag in (self.text, self.tags):
            nn.init.normal_(bag.weight, std=0.05)
        fused = 2 * E
        if cfg.image:
            self.image = ImageEncoder(cfg.image_dim)
            self.no_image = nn.Parameter(torch.zeros(cfg.image_dim))
            fused += cfg.image_dim
        self.trunk = nn.Sequential(nn.Linear(fused, cfg.hidden_dim), nn.ReLU(), nn.Dropout(0.1),
                                   nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU())
        # one linear head per scenario, as one [H, S * dim] matrix: every head on every row costs less
        # than gathering a [H, dim] matrix per row
        self.heads = nn.Linear(cfg.hidden_dim, len(cfg.scenarios) * cfg.dim)

    def hidden(self, b: ContentBatch) -> torch.Tensor:
        parts = [self.text(b.text, b.text_offsets), self.tags(b.tags, b.tag_offsets)]
        if self.cfg.image:
            img = self.image(b.images)
            parts.append(b.has_image * img + (1 - b.has_image) * self.no_image)
        return self.trunk(torch.cat(parts, -1))

    def forward(self, b: ContentBatch, scenario: torch.Tensor) -> torch.Tensor:
        """[B] scenario indices -> L2-normalised content vectors [B, dim], row i in scenario[i]'s space."""
        every = self.heads(self.hidden(b)).view(len(b), len(self.cfg.scenarios), self.cfg.dim)
        return F.normalize(every[torch.arange(len(b)), scenario], dim=-1)

    @torch.no_grad()
    def encode(self, items: list[ItemEvent], scenario: str) -> np.ndarray:
        """float32 [len(items), dim]: the items' vectors in ``scenario``'s item space, blended as
        ``cfg.blend`` says (what goes into a serving index next to the SASS item vectors)."""
        self.eval()
        k = self.cfg.scenarios.index(scenario)
        if not items:
            return np.zeros((0, self.cfg.dim), np.float32)
        v = self(featurize(items, self.cfg), torch.full((len(items),), k, dtype=torch.long))
        v = v.numpy().astype(np.float32)
        if self.cfg.anchors is not None and self.cfg.blend != 1.0:
            v = self.cfg.blend * v + (1.0 - self.cfg.blend) * np.asarray(self.cfg.anchors[k], np.float32)
        return v.astype(np.float32)


# --------------------------------------------------------------------------- artifact files

def save_content_tower(tower: ContentTower, artifact_dir, extra: dict | None = None) -> None:
    root = Path(artifact_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / ModelArtifact.CONTENT_CONFIG).write_text(json.dumps({**tower.cfg.to_dict(), **(extra or {})}, indent=1))
    torch.save(tower.state_dict(), root / ModelArtifact.CONTENT_STATE)


def load_content_tower(folder) -> ContentTower | None:
    """The content tower of a model artifact or a bundle's tower folder; None when it has none.
    Loaded with ``weights_only=True`` and checked against its config (``ValueError`` if not)."""
    root = Path(folder)
    cfg_path, state_path = root / ModelArtifact.CONTENT_CONFIG, root / ModelArtifact.CONTENT_STATE
    if not cfg_path.exists():
        return None
    raw = json.loads(cfg_path.read_text())
    cfg = ContentConfig(**{k: raw[k] for k in ContentConfig.__dataclass_fields__ if k in raw})
    tower = ContentTower(cfg)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    expected = tower.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected) or any(
            state[k].shape != v.shape for k, v in expected.items()):
        raise ValueError(f"{state_path}: tensors do not match {cfg_path.name}")
    tower.load_state_dict(state)
    tower.eval()
    return tower
