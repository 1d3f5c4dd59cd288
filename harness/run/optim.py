"""The optimizer and its learning-rate schedule.

    optimizer = build_optimizer(model, cfg, world_size)   # SGD with momentum (or Adam), weight decay
    lr = peak_lr(cfg, world_size) * lr_factor(cfg, epoch + i / steps_per_epoch)

The schedule is the LDAM-DRW one by default: warm-up over `warmup_epochs` that raises the lr once
per epoch, lr·1/W, lr·2/W, ..., lr (kaidic/LDAM-DRW cifar_train.py `adjust_learning_rate`), then
step decay (×gamma at each milestone) or cosine decay to 0. It is evaluated at fractional epochs,
at every step: the step and cosine decays change within an epoch, the warm-up does not.
"""
from __future__ import annotations

import math

import torch

from harness.config import RunConfig


def peak_lr(cfg: RunConfig, world_size: int) -> float:
    """optim.lr, times the world size under the linear scaling rule (optim.scale_lr)."""
    return cfg.optim.lr * (world_size if cfg.optim.scale_lr else 1)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, world_size: int) -> torch.optim.Optimizer:
    """SGD (or Adam) over every parameter (frozen ones get no gradient, so the optimizer leaves them
    alone; keeping them keeps the optimizer's parameter indices those of the model, which
    checkpoints rely on)."""
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=peak_lr(cfg, world_size), weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=peak_lr(cfg, world_size), momentum=o.momentum,
                           weight_decay=o.weight_decay, nesterov=o.nesterov)


def lr_factor(cfg: RunConfig, t: float) -> float:
    """The lr multiplier at fractional epoch t (0-based): (⌊t⌋ + 1) / W during the W warm-up epochs,
    as LDAM-DRW's `lr = args.lr * epoch / 5` for the 1-based epochs 1..5; then step or cosine decay."""
    s = cfg.schedule
    if t < s.warmup_epochs:
        return (math.floor(t) + 1) / s.warmup_epochs
    if s.decay == "cosine":
        span = max(s.epochs - s.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - s.warmup_epochs) / span)))
    if s.decay == "step":
        marks = [m * s.epochs if m < 1 else m for m in s.milestones]
        return s.gamma ** sum(t >= m for m in marks)
    return 1.0
