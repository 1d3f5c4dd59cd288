"""Balanced contrastive learning, BCL (Zhu et al., CVPR 2022).

Followed: FlamieZhu/Balanced-Contrastive-Learning, loss/contrastive.py (`BalSCL`),
loss/logitadjust.py (`LogitAdjust`, τ = 1), models/resnext.py (`BCLModel`: a NormedLinear cosine
classifier with s = 30, the projection `head` and the centre MLP `head_fc`, both
Linear-BatchNorm-ReLU-Linear, normalised) and main.py (`loss = alpha·ce + beta·scl`; three views
of each image: the classification branch's view for the cross-entropy, two contrastive views for
BalSCL).

    loss = alpha · CE(s·cos θ + log π, y) on the first view
         + beta  · BalSCL(the other views, the class centres)

BalSCL, for each anchor i (every row of the contrastive views) over the candidates j ≠ i (the
contrastive rows and the C class centres):

    -1/|P(i)| Σ_{p ∈ P(i)} log [ exp(z_i·z_p / T) / Σ_c (1/|B_c|) Σ_{j ∈ B_c, j ≠ i} exp(z_i·z_j / T) ]

P(i): the other rows of i's class and its class centre; B_c: the candidates of class c (its rows
in the batch and its centre), |B_c| less one for i's own class (i itself is not a candidate).
Class-averaging is the 1/|B_c| (without it: 1); class-complement is the C centres among the
candidates (and the own centre among the positives): every class is in every batch. Without both,
BalSCL is SupConLoss with temperature = base_temperature (the harness's `supcon`).

The centres are `BCLModel.head_fc(fc.weight.T)`: the cosine classifier's class weights through an
MLP like the projection's (harness.models.Classifier returns them as the last C rows of the
features; `Projection(centres=True)`). At evaluation the classifier predicts with its raw cosine
logits (no prior).

The CIFAR settings come from the paper (the repository has no CIFAR script): alpha 2.0, beta 0.6,
temperature 0.1, ResNet-32; the classification view AutoAugment + Cutout, the contrastive views
SimAugment. Departures: the projection is BCLModel's shape (hidden = the feature size) with a
128-d output; the views go through the encoder as one batch (BCL's code concatenates them too);
under DDP each rank contrasts its own share of the batch (the code uses DataParallel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, log_prior, require, upcast
from harness.models.heads import Projection

BCL_ALPHA = 2.0
"""Weight of the logit-adjusted cross-entropy (Zhu et al. 2022, CIFAR-LT; main.py's ImageNet default is 1.0)."""
BCL_BETA = 0.6
"""Weight of BalSCL (Zhu et al. 2022, CIFAR-LT; main.py's ImageNet default is 0.35)."""
BCL_TEMPERATURE = 0.1
"""BalSCL's temperature (contrastive.py's default and the paper's CIFAR value; main.py's ImageNet --temp is 0.07)."""
BCL_SCALE = 30.0
"""models/resnext.py NormedLinear: `self.s = 30`, the cosine logits' scale."""


def balanced_contrastive(z: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, temperature: float,
                         class_averaging: bool = True, class_complement: bool = True) -> torch.Tensor:
    """`BalSCL.forward` for unit embeddings z [N, D] (the contrastive views, view-major), their labels
    [N] and unit class centres [C, D]; generalised from the code's two views to any number."""
    n, c = len(labels), len(centres)
    candidates = torch.cat([z, centres]) if class_complement else z
    cand_labels = torch.cat([labels, torch.arange(c, device=labels.device)]) if class_complement else labels
    not_self = torch.ones(n, len(cand_labels), dtype=torch.bool, device=z.device)
    not_self[:, :n].fill_diagonal_(False)
    positive = (labels[:, None] == cand_labels[None, :]) & not_self
    scores = z @ candidates.T / temperature
    scores = scores - scores.max(dim=1, keepdim=True).values.detach()
    weight = torch.ones_like(scores)
    if class_averaging:  # 1 / |B_c|: the class's candidates in the batch, less the anchor for its own class
        per_class = torch.bincount(cand_labels, minlength=c).to(scores.dtype)
        weight = 1.0 / (per_class[cand_labels][None, :] - positive.to(scores.dtype))
    denominator = (scores.exp() * weight * not_self).sum(dim=1, keepdim=True)
    log_prob = scores - denominator.log()
    n_positive = positive.sum(dim=1)
    mean_log_prob_pos = (log_prob * positive).sum(dim=1) / n_positive.clamp(min=1)
    return -mean_log_prob_pos.mean()


@LOSSES.register("bcl")
class BCL(Loss):
    """BCL (Zhu et al., CVPR 2022): alpha·logit-adjusted CE on the first view + beta·BalSCL on the
    other views with the class centres; see the module docstring. Needs at least two views (the
    code's three: aug.name 'standard+autoaugment+cutout,simaugment,simaugment')."""

    head = "projection"
    drw_compatible = False
    projection = Projection(hidden=1, out=128, batch_norm=True, classifier="cosine", centres=True)
    """BCLModel: `head` and `head_fc` are Linear(d, d)-BatchNorm1d-ReLU-Linear(d, 128), `fc` NormedLinear."""

    def __init__(self, class_counts, alpha: float = BCL_ALPHA, beta: float = BCL_BETA,
                 temperature: float = BCL_TEMPERATURE, scale: float = BCL_SCALE,
                 class_averaging: bool = True, class_complement: bool = True):
        super().__init__(class_counts)
        require(alpha >= 0 and beta >= 0, f"bcl alpha and beta must be >= 0, got {alpha}, {beta}")
        require(temperature > 0 and scale > 0, f"bcl temperature and scale must be > 0, got {temperature}, {scale}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.scale = float(temperature), float(scale)
        self.class_averaging, self.class_complement = bool(class_averaging), bool(class_complement)
        self.register_buffer("log_prior", log_prior(self.class_counts), persistent=False)

    def forward(self, logits, target, features=None):
        c, views = self.num_classes, self.views
        if features is None or features.shape[0] != len(target) + c:
            raise ValueError("bcl needs features: the projections of every row, then the C class centres "
                             "(the model's projection head with Projection(centres=True))")
        if views < 2 or len(target) % views:
            raise ValueError(f"bcl needs the classification view and at least one contrastive view "
                             f"(aug.name 'a,b,c'), got {views} view(s) for {len(target)} rows")
        b = len(target) // views
        features = F.normalize(upcast(features), dim=1)
        z, centres = features[b:-c], features[-c:]
        ce = F.cross_entropy(self.scale * upcast(logits[:b]) + self.log_prior, target[:b])
        scl = balanced_contrastive(z, target[b:], centres, self.temperature, self.class_averaging,
                                   self.class_complement)
        return self.alpha * ce + self.beta * scl
