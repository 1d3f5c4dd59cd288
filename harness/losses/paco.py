"""Generalized parametric contrastive learning, GPaCo (Cui et al., TPAMI 2023; PaCo, ICCV 2021).

One softmax over two kinds of candidates for every anchor (each view of each image): the C class
centres, which are the linear classifier's logits plus log π (the label prior, as Balanced
Softmax adds it), and the other samples of the batch, by the cosine similarity of their
projections over a temperature. The positives are the anchor's own class centre (weight β) and
every other sample of its class (weight α, small); there is no separate cross-entropy term: the
centre part of the softmax is one. At evaluation the classifier predicts with its raw logits.

Followed: dvlab-research/Parametric-Contrastive-Learning, GPaCo/LT/losses.py (PaCoLoss) and
GPaCo/LT/moco/builder.py (both views through one encoder, no momentum encoder), with the
defaults of PaCo/LT/sh/CIFAR100_train_imb0.01.sh for ResNet-32 (α 0.01, β 1, γ 1, temperature
0.05, a 32-d projection). Two differences, both documented where the grid sets them:
- in-batch: the official code keeps a queue of 1024 detached past projections as further
  candidates; here the candidates are the 2B views of the batch (the loss code is the official
  one with K = 0);
- the two views go through the encoder as one batch (shared batch-norm statistics), where the
  official code runs two forwards.

The views come from the augmentation: `aug.name: "standard+autoaugment+cutout,simaugment"` gives
each image a view of each kind (harness.data.augment.Views); the loss gets logits [V·B, C], the
projections [V·B, D] and the labels repeated per view, view-major.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, log_prior, require, upcast

GPACO_ALPHA = 0.01
"""Weight of the sample positives (PaCo/LT/sh/CIFAR100_train_imb0.01.sh: --alpha 0.01)."""
GPACO_BETA = 1.0
"""Weight of the own-class centre positive (--beta 1.0; PaCoLoss's default)."""
GPACO_GAMMA = 1.0
"""Weight of the sample candidates in the denominator (--gamma 1.0)."""
GPACO_TEMPERATURE = 0.05
"""Temperature of the sample similarities (ResNet-32 CIFAR scripts: --moco-t 0.05)."""


def gpaco_loss(z: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor,
               temperature: float, alpha: float, beta: float, gamma: float, smooth: float = 0.0) -> torch.Tensor:
    """PaCoLoss.forward with K = 0, for unit projections z [N, D], classifier logits [N, C] and
    labels [N] (every row is an anchor)."""
    n, c = logits.shape
    sim = z @ z.T / temperature
    scores = torch.cat([logits + log_prior.to(logits), sim], dim=1)  # supt = 1: the centres unscaled
    scores = scores - scores.max(dim=1, keepdim=True).values.detach()
    others = 1.0 - torch.eye(n, device=z.device, dtype=z.dtype)
    same = (target[:, None] == target[None, :]).to(z.dtype) * others
    one_hot = F.one_hot(target, c).to(z.dtype)
    one_hot = smooth / (c - 1) * (1 - one_hot) + (1 - smooth) * one_hot
    positive = torch.cat([beta * one_hot, alpha * same], dim=1)
    candidates = torch.cat([torch.ones(n, c, device=z.device, dtype=z.dtype), gamma * others], dim=1)
    log_prob = scores - torch.log((scores.exp() * candidates).sum(1, keepdim=True) + 1e-12)
    return (-(positive * log_prob).sum(1) / positive.sum(1)).mean()


@LOSSES.register("gpaco")
class GPaCo(Loss):
    """GPaCo (Cui et al., TPAMI 2023): class centres with the label prior and in-batch sample
    positives in one softmax; see the module docstring for the two departures from the official
    code (no queue; one forward of both views)."""

    head = "projection"
    drw_compatible = False  # the prior is already in the centres
    projection = (2, 32)
    """GPaCo's MLP head for ResNet-32: two hidden Linear(64, 64)-ReLU layers, then a 32-d output
    (builder.py with --mlp and --moco-dim 32), no batch norm."""
    head_init = "torch"
    """The classifier is MoCo's `self.linear = nn.Linear(feat_dim, num_classes)`, built outside the
    ResNet-32 whose `_weights_init` would have made it Kaiming: nn.Linear's default init
    (GPaCo/LT/moco/builder.py)."""

    def __init__(self, class_counts, alpha: float = GPACO_ALPHA, beta: float = GPACO_BETA,
                 gamma: float = GPACO_GAMMA, temperature: float = GPACO_TEMPERATURE, smooth: float = 0.0):
        super().__init__(class_counts)
        require(alpha >= 0 and beta > 0 and gamma >= 0, f"gpaco alpha, gamma must be >= 0 and beta > 0, "
                                                         f"got {alpha}, {beta}, {gamma}")
        require(temperature > 0, f"gpaco temperature must be > 0, got {temperature}")
        require(0 <= smooth < 1, f"gpaco smooth must be in [0, 1), got {smooth}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.temperature, self.smooth = float(temperature), float(smooth)
        self.register_buffer("log_prior", log_prior(self.class_counts), persistent=False)

    def forward(self, logits, target, features=None):
        if features is None:
            raise ValueError("gpaco needs the projections (features): the model's projection head")
        z = F.normalize(upcast(features).flatten(1), dim=1)
        return gpaco_loss(z, upcast(logits), target, self.log_prior, self.temperature, self.alpha, self.beta,
                          self.gamma, self.smooth)
