"""Backbones and classifier heads.

A model maps images to `(logits, features)`: features are the penultimate embedding, logits
come from the head. The `cosine` head returns cos θ between the normalised feature and the
normalised class weight; the margin losses scale it and add their margins themselves. The
`projection` head is a linear classifier plus SupCon's projection MLP: features are then the
projection of the penultimate embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import ConfigError, Registry

MODELS: Registry = Registry("model")
HEADS: Registry = Registry("head")


# ---------------------------------------------------------------------------------------
# heads

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


PROJECTION_DIM = 128
"""Khosla et al. 2020: the contrastive embedding size (their CIFAR code: Linear-ReLU-Linear,
hidden size = the feature size)."""

HEAD_CHOICES = {"linear": ("linear",), "cosine": ("cosine",), "projection": ("projection", "linear")}
"""The heads each kind of loss works with (see harness.losses.Loss.head); the first is 'auto'."""


class ProjectionHead(nn.Sequential):
    """Linear-ReLU-Linear to PROJECTION_DIM: the embedding SupCon contrasts (Khosla et al. 2020)."""

    def __init__(self, in_features: int, out_features: int = PROJECTION_DIM):
        super().__init__(nn.Linear(in_features, in_features), nn.ReLU(inplace=True),
                         nn.Linear(in_features, out_features))


def resolve_head(head: str, loss_cls) -> str:
    """'auto' takes the head the loss asks for: linear, cosine, or projection."""
    return HEAD_CHOICES[getattr(loss_cls, "head", "linear")][0] if head == "auto" else head


def check_head(head: str, loss_cls) -> None:
    """Raise ConfigError when `head` cannot serve the loss (e.g. ldam on a linear head)."""
    wanted = getattr(loss_cls, "head", "linear")
    choices = HEAD_CHOICES[wanted]
    if head != "auto" and head not in choices:
        raise ConfigError(f"loss '{loss_cls.__name__}' needs the {' or '.join(choices)} head, not "
                          f"'{head}'; set model.head to auto or {choices[0]}")


class Classifier(nn.Module):
    """A backbone (images -> features), a head (features -> logits) and, for SupCon, a
    projection (features -> the embedding returned as features)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head: str):
        super().__init__()
        self.backbone = backbone
        self.head = HEADS.get("linear" if head == "projection" else head)(feature_dim, num_classes)
        self.projection = ProjectionHead(feature_dim) if head == "projection" else None
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.head(f), (f if self.projection is None else self.projection(f))


# ---------------------------------------------------------------------------------------
# ResNet-32 for CIFAR (He et al. 2016, option A shortcuts), as in the LDAM-DRW code

class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """3 stages of `n` basic blocks with 16/32/64 channels; depth = 6n + 2."""

    def __init__(self, n: int, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(_BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


@MODELS.register("resnet32")
def resnet32() -> CifarResNet:
    """ResNet-32 (about 0.46M parameters with a 10-class head)."""
    return CifarResNet(5)


@MODELS.register("resnet8")
def resnet8() -> CifarResNet:
    """ResNet-8: the same family, small enough for CPU learning tests."""
    return CifarResNet(1)


@MODELS.register("resnet8_narrow")
def resnet8_narrow() -> CifarResNet:
    """ResNet-8 at half width (8/16/32 channels): about 3x faster on the CPU, for learning tests."""
    return CifarResNet(1, width=8)


def build_model(name: str, num_classes: int, head: str) -> Classifier:
    backbone = MODELS.get(name)()
    return Classifier(backbone, backbone.out_dim, num_classes, head)
