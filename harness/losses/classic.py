"""Cross-entropy, the focal losses, and the class-balanced (effective number) losses.

Two focal losses, as two papers ran them:
- `focal`: softmax focal loss, -(1 - p_y)^γ log p_y with p = softmax(z): the Focal baseline of the
  LDAM-DRW code (kaidic/LDAM-DRW losses.py `FocalLoss`, run there with γ = 1).
- `sigmoid_focal`: Cui et al.'s sigmoid focal loss, Σ_j (1 - p^t_j)^γ BCE_j, one sigmoid per class,
  γ = 1: the "Focal" row of Cui et al. 2019 Table 2, which Cao et al. 2019 repeat in theirs. It is
  `cb_focal` with β = 0.

The sigmoid losses (`sigmoid_focal`, `cb_sigmoid`, `cb_focal`) set `Loss.sigmoid`: their linear
head's bias starts at -log(C - 1) and gets no weight decay, as in Cui et al.'s code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, effective_number_weights, require, upcast

FOCAL_GAMMA = 2.0
"""Lin et al. 2017: γ = 2 works best in their ablation (Table 1b) and is RetinaNet's value.
The LDAM-DRW code's Focal baseline uses γ = 1; set `gamma: 1.0` to reproduce its table."""

CB_BETA = 0.9999
"""Cui et al. 2019: the β of their CIFAR-LT runs (cifar_im_trainval_cb.sh)."""

CB_FOCAL_GAMMA = 1.0
"""Cui et al. 2019: γ of their CIFAR-LT focal runs (cifar_im_trainval_cb.sh); the paper
searches γ ∈ {0.5, 1, 2}."""
SIGMOID_FOCAL_GAMMA = 1.0
"""Cui et al. 2019: γ of their focal baseline without class balance (cifar_im_trainval.sh:
LOSS_TYPE=focal, GAMMA=1.0, BETA=0)."""


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """Softmax cross-entropy, the baseline."""

    def per_sample(self, logits, target, features=None):
        return F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("focal")
class Focal(Loss):
    """Softmax focal loss -(1 - p_t)^γ log p_t (Lin et al., ICCV 2017), no α term: LDAM-DRW's
    `FocalLoss` (kaidic/LDAM-DRW losses.py). γ defaults to Lin et al.'s 2; the LDAM-DRW code runs 1.
    The published CIFAR-LT "Focal" numbers are the sigmoid focal loss: `sigmoid_focal`."""

    def __init__(self, class_counts, gamma: float = FOCAL_GAMMA):
        super().__init__(class_counts)
        require(gamma >= 0, f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def per_sample(self, logits, target, features=None):
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        if self.gamma == 0:
            return -log_p
        return (-log_p.expm1()).pow(self.gamma) * -log_p  # -expm1(log p) = 1 - p, exact near p = 1


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Σ_i (1 - p_i^t)^γ · BCE_i over the classes (Cui et al. eq. 6), one value per sample."""
    labels = F.one_hot(target, logits.shape[1]).to(logits)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if gamma:
        # (1 - p^t)^γ written as exp(-γ·(y·z + log(1 + e^-z))), stable for large |z| (Cui et al. code)
        bce = bce * torch.exp(-gamma * (labels * logits + F.softplus(-logits)))
    return bce.sum(dim=1)


@LOSSES.register("sigmoid_focal")
class SigmoidFocal(Loss):
    """Sigmoid focal loss without class balance (Cui et al., CVPR 2019, eq. 6 with β = 0): the
    "Focal" baseline of their Table 2 (richardaecn/class-balanced-loss src/cifar_main.py
    `focal_loss`, run by cifar_im_trainval.sh with β = 0, γ = 1). Summed over the classes, averaged
    over the batch (their code divides by the number of positive labels, one per image). γ = 0 is
    the plain sigmoid cross-entropy (their "Sigmoid" row)."""

    sigmoid = True

    def __init__(self, class_counts, gamma: float = SIGMOID_FOCAL_GAMMA):
        super().__init__(class_counts)
        require(gamma >= 0, f"sigmoid_focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def per_sample(self, logits, target, features=None):
        return sigmoid_focal(logits, target, self.gamma)


class _ClassBalanced(Loss):
    """Scales each sample's loss by its class's effective-number weight (Cui et al., CVPR 2019)."""

    drw_compatible = False  # already weighted by the very weights DRW would apply

    def __init__(self, class_counts, beta: float):
        super().__init__(class_counts)
        self.beta = float(beta)
        self.register_buffer("weight", effective_number_weights(self.class_counts, beta),
                             persistent=False)

    def forward(self, logits, target, features=None):
        losses = self.per_sample(upcast(logits), target, features)
        # Cui et al. divide by the batch size (the number of positive labels), not by Σ w
        return (self.weight.to(losses)[target] * losses).mean()


@LOSSES.register("cb_softmax")
class ClassBalancedSoftmax(_ClassBalanced):
    """Class-balanced softmax cross-entropy (Cui et al., CVPR 2019, eq. 5)."""

    def __init__(self, class_counts, beta: float = CB_BETA):
        super().__init__(class_counts, beta)

    def per_sample(self, logits, target, features=None):
        return F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("cb_softmax_bce")
class ClassBalancedSoftmaxBCE(_ClassBalanced):
    """Class-balanced binary cross-entropy on softmax probabilities: the loss weight balancing's
    second stage trains with (Alshammari et al., CVPR 2022; ShadeAlsha/LTR-weight-balancing
    demo2_second-stage-training.py calls utils/class_balanced_loss.py `CB_loss(..., "softmax", 0.9999, ...)`,
    the PyTorch port of Cui et al.'s loss):

        L = 1/(B·C) Σ_i w_{y_i} Σ_j BCE(p_ij, [j = y_i]),   p = softmax(z),  w: effective-number weights

    It is about 1/C of the softmax cross-entropy `cb_softmax` (Cui et al.'s eq. 5), so a weight
    decay tuned with it (weight balancing's 0.1) is relatively much stronger."""

    def __init__(self, class_counts, beta: float = CB_BETA):
        super().__init__(class_counts, beta)

    def per_sample(self, logits, target, features=None):
        p = logits.softmax(dim=1)
        labels = F.one_hot(target, p.shape[1]).to(p)
        return F.binary_cross_entropy(p, labels, reduction="none").mean(dim=1)  # log clamped at -100, as there


@LOSSES.register("cb_sigmoid")
class ClassBalancedSigmoid(_ClassBalanced):
    """Class-balanced sigmoid cross-entropy, summed over classes (Cui et al., CVPR 2019)."""

    sigmoid = True

    def __init__(self, class_counts, beta: float = CB_BETA):
        super().__init__(class_counts, beta)

    def per_sample(self, logits, target, features=None):
        return sigmoid_focal(logits, target, gamma=0.0)


@LOSSES.register("cb_focal")
class ClassBalancedFocal(_ClassBalanced):
    """Class-balanced sigmoid focal loss (Cui et al., CVPR 2019, eq. 6)."""

    sigmoid = True

    def __init__(self, class_counts, beta: float = CB_BETA, gamma: float = CB_FOCAL_GAMMA):
        super().__init__(class_counts, beta)
        require(gamma >= 0, f"cb_focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def per_sample(self, logits, target, features=None):
        return sigmoid_focal(logits, target, self.gamma)
