"""Classifier heads, and which head each kind of loss trains with.

The `cosine` head returns cos θ between the normalised feature and the normalised class weight;
the margin losses scale it and add their margins themselves. The `projection` head is a classifier
(linear, or cosine for BCL) plus the contrastive loss's projection MLP (`Projection`, the loss's
own): features are then the projection of the penultimate embedding, followed, for a loss with
class centres (BCL), by the C classifier weights passed through their own MLP. The `experts` head
is one scaled cosine classifier per expert of a multi-expert backbone (RIDE, SADE): it maps
features [B, K, D] to logits [B, K, C] that already carry the scale s, as in the authors' code.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import ConfigError, Registry

HEADS: Registry = Registry("head")

PROJECTION_DIM = 128
"""Khosla et al. 2020: the contrastive embedding size (their CIFAR code: Linear-ReLU-Linear,
hidden size = the feature size)."""

EXPERT_S = 30.0
"""RIDE and SADE: each expert's cosine logits are multiplied by s = 30 in the model
(frank-xwang/RIDE-LongTailRecognition model/ldam_drw_resnets/ride_resnet_cifar.py, `ResNet_s(s=30)`
with `use_norm=True`; Vanint/SADE-AgnosticLT model/ldam_drw_resnets/expert_resnet_cifar.py, the same)."""

HEAD_CHOICES = {"linear": ("linear",), "cosine": ("cosine",), "projection": ("projection", "linear"),
                "experts": ("experts",)}
"""The heads each kind of loss works with (see harness.losses.Loss.head); the first is 'auto'."""


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """W·f + b; its weight starts as `init_linear` sets it (Classifier)."""


def init_linear(layer: nn.Linear, how: str, bias: float | None = None) -> None:
    """Start a linear classifier's weight as `how` says (harness.losses.Loss.head_init), and its bias
    at the constant `bias` when given (a sigmoid loss's prior, `prior_bias`).

    "kaiming": kaiming_normal_ (fan_in, gain √2: std √(2 / in_features)), as LDAM-DRW's `_weights_init`
    initialises every nn.Linear and Conv2d of its ResNet-32 (kaidic/LDAM-DRW models/resnet_cifar.py);
    the bias keeps nn.Linear's default there. "torch": nn.Linear's own default (kaiming_uniform_ with
    a = √5, std √(1 / (3 · in_features))), left as it is.
    """
    if how == "kaiming":
        nn.init.kaiming_normal_(layer.weight)
    elif how != "torch":
        raise ConfigError(f"head init must be kaiming or torch, got {how!r}")
    if bias is not None:
        nn.init.constant_(layer.bias, bias)


def prior_bias(num_classes: int) -> float:
    """-log(C - 1): the logit at which each of C sigmoids starts at the class prior π = 1/C
    (σ(b) = 1/C). Cui et al. 2019, richardaecn/class-balanced-loss src/model_base.py
    `_fully_connected`: `bias_initializer=tf.constant_initializer(-np.log(out_dim - 1))`."""
    return -math.log(num_classes - 1)


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """cos θ = normalize(f) · normalize(W) (the LDAM 'NormedLinear').

    Each class vector starts at unit norm, uniform in [-1, 1] per coordinate then rescaled, as
    NormedLinear's `weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)` (kaidic/LDAM-DRW
    models/resnet_cifar.py, whose weight is [in, out], so dim 1 is a class; ours is [out, in]).
    The norm matters although the forward normalises: the gradient reaching W scales as 1 / ‖w_j‖,
    so it sets the head's effective learning rate, and weight decay shrinks it over training.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


class ExpertHeads(nn.Module):
    """K cosine classifiers, expert k's on its own features, each scaled by s: [B, K, D] -> [B, K, C].

    As `linears[k](feat) * s` with `NormedLinear` in frank-xwang/RIDE-LongTailRecognition
    model/ldam_drw_resnets/ride_resnet_cifar.py (`ResNet_s._separate_part`; SADE's
    expert_resnet_cifar.py the same). Their NormedLinear is LDAM-DRW's, and so is CosineHead's start:
    every class vector uniform in [-1, 1] per coordinate, renormed to unit norm (their `_weights_init`
    touches nn.Linear and Conv2d only, so it leaves NormedLinear as it is).
    """

    def __init__(self, in_features: int, out_features: int, num_experts: int, s: float = EXPERT_S):
        super().__init__()
        self.experts = nn.ModuleList(CosineHead(in_features, out_features) for _ in range(num_experts))
        self.s = float(s)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.s * head(f[:, k]) for k, head in enumerate(self.experts)], dim=1)


class Projection(NamedTuple):
    """What a contrastive loss asks of the model besides the backbone (`Loss.projection`)."""
    hidden: int = 1
    """Hidden Linear(d, d) layers of the projection MLP, each followed by (batch norm and) ReLU."""
    out: int = PROJECTION_DIM
    """The embedding's size."""
    batch_norm: bool = False
    """A BatchNorm1d after each hidden Linear (PaCo's and BCL's MLPs; SupCon's and GPaCo's have none)."""
    classifier: str = "linear"
    """The classifier beside the projection: linear, or cosine (BCL's NormedLinear; the loss scales it)."""
    centres: bool = False
    """Class centres (BCL): the classifier's C weight vectors through an MLP like the projection's,
    returned after the projections as the last C rows of the features."""


class ProjectionHead(nn.Sequential):
    """`hidden` Linear(d, d)-(BatchNorm1d)-ReLU layers, then a Linear to `out_features`: the embedding
    a contrastive loss compares. SupCon's is one hidden layer to PROJECTION_DIM (Khosla et al. 2020); a
    loss sets its own with a class attribute `projection = Projection(...)` (GPaCo: 2 hidden, 32). Its
    layers keep nn.Linear's default init (SupContrast's networks/resnet_big.py head; GPaCo's hidden
    layers, GPaCo/LT/moco/builder.py, whose last layer is the ResNet's Kaiming-initialised fc)."""

    def __init__(self, in_features: int, out_features: int = PROJECTION_DIM, hidden: int = 1,
                 batch_norm: bool = False):
        def block():
            norm = [nn.BatchNorm1d(in_features)] if batch_norm else []
            return [nn.Linear(in_features, in_features), *norm, nn.ReLU(inplace=True)]

        super().__init__(*[m for _ in range(hidden) for m in block()], nn.Linear(in_features, out_features))


def resolve_head(head: str, loss_cls) -> str:
    """'auto' takes the head the loss asks for: linear, cosine, projection or experts."""
    return HEAD_CHOICES[getattr(loss_cls, "head", "linear")][0] if head == "auto" else head


def check_head(head: str, loss_cls) -> None:
    """Raise ConfigError when `head` cannot serve the loss (e.g. ldam on a linear head; bcl, whose
    centres and cosine classifier come with its projection, on anything but that)."""
    wanted = getattr(loss_cls, "head", "linear")
    choices = HEAD_CHOICES[wanted]
    projection = getattr(loss_cls, "projection", Projection())
    if wanted == "projection" and (projection.centres or projection.classifier != "linear"):
        choices = ("projection",)
    if head != "auto" and head not in choices:
        raise ConfigError(f"loss '{loss_cls.__name__}' needs the {' or '.join(choices)} head, not "
                          f"'{head}'; set model.head to auto or {choices[0]}")
