"""Decoupled second stages (Kang et al., ICLR 2020): start from a finished run's model.

    stage: {kind: crt}          # cRT: a new linear classifier on frozen features, class-balanced
    stage: {kind: tau_norm}     # τ-norm: the first stage's classifier with w_j / ||w_j||^τ
    stage: {kind: linear}       # SupCon's second stage: cRT with instance-balanced sampling

A second stage is a cell like any other; its first stage is `stage.from_run` (a signature in
the same grid folder, or a run folder) or, by default, the cell's own config with
`stage.kind: train`, so a grid axis `stage.kind: [train, crt, tau_norm]` pairs every second
stage with its first. The trainer asks this module for two things:

- `stage_config(cfg)`: what the stage trains with. A second stage trains CE on a new linear
  head for `stage.epochs` (cosine decay from `stage.lr`, no warm-up), or nothing (tau_norm);
  the cell's own config is what the run folder stores.
- `stage_model(cfg, run_dir, model)`: the model to start from. The first stage's backbone is
  loaded into `model`; crt and linear freeze it (eval mode: BatchNorm statistics stay), and
  tau_norm sets the head to the first stage's τ-normalised weights with no bias (as Kang et
  al.'s τ-norm code computes logits f·w̃ᵀ).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
import torch.nn as nn

from harness.config import LossConfig, RunConfig, ScheduleConfig, StageConfig, signature
from harness.registry import ConfigError
from harness.rundir import RunDir

SIGNATURE = re.compile(r"[0-9a-f]{10}")
SAME_DATA = ("dataset", "imbalance", "imbalance_factor", "imbalance_params", "val", "val_fraction")
"""Data fields a second stage must share with its first (the same long-tailed training set)."""


# ---------------------------------------------------------------------------------------
# configs

def first_stage_config(cfg: RunConfig) -> RunConfig:
    """The config of the run a second stage starts from when stage.from_run is ''."""
    return dataclasses.replace(cfg, stage=StageConfig())


def stage_config(cfg: RunConfig) -> RunConfig:
    """What a run trains with: `cfg` itself, or for a second stage CE on a linear head for
    stage.epochs epochs (0 for tau_norm) at stage.lr with cosine decay."""
    s = cfg.stage
    if s.kind == "train":
        return cfg
    return dataclasses.replace(
        cfg, loss=LossConfig(name="ce"), model=dataclasses.replace(cfg.model, head="linear"),
        optim=dataclasses.replace(cfg.optim, lr=s.lr),
        schedule=ScheduleConfig(epochs=0 if s.kind == "tau_norm" else s.epochs, warmup_epochs=0,
                                decay="cosine"))


def check_stage(cfg: RunConfig, where: str = "") -> None:
    """Raise ConfigError, naming the key, for a stage that cannot run."""
    s = cfg.stage
    if s.kind == "train":
        if s.from_run:
            raise ConfigError(f"{where}key 'stage.from_run' is only for second stages "
                              f"(stage.kind crt, tau_norm, linear); remove it or set stage.kind")
        return
    if s.epochs < 1 or s.lr <= 0 or s.tau < 0:
        raise ConfigError(f"{where}key 'stage.epochs', 'stage.lr', 'stage.tau' must be >= 1, > 0, >= 0; "
                          f"got {s.epochs}, {s.lr}, {s.tau}")
    if s.kind == "tau_norm" and not s.from_run:
        check_classifier(cfg, f"{where}key 'stage.kind': ")


def check_classifier(first: RunConfig, prefix: str) -> None:
    """tau_norm needs a first stage that trained a linear classifier."""
    from harness.losses import LOSSES
    from harness.models import resolve_head

    loss = LOSSES.get(first.loss.name)
    head = resolve_head(first.model.head, loss)
    if head == "cosine":
        raise ConfigError(f"{prefix}tau_norm needs a linear classifier, but loss {first.loss.name} "
                          f"trains a cosine head (its weights are normalised already); use crt")
    if first.loss.params.get("mode") == "pretrain":
        raise ConfigError(f"{prefix}tau_norm needs a trained classifier, but supcon mode pretrain "
                          f"trains none; use stage.kind linear")


# ---------------------------------------------------------------------------------------
# the first stage's run folder and weights

def first_stage_dir(cfg: RunConfig, run_dir: str | Path) -> RunDir:
    """Where the first stage of this second stage lives."""
    source = cfg.stage.from_run
    if not source:
        return RunDir(Path(run_dir).parent / signature(first_stage_config(cfg)))
    if SIGNATURE.fullmatch(source):
        return RunDir(Path(run_dir).parent / source)
    return RunDir(source)


def load_first_stage(cfg: RunConfig, run_dir: str | Path) -> tuple[RunConfig, dict]:
    """The first stage's config and final model weights; ConfigError if it is not finished."""
    folder = first_stage_dir(cfg, run_dir)
    if not folder.has_config():
        raise ConfigError(f"key 'stage.from_run': first-stage run {folder.path} not found; train it first "
                          f"(the same config with stage.kind train) or set stage.from_run to its folder")
    state = folder.read_state()["state"]
    if state != "finished":
        raise ConfigError(f"key 'stage.from_run': first-stage run {folder.path} is {state}, not finished; "
                          f"run this stage again once it has finished")
    first = folder.read_config()
    check_same_run(cfg, first, folder.path)
    try:
        weights = folder.load_checkpoint()["model"]
    except (OSError, KeyError) as e:
        raise ConfigError(f"key 'stage.from_run': first-stage run {folder.path} has no model weights in "
                          f"{folder.CHECKPOINT} ({type(e).__name__}); train it again") from None
    return first, weights


def check_same_run(cfg: RunConfig, first: RunConfig, folder: Path) -> None:
    """A second stage must start from a train run on the same data with the same backbone."""
    prefix = f"key 'stage.from_run': first-stage run {folder}"
    if first.stage.kind != "train":
        raise ConfigError(f"{prefix} is itself a {first.stage.kind} stage; point to a train run")
    pairs = [(f"data.{k}", getattr(first.data, k), getattr(cfg.data, k)) for k in SAME_DATA]
    pairs.append(("model.name", first.model.name, cfg.model.name))
    for key, theirs, ours in pairs:
        if theirs != ours:
            raise ConfigError(f"{prefix} has {key} {theirs!r}, this run {ours!r}; make them equal")
    if cfg.stage.kind == "tau_norm":
        check_classifier(first, f"{prefix}: ")


# ---------------------------------------------------------------------------------------
# the model a second stage starts from

class Frozen(nn.Module):
    """A module that stays in eval mode and computes no gradients: a fixed representation."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Frozen":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_j / ||w_j||^τ for every class row j (Kang et al. 2020, eq. 3)."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


def stage_model(cfg: RunConfig, run_dir: str | Path, model: nn.Module) -> nn.Module:
    """`model` (built from stage_config(cfg)) as this stage starts from it."""
    s = cfg.stage
    if s.kind == "train":
        return model
    _, weights = load_first_stage(cfg, run_dir)
    backbone = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    model.backbone.load_state_dict(backbone)
    if s.kind == "tau_norm":
        with torch.no_grad():
            model.head.weight.copy_(tau_normalise(weights["head.weight"], s.tau))
            model.head.bias.zero_()
        return model
    model.backbone = Frozen(model.backbone)
    return model
