"""Second stages: a run that starts from a finished run's model.

    stage: {kind: crt}          # cRT: a new linear classifier on frozen features, class-balanced
    stage: {kind: tau_norm}     # τ-norm: the first stage's classifier with w_j / ||w_j||^τ (τ: 1, or search)
    stage: {kind: linear}       # SupCon's second stage: cRT with instance-balanced sampling
    stage: {kind: maxnorm}      # weight balancing: CB loss, weight decay 0.1, per-class MaxNorm
    stage: {kind: ldmlr}        # LDMLR: the classifier on real + diffusion-generated features

A second stage is a cell like any other; its first stage is `stage.from_run` (a signature in
the same grid folder, or a run folder) or, by default, the cell's own config with
`stage.kind: train`, so a grid axis `stage.kind: [train, crt, ldmlr]` pairs every second stage
with its first (harness.stages.decoupled). The one trainer asks this package for six things:

- `stage_config(cfg)`: what the stage trains with: the stage's loss on a linear head for
  `stage.epochs` at `stage.lr` (cosine decay, no warm-up; ldmlr: Adam, constant), or nothing
  (tau_norm). The cell's own config is what the run folder stores.
- `stage_model(cfg, run_dir, model)`: the model to start from: the first stage's last epoch, or
  its best on the validation split (stage.from_epoch best). The first stage's backbone is loaded
  and frozen (Frozen: eval mode, BatchNorm statistics stay; crt with stage.bn train: train mode as
  Kang et al.'s code, the statistics move); crt and linear train a new head, maxnorm and ldmlr the
  first stage's head, and tau_norm sets the head to the first stage's τ-normalised weights with no
  bias (as Kang et al.'s τ-norm code computes logits f·w̃ᵀ), or with tau search to its plain weights.
- `stage_head(cfg, options)`: how the model's head starts (`model.head_init`; by default a second
  stage's new head as NEW_HEAD_INIT).
- `stage_data(cfg, run_dir, data, model, env)`: the training batches. ldmlr's are features
  (harness.stages.ldmlr), which the frozen backbone passes through; evaluation stays on the
  test images, through backbone and head.
- `stage_hook(cfg, model)`: what the trainer calls after every optimizer step, `hook(model,
  epoch_end)`: maxnorm's projection (harness.stages.maxnorm), else nothing.
- `stage_fit(cfg, model, val, features)`: what a stage chooses on the validation split, once
  the trainer is set up: tau_norm's τ with tau search (the head then holds that τ's weights), else
  nothing; what it returns goes into result.json (tau_search).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from harness import dist
from harness.config import LossConfig, RunConfig, ScheduleConfig
from harness.data.build import Data
from harness.registry import ConfigError
from harness.rundir import RunDir
from harness.stages.decoupled import (
    FROM_CLASSIFIER,
    Frozen,
    check_classifier,
    choose_tau,
    first_stage_config,
    first_stage_dir,
    fixed_backbone,
    load_first_stage,
    tau_hits,
    tau_normalise,
)
from harness.stages.ldmlr import feature_data
from harness.stages.maxnorm import MaxNorm

__all__ = ["Frozen", "check_stage", "first_stage_config", "first_stage_dir", "fixed_backbone", "load_first_stage",
           "stage_config", "stage_data", "stage_fit", "stage_head", "stage_hook", "stage_model", "tau_normalise"]

OPTIMIZER = {"ldmlr": "adam"}
"""A kind's optimizer, where it is not the first stage's (LDMLR fine_tune_tr.py: torch.optim.Adam)."""
DECAY = {"ldmlr": "constant"}
"""A kind's lr schedule, where it is not cosine (LDMLR's classifier has no scheduler)."""
NEW_HEAD_INIT = "torch"
"""A second stage's new classifier is a plain nn.Linear with its default init: Kang et al.'s cRT
(facebookresearch/classifier-balancing models/DotProductClassifier.py) and SupCon's linear stage
(HobbitLong/SupContrast networks/resnet_big.py, LinearClassifier). maxnorm, ldmlr and tau_norm
start from the first stage's classifier instead (stage_model)."""


def stage_config(cfg: RunConfig) -> RunConfig:
    """What a run trains with: `cfg` itself, or for a second stage its loss (ce unless
    stage.loss) on a linear head for stage.epochs epochs (0 for tau_norm) at stage.lr."""
    s = cfg.stage
    if s.kind == "train":
        return cfg
    optim = dataclasses.replace(
        cfg.optim, name=OPTIMIZER.get(s.kind, cfg.optim.name), lr=s.lr,
        weight_decay=cfg.optim.weight_decay if s.weight_decay is None else s.weight_decay,
        batch_size=s.batch_size or cfg.optim.batch_size)
    return dataclasses.replace(
        cfg, loss=LossConfig(name=s.loss or "ce"), model=dataclasses.replace(cfg.model, head="linear"), optim=optim,
        schedule=ScheduleConfig(epochs=0 if s.kind == "tau_norm" else s.epochs, warmup_epochs=0,
                                decay=DECAY.get(s.kind, "cosine")))


def stage_head(cfg: RunConfig, options: dict) -> dict:
    """The model options (harness.models.loss_options of the stage's loss) a run builds its model
    with: its head starts as `model.head_init` says, or when auto, a second stage's new head as
    NEW_HEAD_INIT says and a first stage's as its loss does."""
    if cfg.model.head_init != "auto":
        return {**options, "head_init": cfg.model.head_init}
    return options if cfg.stage.kind == "train" else {**options, "head_init": NEW_HEAD_INIT}


def check_stage(cfg: RunConfig, where: str = "") -> None:
    """Raise ConfigError, naming the key, for a stage that cannot run."""
    s = cfg.stage
    if stage_config(cfg).optim.name == "adam" and cfg.dist.engine == "deepspeed":
        raise ConfigError(f"{where}key 'dist.engine': a run with Adam (optim.name adam, stage.kind ldmlr) "
                          f"cannot resume under deepspeed, whose checkpoints keep SGD's momentum only; use ddp")
    if s.kind == "train":
        if s.from_run:
            raise ConfigError(f"{where}key 'stage.from_run' is only for second stages "
                              f"(stage.kind crt, tau_norm, linear, maxnorm, ldmlr); remove it or set stage.kind")
        return
    if s.epochs < 1 or s.lr <= 0 or (s.tau != "search" and s.tau < 0):
        raise ConfigError(f"{where}key 'stage.epochs', 'stage.lr', 'stage.tau' must be >= 1, > 0, >= 0; "
                          f"got {s.epochs}, {s.lr}, {s.tau}")
    check_validation(cfg, where)
    for key, value, ok in [("weight_decay", s.weight_decay, s.weight_decay is None or s.weight_decay >= 0),
                           ("batch_size", s.batch_size, s.batch_size is None or s.batch_size >= 1),
                           ("maxnorm_thresh", s.maxnorm_thresh, s.maxnorm_thresh >= 0)]:
        if not ok:
            raise ConfigError(f"{where}key 'stage.{key}' must be >= 0 (batch_size >= 1), got {value}")
    if s.loss:
        check_loss(s.loss, f"{where}key 'stage.loss': ")
    if s.kind == "maxnorm" and cfg.dist.engine == "deepspeed":
        raise ConfigError(f"{where}key 'dist.engine': maxnorm projects the classifier's weights in place, which "
                          f"deepspeed's sharded copies would undo; use ddp")
    if s.kind in FROM_CLASSIFIER and not s.from_run:
        check_classifier(cfg, f"{where}key 'stage.kind': ", s.kind)


def check_validation(cfg: RunConfig, where: str) -> None:
    """tau search and from_epoch best choose on the validation split, which must not be the test set."""
    s = cfg.stage
    if s.tau == "search":
        grid = s.tau_grid
        if not grid or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 for t in grid):
            raise ConfigError(f"{where}key 'stage.tau_grid' must be a non-empty list of numbers >= 0, got {grid!r}")
    for key, value, wanted in (("tau", s.tau, "search"), ("from_epoch", s.from_epoch, "best")):
        if value == wanted and cfg.data.val == "test":
            raise ConfigError(f"{where}key 'stage.{key}': {wanted} chooses on the validation split, and with "
                              f"data.val test that is the test set; set data.val split (or val)")


def check_loss(name: str, prefix: str) -> None:
    """A second stage's loss: registered, and computed on a linear head's logits."""
    from harness.losses import LOSSES
    try:
        head = LOSSES.get(name).head
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    if head != "linear":
        raise ConfigError(f"{prefix}loss {name} needs a {head} head; a second stage trains a linear one")


def stage_model(cfg: RunConfig, run_dir: str | Path, model: nn.Module) -> nn.Module:
    """`model` (built from stage_config(cfg)) as this stage starts from it."""
    s = cfg.stage
    if s.kind == "train":
        return model
    _, weights = load_first_stage(cfg, run_dir)
    backbone = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    model.backbone.load_state_dict(backbone)
    if s.kind == "tau_norm":  # with tau search, stage_fit sets the chosen τ's weights
        with torch.no_grad():
            w = weights["head.weight"]
            model.head.weight.copy_(w if s.tau == "search" else tau_normalise(w, s.tau))
            model.head.bias.zero_()
        return model
    model.backbone = Frozen(model.backbone, bn_train=s.bn == "train")
    if s.kind in FROM_CLASSIFIER:  # maxnorm and ldmlr fine-tune the first stage's classifier
        model.head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
    return model


def stage_data(cfg: RunConfig, run_dir: RunDir, data: Data, model: nn.Module, env: dist.DistEnv) -> Data:
    """The data this stage trains on: `data`, or for ldmlr batches of real and generated features
    of `model`'s backbone (built and written to the run folder first, or read back from it)."""
    if cfg.stage.kind != "ldmlr":
        return data
    return feature_data(cfg, run_dir, data, model.backbone, env, stage_config(cfg).optim.batch_size)


@torch.no_grad()
def stage_fit(cfg: RunConfig, model: nn.Module, val, features: Callable[[torch.Tensor], torch.Tensor]) -> dict | None:
    """tau_norm with tau search: each τ of stage.tau_grid is tried on the validation split `val`
    (this rank's share of it; the counts are summed over the ranks), the head is set to the best
    one's weights and {"tau", "split", "val_top1": {τ: %}} returned for result.json; else None.
    `features(x)`: the backbone's features of uint8 images, in eval mode (as Kang et al. extract
    them for tau_norm.py). `model.head` holds the first stage's plain weights (stage_model)."""
    s = cfg.stage
    if s.kind != "tau_norm" or s.tau != "search":
        return None
    weight, c = model.head.weight.detach().clone(), model.head.weight.shape[0]
    taus = [float(t) for t in s.tau_grid]
    hits = torch.zeros(len(taus), c, dtype=torch.float64, device=weight.device)
    totals = torch.zeros(c, dtype=torch.float64, device=weight.device)
    for x, y in val:
        hits += tau_hits(features(x).float(), y, weight.float(), taus, c)
        totals += torch.bincount(y, minlength=c).double()
    hits, totals = dist.all_reduce_sum(hits), dist.all_reduce_sum(totals)
    tau, accs = choose_tau(taus, hits, totals)
    model.head.weight.copy_(tau_normalise(weight, tau))
    return {"tau": tau, "split": cfg.data.val, "val_top1": {f"{t:g}": round(a, 4) for t, a in zip(taus, accs)}}


def no_hook(model: nn.Module, epoch_end: bool) -> None:
    """The step hook of the stages that constrain nothing."""


def stage_hook(cfg: RunConfig, model: nn.Module) -> Callable[[nn.Module, bool], None]:
    """`hook(model, epoch_end)`, which the trainer calls after every optimizer step (epoch_end:
    it was the epoch's last): maxnorm's projection, set up from `model`'s head as stage_model
    left it (the first stage's), or nothing."""
    s = cfg.stage
    if s.kind != "maxnorm":
        return no_hook
    return MaxNorm(model.head.weight, s.maxnorm_thresh, s.maxnorm_every)
