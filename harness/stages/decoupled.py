"""Decoupled training's pieces (Kang et al., ICLR 2020) that every second stage shares: where its
first stage is, that run's config and weights, the frozen backbone, and τ-norm's search.

A second stage's first stage is `stage.from_run` (a signature in the same grid folder, or a run
folder) or, by default, the cell's own config with `stage.kind: train`, so a grid axis
`stage.kind: [train, crt, tau_norm]` pairs every second stage with its first. It starts from the
first stage's last epoch, or with `stage.from_epoch: best` from its best epoch on the validation
split (ckpt/best.pt), as Kang et al.'s code loads `state_dict_best` (run_networks.py, load_model).

Followed: facebookresearch/classifier-balancing, run_networks.py (cRT: init_models freezes the
feature model's parameters, train() puts every network in train mode, so its BatchNorm statistics
move; see Frozen) and tau_norm.py (τ-norm: logits f·w̃ᵀ without the bias, w̃_j = w_j / ||w_j||^τ,
swept over τ = 0, 0.1, ..., 2 and read off on val; see tau_hits and choose_tau).
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
    """The first stage's config and model weights (its last epoch's, or with stage.from_epoch best
    its best epoch's on the validation split); ConfigError if it is not finished."""
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
    if cfg.stage.from_epoch == "best":
        return first, load_best(folder)
    try:
        weights = folder.load_checkpoint()["model"]
    except (OSError, KeyError) as e:
        raise ConfigError(f"key 'stage.from_run': first-stage run {folder.path} has no model weights in "
                          f"{folder.CHECKPOINT} ({type(e).__name__}); train it again") from None
    return first, weights


def load_best(folder: RunDir) -> dict:
    """The weights of the first stage's best epoch on the validation split (ckpt/best.pt), checked
    against the best epoch its result names (a checkpoint set aside by --retry-failed can leave a
    best.pt of an epoch the run then did again)."""
    prefix = f"key 'stage.from_epoch': first-stage run {folder.path}"
    if not folder.best_checkpoint.is_file():
        raise ConfigError(f"{prefix} kept no {folder.BEST_CHECKPOINT} (runs keep it with data.val split or val, "
                          f"since this version); train it again or set stage.from_epoch last")
    best = folder.load_checkpoint(path=folder.best_checkpoint)
    epoch = folder.read_result().get("best", {}).get("epoch")
    if best.get("epoch") != epoch:
        raise ConfigError(f"{prefix}: {folder.BEST_CHECKPOINT} is epoch {best.get('epoch')} but its result's best "
                          f"epoch is {epoch}; train it again or set stage.from_epoch last")
    return best["model"]


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
    """A module whose parameters never change and that computes no gradients: a fixed representation.

    By default it stays in eval mode, so its BatchNorm layers keep the first stage's statistics.
    With `bn_train` it follows the trainer's train()/eval() as Kang et al.'s cRT does (run_networks.py:
    `model.train()` on every network each epoch, the feature model's parameters requires_grad False):
    in training each batch is normalised with its own statistics and the running statistics move
    towards the (class-balanced) training batches' with BatchNorm's momentum; evaluation uses them.

    A 2-D input is a batch of features it already computed (ldmlr trains its classifier on
    those): it passes through as it is."""

    def __init__(self, module: nn.Module, bn_train: bool = False):
        super().__init__()
        self.bn_train = bn_train
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Frozen":
        return super().train(mode and self.bn_train)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x
        with torch.no_grad():
            return self.module(x)


def fixed_backbone(model: nn.Module) -> bool:
    """Whether `model`'s backbone computes the same features for an image at every epoch: Frozen,
    its BatchNorm statistics kept (not cRT's stage.bn train, whose statistics move)."""
    backbone = getattr(model, "backbone", None)
    return isinstance(backbone, Frozen) and not backbone.bn_train


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_j / ||w_j||^τ for every class row j (Kang et al. 2020, eq. 3)."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


def tau_hits(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, taus: list[float],
             num_classes: int) -> torch.Tensor:
    """[len(taus), C]: for each τ, the images of each class that f·w̃ᵀ (w̃ = tau_normalise(weight, τ),
    no bias, as tau_norm.py's dotproduct_similarity) classifies right. Summed over the ranks, with
    the per-class totals, they give each τ's accuracy (choose_tau)."""
    hits = torch.zeros(len(taus), num_classes, dtype=torch.float64, device=features.device)
    features, weight = features.double(), weight.double()
    for i, tau in enumerate(taus):
        right = (features @ tau_normalise(weight, tau).T).argmax(1) == labels
        hits[i] = torch.bincount(labels[right], minlength=num_classes).double()
    return hits


def choose_tau(taus: list[float], hits: torch.Tensor, totals: torch.Tensor) -> tuple[float, list[float]]:
    """(the chosen τ, each τ's accuracy in %): the mean per-class accuracy (tau_norm.py's
    np.mean(cls_accs); equal to top-1 on a balanced split) over the classes with images, the best
    one chosen, the first of equals."""
    seen = totals > 0
    accs = (100 * hits[:, seen] / totals[seen]).mean(1).tolist()
    return taus[max(range(len(taus)), key=lambda i: (accs[i], -i))], accs
