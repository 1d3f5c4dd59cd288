"""The optimizer and the lr schedule (harness.run.optim): LDAM-DRW's per-epoch warm-up and step
decay, and a sigmoid loss's head bias kept out of weight decay (Cui et al.)."""
from __future__ import annotations

import pytest
import torch

from harness.config import RunConfig, from_dict
from harness.losses import LOSSES
from harness.models import build_model, loss_options, resolve_head
from harness.run.optim import build_optimizer, decay_runs, lr_factor


def schedule(**values) -> RunConfig:
    return from_dict(RunConfig, {"schedule": values})


def ldam_drw_lr(epoch: int, lr: float = 1.0) -> float:
    """kaidic/LDAM-DRW cifar_train.py `adjust_learning_rate`, transcribed (epoch 0-based, as its loop passes it)."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


def test_the_lr_follows_ldam_drw_epoch_by_epoch():
    cfg = schedule(epochs=200, warmup_epochs=5, decay="step", milestones=[160, 180], gamma=0.01)
    for epoch in range(200):
        for step in (0.0, 0.5, 0.99):  # constant within an epoch
            assert lr_factor(cfg, epoch + step) == pytest.approx(ldam_drw_lr(epoch), rel=1e-12), (epoch, step)


def test_a_small_schedule_by_hand():
    # 10 epochs, warm-up 3: lr/3, 2lr/3, lr; x0.1 from epoch 6, x0.01 from epoch 8
    cfg = schedule(epochs=10, warmup_epochs=3, decay="step", milestones=[6, 8], gamma=0.1)
    ts = [0, 0.5, 0.99, 1, 1.7, 2, 2.99, 3, 5.99, 6, 7.5, 8, 9.99]
    table = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    assert [lr_factor(cfg, t) for t in ts] == pytest.approx(table, rel=1e-12)
    cosine = schedule(epochs=10, warmup_epochs=2, decay="cosine")  # cosine from the end of the warm-up
    assert [lr_factor(cosine, t) for t in (0, 1.5, 2, 6, 10)] == pytest.approx([0.5, 1, 1, 0.5, 0], abs=1e-12)
    assert lr_factor(schedule(epochs=10, warmup_epochs=0, decay="constant"), 0) == 1.0  # no warm-up


def model_and_optimizer(loss: str, weight_decay: float = 0.1):
    cls = LOSSES.get(loss)
    torch.manual_seed(0)
    model = build_model("resnet8", 10, resolve_head("auto", cls), **loss_options(cls))
    cfg = from_dict(RunConfig, {"optim": {"lr": 0.5, "weight_decay": weight_decay, "momentum": 0.0}})
    return model, build_optimizer(model, cfg, world_size=1)


@pytest.mark.parametrize("loss", ["cb_sigmoid", "cb_focal", "sigmoid_focal"])
def test_a_sigmoid_losss_bias_is_not_decayed(loss):
    model, optimizer = model_and_optimizer(loss)
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert groups[1]["params"] == [model.head.bias]
    # the groups keep the model's parameter order (the checkpoints' indices)
    assert [p for g in groups for p in g["params"]] == list(model.parameters())
    # with no gradient, a step only decays: the weights shrink by lr·wd, the bias stays at the prior
    bias, weight = model.head.bias.detach().clone(), model.head.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(model.head.bias, bias)
    assert torch.allclose(model.head.weight, weight * (1 - 0.5 * 0.1))


@pytest.mark.parametrize("loss", ["ce", "focal", "ldam", "gpaco"])
def test_other_losses_get_one_group_with_weight_decay(loss):
    model, optimizer = model_and_optimizer(loss)
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == 0.1 and group["params"] == list(model.parameters())
    assert len(decay_runs(model)) == 1
