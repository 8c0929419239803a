import numpy as np
import pytest
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
    cfg = TrainConfig.from_settings(settings.training, pretrain_epochs=1, min_pretrain_steps=0, progress=False)
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


def test_early_stopping_restores_the_best_epoch_and_stops_on_patience(syn_data, settings):
    from training.evaluate import validation_score

    torch.manual_seed(0)
    model = SASS(model_config(syn_data, settings.training))
    cfg = TrainConfig.from_settings(settings.training, finetune_epochs=8, patience=1, progress=False)
    hist = finetune(model, syn_data, cfg, validate=lambda: validation_score(model, syn_data))
    curve, best = hist.val_curve["finetune"], hist.best_epoch["finetune"]
    assert len(curve) == hist.epochs["finetune"] and curve[best - 1] == max(curve)
    assert hist.epochs["finetune"] == 8 or hist.epochs["finetune"] - best == 1  # the ceiling, or patience ran out
    assert validation_score(model, syn_data) == pytest.approx(max(curve), abs=1e-6)  # the best weights are back


def test_early_stopping_on_a_scripted_curve(syn_data, settings):
    from training.trainer import EarlyStopping

    model = SASS(model_config(syn_data, settings.training))
    stopper = EarlyStopping(model, patience=2)
    snapshots = []
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25], start=1):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # "training" changes the weights every epoch
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        stop = stopper.update(epoch, score)
        assert stop == (epoch == 4)
    stopper.restore()
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())  # epoch 2's weights


def test_stage2_batch_shrinks_on_small_data(settings):
    from training.trainer import MIN_BATCH, stage2_batch_size

    cfg = TrainConfig.from_settings(settings.training, batch_size=1024, min_steps_per_epoch=100)
    assert stage2_batch_size(500_000, cfg) == 1024
    assert stage2_batch_size(30_000, cfg) == 300
    assert stage2_batch_size(1_000, cfg) == MIN_BATCH
    assert stage2_batch_size(1_000, TrainConfig.from_settings(settings.training, min_steps_per_epoch=0)) == \
        settings.training.batch_size


def test_stage1_runs_more_epochs_on_small_data(syn_data, settings):
    from training.trainer import stage1_epochs

    cfg = TrainConfig.from_settings(settings.training, pretrain_epochs=2, min_pretrain_steps=100, progress=False)
    assert stage1_epochs(60, cfg) == 2  # a large window: the epoch count already gives the steps
    assert stage1_epochs(6, cfg) == 17  # a small one: epochs until the steps are reached
    assert stage1_epochs(6, TrainConfig.from_settings(settings.training, pretrain_epochs=2,
                                                      min_pretrain_steps=0)) == 2
    # on data: stage 1 takes at least the steps asked for, in whole epochs
    torch.manual_seed(0)
    hist = pretrain(SASS(model_config(syn_data, settings.training)), syn_data, cfg)
    steps, epochs = len(hist.losses["pretrain"]), hist.epochs["pretrain"]
    assert steps >= 100 and epochs > 2 and steps - steps // epochs < 100
