"""Small synthetic data shared by the training tests (built once per session)."""
from __future__ import annotations

import pytest
import torch

from sassflow.settings import Settings

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def syn_source():
    from streaming.sources import SyntheticSource

    # flat popularity + sharp affinity: personal taste, not the head, decides the clicks
    return SyntheticSource(n_users=200, n_items=400, n_events=80_000, seed=3, zipf_a=0.3, click_scale=5.0,
                           n_categories=10)


@pytest.fixture(scope="session")
def syn_events(syn_source):
    from streaming.sources import events_frame

    return events_frame(syn_source.events())


@pytest.fixture(scope="session")
def syn_data(syn_events):
    from training.data import prepare

    return prepare(syn_events, Settings(state_dir="/nonexistent").scenarios)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path, training={"pretrain_epochs": 2, "finetune_epochs": 3,
                                                  "batch_size": 256, "torch_threads": 1})
