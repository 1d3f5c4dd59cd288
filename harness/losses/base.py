"""The loss interface, its registry, and the helpers the losses share.

A loss is built by the trainer as `LOSSES.build(name, params, class_counts=counts)`, where
`counts` holds the per-class training counts of the long-tailed set and `params` comes
from the grid (keys are checked against the constructor before anything runs).

The interface (`Loss`):

- `head`: the classifier head the loss needs. "linear": logits W·f + b. "cosine": the head
  returns cos θ (unit feature · unit weight, no bias, not scaled); the loss applies its
  own scale and margins. "projection": the loss works on an embedding (`features`, the
  projection head's output where the model has one) and, in joint mode, a classifier: what the
  model builds for it is `projection` (harness.models.Projection: the MLP, a linear or cosine
  classifier, BCL's class centres as the last C rows of `features`).
  "experts": a multi-expert model (harness.models.ExpertResNet) whose logits are [B, K, C],
  each expert's cos θ already scaled by the model's s, and features [B, K, D] (ride, sade).
- `head_init`, `sigmoid`: how the linear head starts ("kaiming" or nn.Linear's default "torch";
  a sigmoid loss's bias at the prior -log(C - 1), kept out of weight decay): the model builder and
  the optimizer builder read them (harness.models.build_model, harness.run.optim).
- `forward(logits, target, features=None)`: a scalar, the mean over the batch.
- `views`: how many augmented views of each image the batch holds (aug.name 'a,b' gives 2;
  harness.data.augment.Views), set by the trainer. The rows of `logits`, `features` and `target`
  are view-major (row v·B + i is view v of image i, the SupContrast code's torch.cat order).
- `set_epoch(epoch, epochs)`: called at the start of every epoch (0-based).
- `adjust_logits(logits)`: the scores to predict with at evaluation.
- `fit_test_time(logits_of, images, seed)`: called once after the last epoch, before the final
  evaluation; a loss that fits something on the unlabeled test images (transductive: SADE's
  test-time aggregation) does it here and keeps it in its state dict.

Losses that compute one value per sample (`per_sample`) get a `<name>_drw` variant for
free: deferred re-weighting (see `harness.losses.drw`).

"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.heads import Projection
from harness.registry import ConfigError, Registry

Head = Literal["linear", "cosine", "projection", "experts"]
HeadInit = Literal["kaiming", "torch"]

LOSSES: Registry[type["Loss"]] = Registry("loss")


class Loss(nn.Module):
    """Base class: subclasses define `per_sample` (or override `forward`)."""

    head: ClassVar[Head] = "linear"
    drw_compatible: ClassVar[bool] = True
    """Whether a `<name>_drw` variant is registered (needs an unweighted `per_sample`)."""
    projection: ClassVar[Projection] = Projection()
    """With the projection head, what the model builds (harness.models.Projection): SupCon's MLP by
    default (one hidden Linear-ReLU layer, 128-d), beside a linear classifier."""
    head_init: ClassVar[HeadInit] = "kaiming"
    """How the linear classifier's weight starts (harness.models.heads.init_linear): "kaiming",
    kaiming_normal_ as LDAM-DRW's `_weights_init` initialises every nn.Linear of its ResNet-32
    (kaidic/LDAM-DRW models/resnet_cifar.py); "torch", nn.Linear's own default, for a loss whose
    authors' classifier is a plain nn.Linear outside such a model (GPaCo's, SupContrast's)."""
    sigmoid: ClassVar[bool] = False
    """One sigmoid per class (Cui et al. 2019): the linear head's bias starts at -log(C - 1), the
    class prior π = 1/C, and gets no weight decay (richardaecn/class-balanced-loss src/model_base.py
    `_fully_connected`, src/cifar_main.py `_tower_fn`)."""

    def __init__(self, class_counts: torch.Tensor):
        super().__init__()
        self.register_buffer("class_counts", check_counts(class_counts), persistent=False)
        self.views = 1  # the trainer sets it from the augmentation

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor,
                   features: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of each sample, shape [B], without any per-class weight."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        return self.per_sample(upcast(logits), target, features).mean()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of each epoch (0-based); default: nothing."""

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores to predict with at evaluation; default: the logits themselves."""
        return logits

    def fit_test_time(self, logits_of, images: torch.Tensor, seed: int) -> str:
        """After training: fit on the unlabeled test `images` (uint8), `logits_of(images)` giving the
        model's logits (eval mode, no gradient). Returns a line saying what was fitted, '' when
        nothing was (the default)."""
        return ""


# ---------------------------------------------------------------------------------------
# helpers shared by the losses

def check_counts(class_counts) -> torch.Tensor:
    """The per-class training counts as a 1-D float tensor; every class must be present."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
    if counts.dim() != 1 or counts.numel() < 2:
        raise ConfigError(f"class_counts must be a 1-D tensor with one count per class, "
                          f"got shape {tuple(counts.shape)}")
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(f"classes {empty} have no training images; the losses need every class "
                          f"present (lower the imbalance factor or raise n_max)")
    return counts.float()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) are computed with in float32; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def require(ok: bool, message: str) -> None:
    """Reject a bad hyper-parameter value from the grid with a one-line message."""
    if not ok:
        raise ConfigError(message)


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log π_j with π_j = n_j / Σ n, the training label distribution."""
    counts = counts.double()
    return (counts / counts.sum()).log().float()


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_j ∝ (1 - β) / (1 - β^n_j), normalised so that Σ_j w_j = C.

    β = 0 gives equal weights (no re-weighting); β = 1 is the limit 1 / n_j (inverse
    class frequency).
    """
    require(0.0 <= beta <= 1.0, f"beta must be in [0, 1], got {beta}")
    counts = counts.double()
    effective_number = counts if beta == 1.0 else (1.0 - beta ** counts) / (1.0 - beta)
    weights = 1.0 / effective_number
    return (weights * counts.numel() / weights.sum()).float()


def target_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean [B, C] mask that is true at each sample's target class."""
    return F.one_hot(target, logits.shape[1]).bool()
