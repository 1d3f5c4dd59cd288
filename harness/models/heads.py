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
    """W·f + b."""


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """cos θ = normalize(f) · normalize(W) (the LDAM 'NormedLinear')."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


class ExpertHeads(nn.Module):
    """K cosine classifiers, expert k's on its own features, each scaled by s: [B, K, D] -> [B, K, C].

    As `linears[k](feat) * s` with `NormedLinear` in frank-xwang/RIDE-LongTailRecognition
    model/ldam_drw_resnets/ride_resnet_cifar.py (`ResNet_s._separate_part`). Their NormedLinear
    weight starts uniform in [-1, 1] (then rescaled, which the normalisation undoes); CosineHead's
    kaiming_uniform is uniform in a cube too, so the initial directions have the same distribution.
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
    loss sets its own with a class attribute `projection = Projection(...)` (GPaCo: 2 hidden, 32)."""

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
