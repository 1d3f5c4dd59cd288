"""Backbones (images -> features), registered in MODELS.

A backbone has `out_dim`, the size of its features. A multi-expert backbone also has
`num_experts` (K) and returns features [B, K, out_dim], one vector per expert; its builder takes
a `num_experts` parameter (`model.params` in a grid), which is how the harness tells the two
kinds apart before building anything (`expert_count`).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import ConfigError, Registry

MODELS: Registry = Registry("model")

# ---------------------------------------------------------------------------------------
# ResNet-32 for CIFAR (He et al. 2016, option A shortcuts), as in the LDAM-DRW code

RIDE_EXPERTS = 3
"""RIDE and SADE on CIFAR: 3 experts (frank-xwang/RIDE-LongTailRecognition
configs/config_imbalance_cifar100_ride.json and Vanint/SADE-AgnosticLT
configs/config_cifar100_ir100_sade.json, `num_experts: 3`)."""
REDUCE_DIMENSION = True
"""Both CIFAR configs set `reduce_dimension: true`: each expert's layer2 / layer3 are 24 / 48 channels
wide instead of ResNet-32's 32 / 64 (ride_resnet_cifar.py, `ResNet_s`)."""


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels on both sides."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    """`n` basic blocks, the first with `stride`."""
    return nn.Sequential(*(_BasicBlock(in_planes if j == 0 else planes, planes, stride if j == 0 else 1)
                           for j in range(n)))


def _init_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


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
        _init_convs(self)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ExpertResNet(nn.Module):
    """RIDE's multi-expert CIFAR ResNet: a shared stem and first stage, then K experts, each with
    its own second and third stage; features [B, K, out_dim] (each expert's pooled features).

    Follows frank-xwang/RIDE-LongTailRecognition model/ldam_drw_resnets/ride_resnet_cifar.py
    (`ResNet_s` with `num_experts`, `reduce_dimension`; SADE's model/ldam_drw_resnets/
    expert_resnet_cifar.py is the same network): conv1 + bn1 + layer1 shared, `layer2s[k]`,
    `layer3s[k]` per expert, stride 2 at the start of each, option A shortcuts that zero-pad
    (planes - in_planes) / 2 channels on each side, kaiming_normal_ conv weights. Widths:
    `width` for the shared part; 1.5x and 3x `width` for the experts' stages with
    `reduce_dimension` (RIDE's 24 / 48 at width 16), else 2x and 4x (ResNet-32's 32 / 64).
    RIDE's `use_experts` (a random subset of experts per forward) is not used by its CIFAR
    configs and is not implemented.
    """

    def __init__(self, n: int, num_experts: int, reduce_dimension: bool, width: int = 16):
        super().__init__()
        if int(num_experts) != num_experts or num_experts < 1:
            raise ConfigError(f"num_experts must be a positive integer, got {num_experts}")
        w2, w3 = (width * 3 // 2, width * 3) if reduce_dimension else (2 * width, 4 * width)
        self.num_experts, self.out_dim = int(num_experts), w3
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = _stage(width, width, n, 1)
        self.layer2s = nn.ModuleList(_stage(width, w2, n, 2) for _ in range(self.num_experts))
        self.layer3s = nn.ModuleList(_stage(w2, w3, n, 2) for _ in range(self.num_experts))
        _init_convs(self)

    def forward(self, x):
        shared = self.layer1(F.relu(self.bn(self.conv(x))))
        feats = [F.adaptive_avg_pool2d(layer3(layer2(shared)), 1).flatten(1)
                 for layer2, layer3 in zip(self.layer2s, self.layer3s)]
        return torch.stack(feats, dim=1)


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


@MODELS.register("resnet32_experts")
def resnet32_experts(num_experts: int = RIDE_EXPERTS, reduce_dimension: bool = REDUCE_DIMENSION) -> ExpertResNet:
    """RIDE's / SADE's CIFAR ResNet-32 with K experts (0.78M parameters with 3 experts, 100 classes
    and the experts head); train it with an expert loss (ride, sade)."""
    return ExpertResNet(5, num_experts, reduce_dimension)


@MODELS.register("resnet8_narrow_experts")
def resnet8_narrow_experts(num_experts: int = RIDE_EXPERTS,
                           reduce_dimension: bool = REDUCE_DIMENSION) -> ExpertResNet:
    """A test-size expert model: one block per stage at half width (shared 8 channels, experts
    12 / 24 with reduce_dimension), for the CPU learning tests; not a model of any paper."""
    return ExpertResNet(1, num_experts, reduce_dimension, width=8)


def expert_count(name: str, params: dict | None = None):
    """K (as `params` or the builder's default give it) for a multi-expert backbone, whose builder
    takes `num_experts`; None for the others. Read from the signature, without building anything."""
    parameters = inspect.signature(MODELS.get(name)).parameters
    if "num_experts" not in parameters:
        return None
    return (params or {}).get("num_experts", parameters["num_experts"].default)
