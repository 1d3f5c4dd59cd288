"""The lr schedule (harness.run.optim): LDAM-DRW's per-epoch warm-up and step decay."""
from __future__ import annotations

import pytest

from harness.config import RunConfig, from_dict
from harness.run.optim import lr_factor


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
