"""Decoupled training's pieces (Kang et al., ICLR 2020) that every second stage shares: where its
first stage is, that run's config and weights, and the frozen backbone.

A second stage's first stage is `stage.from_run` (a signature in the same grid folder, or a run
folder) or, by default, the cell's own config with `stage.kind: train`, so a grid axis
`stage.kind: [train, crt, tau_norm]` pairs every second stage with its first.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
import torch.nn as nn

from harness.config import RunConfig, StageConfig, signature
from harness.registry import ConfigError
from harness.rundir import RunDir

SIGNATURE = re.compile(r"[0-9a-f]{10}")
SAME_DATA = ("dataset", "imbalance", "imbalance_factor", "imbalance_params", "val", "val_fraction")
"""Data fields a second stage must share with its first (the same long-tailed training set)."""

FROM_CLASSIFIER = ("tau_norm", "maxnorm", "ldmlr")
"""The kinds that start from the first stage's linear classifier (the others train a new one)."""


# ---------------------------------------------------------------------------------------
# the first stage's config and run folder

def first_stage_config(cfg: RunConfig) -> RunConfig:
    """The config of the run a second stage starts from when stage.from_run is ''."""
    return dataclasses.replace(cfg, stage=StageConfig())


def check_classifier(first: RunConfig, prefix: str, kind: str) -> None:
    """tau_norm, maxnorm and ldmlr need a first stage that trained a linear classifier."""
    from harness.losses import LOSSES
    from harness.models import resolve_head

    loss = LOSSES.get(first.loss.name)
    head = resolve_head(first.model.head, loss)
    if head == "cosine":
        raise ConfigError(f"{prefix}{kind} needs a linear classifier, but loss {first.loss.name} "
                          f"trains a cosine head (its weights are normalised already); use crt")
    if first.loss.params.get("mode") == "pretrain":
        raise ConfigError(f"{prefix}{kind} needs a trained classifier, but supcon mode pretrain "
                          f"trains none; use stage.kind linear")


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
    if cfg.stage.kind in FROM_CLASSIFIER:
        check_classifier(first, f"{prefix}: ", cfg.stage.kind)


# ---------------------------------------------------------------------------------------
# the model a second stage starts from

class Frozen(nn.Module):
    """A module that stays in eval mode and computes no gradients: a fixed representation.

    A 2-D input is a batch of features it already computed (ldmlr trains its classifier on
    those): it passes through as it is."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Frozen":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x
        with torch.no_grad():
            return self.module(x)


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_j / ||w_j||^τ for every class row j (Kang et al. 2020, eq. 3)."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)
