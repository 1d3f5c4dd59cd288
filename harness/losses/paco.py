"""Parametric contrastive learning: PaCo (Cui et al., ICCV 2021) and GPaCo (Cui et al., TPAMI 2023).

One softmax over two kinds of candidates for every anchor: the C class centres, which are the
linear classifier's logits plus log π (the label prior, as Balanced Softmax adds it), and the
other samples, by the cosine similarity of their projections over a temperature. The positives
are the anchor's own class centre (weight β) and every other sample of its class (weight α,
small): this is the rebalancing of the sample and centre terms; γ weighs the samples in the
denominator. There is no separate cross-entropy term: the centre part of the softmax is one. At
evaluation the classifier predicts with its raw logits.

Followed: dvlab-research/Parametric-Contrastive-Learning, PaCo/LT/losses.py and GPaCo/LT/losses.py
(`PaCoLoss`, the same formula; GPaCo's adds label smoothing), PaCo/LT/moco/builder.py and
GPaCo/LT/moco/builder.py, PaCo/LT/paco_cifar.py and GPaCo/LT/paco_cifar.py, with the defaults of
PaCo/LT/sh/CIFAR100_train_imb0.01.sh for ResNet-32 (α 0.01, β 1, γ 1, temperature 0.05, a 32-d
projection, lr 0.05, weight decay 5e-4, 400 epochs). What the official code does differently for
the two, and what the harness keeps:

| | PaCo (`paco`) | GPaCo (`gpaco`) |
| --- | --- | --- |
| second view | a momentum key encoder (m 0.999), no gradient | the same encoder, with gradient |
| anchors | the first (query) view only; logits of it only | both views; logits of both |
| candidates | query and key views, and a queue of 1024 past keys | both views, and a queue of 1024 past views |
| projection | Linear(64, 64)-BatchNorm-ReLU-Linear(64, 32) | two Linear(64, 64)-ReLU layers, Linear(64, 32) |
| contrastive view | SimAugment with blur p 0.5 (`sim_cifar`) | SimAugment with blur p 0.2 (`aug_cifar`) |

Departures, both methods: in-batch (K = 0; no queue of past projections); both views go through
the encoder as one batch (shared batch-norm statistics), where the official code runs two
forwards. PaCo: the key view comes from the current encoder, detached (the momentum encoder with
m = 0), not from a moving average of it. Under DDP each rank contrasts its own share of the batch.

The views come from the augmentation: `aug.name: "standard+autoaugment+cutout,simaugment"` gives
each image a view of each kind (harness.data.augment.Views); the loss gets logits [V·B, C], the
projections [V·B, D] and the labels repeated per view, view-major.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, log_prior, require, upcast
from harness.models.heads import Projection

GPACO_ALPHA = 0.01
"""Weight of the sample positives (PaCo/LT/sh/CIFAR100_train_imb0.01.sh: --alpha 0.01)."""
GPACO_BETA = 1.0
"""Weight of the own-class centre positive (--beta 1.0; PaCoLoss's default)."""
GPACO_GAMMA = 1.0
"""Weight of the sample candidates in the denominator (--gamma 1.0)."""
GPACO_TEMPERATURE = 0.05
"""Temperature of the sample similarities (ResNet-32 CIFAR scripts: --moco-t 0.05)."""


def paco_loss(z: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor,
              temperature: float, alpha: float, beta: float, gamma: float, smooth: float = 0.0,
              anchors: int | None = None) -> torch.Tensor:
    """PaCoLoss.forward with K = 0, for unit projections z [N, D], labels [N] and the classifier
    logits [A, C] of the anchors: the first A rows (`anchors`, all N by default: GPaCo; PaCo's are
    the query view). Each anchor's candidates are the C centres and every row but itself."""
    a, c = logits.shape
    n = len(z)
    require(a == (anchors or n), f"paco: {a} rows of logits for {anchors or n} anchors")
    sim = z[:a] @ z.T / temperature
    scores = torch.cat([logits + log_prior.to(logits), sim], dim=1)  # supt = 1: the centres unscaled
    scores = scores - scores.max(dim=1, keepdim=True).values.detach()
    others = torch.ones(a, n, device=z.device, dtype=z.dtype)
    others[:, :a].fill_diagonal_(0.0)
    same = (target[:a, None] == target[None, :]).to(z.dtype) * others
    one_hot = F.one_hot(target[:a], c).to(z.dtype)
    one_hot = smooth / (c - 1) * (1 - one_hot) + (1 - smooth) * one_hot
    positive = torch.cat([beta * one_hot, alpha * same], dim=1)
    candidates = torch.cat([torch.ones(a, c, device=z.device, dtype=z.dtype), gamma * others], dim=1)
    log_prob = scores - torch.log((scores.exp() * candidates).sum(1, keepdim=True) + 1e-12)
    return (-(positive * log_prob).sum(1) / positive.sum(1)).mean()


@LOSSES.register("gpaco")
class GPaCo(Loss):
    """GPaCo (Cui et al., TPAMI 2023): class centres with the label prior and in-batch sample
    positives in one softmax, every view an anchor; see the module docstring for what differs from
    the official code (no queue; one forward of both views)."""

    head = "projection"
    drw_compatible = False  # the prior is already in the centres
    projection = Projection(hidden=2, out=32)
    """GPaCo's MLP head for ResNet-32: two hidden Linear(64, 64)-ReLU layers, then a 32-d output
    (GPaCo/LT/moco/builder.py with --mlp and --moco-dim 32), no batch norm."""
    head_init = "torch"
    """The classifier is MoCo's `self.linear = nn.Linear(feat_dim, num_classes)`, built outside the
    ResNet-32 whose `_weights_init` would have made it Kaiming: nn.Linear's default init
    (GPaCo/LT/moco/builder.py)."""

    def __init__(self, class_counts, alpha: float = GPACO_ALPHA, beta: float = GPACO_BETA,
                 gamma: float = GPACO_GAMMA, temperature: float = GPACO_TEMPERATURE, smooth: float = 0.0):
        super().__init__(class_counts)
        name = type(self).__name__.lower()
        require(alpha >= 0 and beta > 0 and gamma >= 0, f"{name} alpha, gamma must be >= 0 and beta > 0, "
                                                         f"got {alpha}, {beta}, {gamma}")
        require(temperature > 0, f"{name} temperature must be > 0, got {temperature}")
        require(0 <= smooth < 1, f"{name} smooth must be in [0, 1), got {smooth}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.temperature, self.smooth = float(temperature), float(smooth)
        self.register_buffer("log_prior", log_prior(self.class_counts), persistent=False)

    def forward(self, logits, target, features=None):
        if features is None:
            raise ValueError("gpaco needs the projections (features): the model's projection head")
        z = F.normalize(upcast(features).flatten(1), dim=1)
        return paco_loss(z, upcast(logits), target, self.log_prior, self.temperature, self.alpha, self.beta,
                         self.gamma, self.smooth)


@LOSSES.register("paco")
class PaCo(GPaCo):
    """PaCo (Cui et al., ICCV 2021): GPaCo's loss with the first view as the anchors (the query) and
    the other views as keys without gradient (the momentum encoder with m = 0); the logits of the
    first view only. See the module docstring for the departures (no queue, no moving average)."""

    projection = Projection(hidden=1, out=32, batch_norm=True)
    """PaCo/LT/moco/builder.py with --mlp: Linear(64, 64)-BatchNorm1d-ReLU, then fc to --moco-dim 32."""

    def __init__(self, class_counts, alpha: float = GPACO_ALPHA, beta: float = GPACO_BETA,
                 gamma: float = GPACO_GAMMA, temperature: float = GPACO_TEMPERATURE):
        super().__init__(class_counts, alpha, beta, gamma, temperature)

    def forward(self, logits, target, features=None):
        if features is None:
            raise ValueError("paco needs the projections (features): the model's projection head")
        if self.views < 2 or len(target) % self.views:
            raise ValueError(f"paco needs a query and a key view of each image (aug.name 'a,b'), got "
                             f"{self.views} view(s) for {len(target)} rows")
        b = len(target) // self.views
        z = F.normalize(upcast(features).flatten(1), dim=1)
        z = torch.cat([z[:b], z[b:].detach()])  # keys: no gradient
        return paco_loss(z, upcast(logits[:b]), target, self.log_prior, self.temperature, self.alpha, self.beta,
                         self.gamma, anchors=b)
