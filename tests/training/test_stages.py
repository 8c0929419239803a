import numpy as np
import torch

from training.baselines import fit, model_config
from training.evaluate import evaluate
from training.model import SASS
from training.trainer import TrainConfig, _multi_view_entities, _rows_of, finetune, pretrain


def _curve(losses, parts=4):
    chunks = np.array_split(np.asarray(losses), parts)
    return [float(c.mean()) for c in chunks]


def test_contrastive_pretraining_loss_falls(syn_data, settings):
    # the synthetic users share interests across scenarios (truth.user_shared): the planted
    # cross-scenario signal stage 1 must find
    torch.manual_seed(0)
    model = SASS(model_config(syn_data, settings.training))
    cfg = TrainConfig.from_settings(settings.training, pretrain_epochs=10, progress=False)
    hist = pretrain(model, syn_data, cfg)
    curve = _curve(hist.losses["pretrain"])
    assert len(hist.losses["pretrain"]) >= 40
    assert curve[-1] < 0.8 * curve[0], curve
    # both the user pairs and the item pairs (items shown in several scenarios) were used
    assert len(syn_data.item_views) > len(np.unique(syn_data.item_views[:, 0]))


def test_pretraining_batches_hold_whole_entities(syn_data, settings):
    ent = np.array([5, 1, 5, 2, 1, 5, 3, 9, 9])
    order, starts, sizes = _multi_view_entities(ent)
    assert ent[order[starts]].tolist() == [1, 5, 9] and sizes.tolist() == [2, 3, 2]  # 2, 3: one view, no pair
    rows = _rows_of(order, starts[[2, 0]], sizes[[2, 0]])  # a batch of entities 9 and 1
    assert ent[rows].tolist() == [9, 9, 1, 1] and sorted(rows.tolist()) == [1, 4, 7, 8]
    # an epoch visits every user with two or more views once, with all of their views
    torch.manual_seed(0)
    cfg = TrainConfig.from_settings(settings.training, pretrain_epochs=1, progress=False)
    hist = pretrain(SASS(model_config(syn_data, settings.training)), syn_data, cfg)
    users = np.unique(syn_data.views["user"], return_counts=True)[1]
    items = np.unique(syn_data.item_views[:, 0], return_counts=True)[1]
    assert hist.samples["pretrain"] == (users > 1).sum() + (items > 1).sum()


def test_finetune_from_pretrained_weights_lowers_click_loss(syn_data, settings):
    torch.manual_seed(0)
    model = SASS(model_config(syn_data, settings.training))
    cfg = TrainConfig.from_settings(settings.training, progress=False)
    pretrain(model, syn_data, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = finetune(model, syn_data, cfg)
    curve = _curve(hist.losses["finetune"])
    assert curve[-1] < curve[0], curve
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sass_beats_popularity_on_synthetic_data(syn_data, settings):
    cfg = TrainConfig.from_settings(settings.training, finetune_epochs=8, progress=False)
    sass = evaluate(fit("sass", syn_data, settings.training, cfg).scorer, syn_data, "test")
    pop = evaluate(fit("pop", syn_data, settings.training, cfg).scorer, syn_data, "test")
    assert sass["recall@50"]["mean"] > pop["recall@50"]["mean"], (sass, pop)
    assert sass["ndcg@20"]["mean"] > pop["ndcg@20"]["mean"]
    for m in sass:
        assert set(sass[m]) == {"0", "1", "2", "3", "4", "mean"}
        assert all(0.0 <= v <= 1.0 for v in sass[m].values())
