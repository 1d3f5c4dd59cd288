"""The optimizer and its learning-rate schedule.

    optimizer = build_optimizer(model, cfg, world_size)   # SGD with momentum (or Adam), weight decay
    lr = peak_lr(cfg, world_size) * lr_factor(cfg, epoch + i / steps_per_epoch)

The schedule is the LDAM-DRW one by default: warm-up over `warmup_epochs` that raises the lr once
per epoch, lr·1/W, lr·2/W, ..., lr (kaidic/LDAM-DRW cifar_train.py `adjust_learning_rate`), then
step decay (×gamma at each milestone) or cosine decay to 0. It is evaluated at fractional epochs,
at every step: the step and cosine decays change within an epoch, the warm-up does not.

Weight decay applies to every parameter but those the model names in `no_weight_decay()` (a
sigmoid loss's head bias, harness.models.Classifier); those go in parameter groups of their own
with weight decay 0.
"""
from __future__ import annotations

import math

import torch

from harness.config import RunConfig


def peak_lr(cfg: RunConfig, world_size: int) -> float:
    """optim.lr, times the world size under the linear scaling rule (optim.scale_lr)."""
    return cfg.optim.lr * (world_size if cfg.optim.scale_lr else 1)


def decay_runs(model: torch.nn.Module) -> list[tuple[list[torch.nn.Parameter], bool]]:
    """The model's parameters in order, cut into runs of neighbours that are all decayed or all not
    (`model.no_weight_decay()`, if it has one, names the ones that are not): (parameters, decayed).
    One run per parameter group keeps the optimizer's parameter indices those of the model."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    runs: list[tuple[list[torch.nn.Parameter], bool]] = []
    for name, p in model.named_parameters():
        decayed = name not in skip
        if runs and runs[-1][1] == decayed:
            runs[-1][0].append(p)
        else:
            runs.append(([p], decayed))
    return runs


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, world_size: int) -> torch.optim.Optimizer:
    """SGD (or Adam) over every parameter (frozen ones get no gradient, so the optimizer leaves them
    alone; keeping them keeps the optimizer's parameter indices those of the model, which
    checkpoints rely on), one group per run of `decay_runs`: optim.weight_decay, or 0."""
    o = cfg.optim
    groups = [{"params": params, "weight_decay": o.weight_decay if decayed else 0.0}
              for params, decayed in decay_runs(model)]
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=peak_lr(cfg, world_size), weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=peak_lr(cfg, world_size), momentum=o.momentum,
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
