"""Weight balancing's second stage (Alshammari, Wang, Ramanan, Kong, CVPR 2022): the first stage's
linear classifier re-trained on the frozen features with a class-balanced loss, a large weight
decay and a per-class MaxNorm constraint.

Followed: ShadeAlsha/LTR-weight-balancing, demo2_second-stage-training.py (the recipe: fc weight
and bias fine-tuned from the first stage, `CB_loss(..., "softmax", 0.9999)`, SGD lr 0.01, momentum
0.9, weight decay 0.1, cosine over 10 epochs, thresh 0.1) and utils/regularizers.py
`MaxNorm_via_PGD` (the constraint). The recipe's numbers live in harness.config.schema
(STAGE_DEFAULTS, StageConfig.maxnorm_thresh); the loss is `cb_softmax_bce` (harness.losses.classic).

The constraint: every class row w_j of the classifier's weight lies in the L2 ball of radius δ,

    δ = min_j ||w_j|| + thresh · (max_j ||w_j|| - min_j ||w_j||)     over the first stage's rows,

fixed before the stage trains (`setPerLayerThresh` right after copying the first-stage model),
and projected onto it by w_j <- w_j · min(1, δ / ||w_j||) (`PGD`, tau 1); the bias is not
constrained (its threshold is infinite there). When: the code projects once per epoch, after the
epoch's last step (utils/trainval.py: `if phase == 'train': pgdFunc.PGD(model)`); the paper
(Sec. 3.1, eq. 5) renormalises after each batch update. The code is the default
(`stage.maxnorm_every: epoch`), the paper one key away (`step`).

Where the harness differs from the code: the backbone's BatchNorm statistics stay fixed (Frozen,
eval mode), as in cRT; the code calls model.train(), so they keep adapting to the same training
set during the 10 epochs. The cosine lr decays per step, not per epoch, and the batch is
optim.batch_size unless stage.batch_size sets the code's 64.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def maxnorm_radius(weight: torch.Tensor, thresh: float) -> float:
    """δ = min + thresh · (max - min) of the per-class L2 norms of `weight` (C x D)."""
    norms = weight.detach().norm(dim=1)
    return float(norms.min() + thresh * (norms.max() - norms.min()))


@torch.no_grad()
def project_rows(weight: torch.Tensor, radius: float) -> None:
    """w_j <- w_j · min(1, δ / ||w_j||) for every row, in place: the rows above δ end on the
    sphere of radius δ, the others stay as they are."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_((radius / norms.clamp_min(1e-12)).clamp(max=1.0))


class MaxNorm:
    """The trainer's step hook for maxnorm: `hook(model, epoch_end)` after every optimizer step
    projects model.head.weight onto the radius fixed from the first stage's classifier, after
    every step or only at the end of each epoch."""

    def __init__(self, first_stage_weight: torch.Tensor, thresh: float, every: str):
        self.radius = maxnorm_radius(first_stage_weight, thresh)
        self.every = every

    def __call__(self, model: nn.Module, epoch_end: bool) -> None:
        if self.every == "step" or epoch_end:
            project_rows(model.head.weight, self.radius)
