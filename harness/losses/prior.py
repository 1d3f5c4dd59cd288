"""Losses that correct for the label prior π_j = n_j / N through the logits."""
from __future__ import annotations

import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, log_prior

LA_TAU = 1.0
"""Menon et al. 2021: τ = 1 is the Bayes-consistent choice for the balanced error."""


class _PriorLoss(Loss):
    def __init__(self, class_counts):
        super().__init__(class_counts)
        self.register_buffer("log_prior", log_prior(self.class_counts), persistent=False)


@LOSSES.register("balanced_softmax")
class BalancedSoftmax(_PriorLoss):
    """Balanced softmax: CE on logits + log π (Ren et al., NeurIPS 2020)."""

    def per_sample(self, logits, target, features=None):
        return F.cross_entropy(logits + self.log_prior.to(logits), target, reduction="none")


@LOSSES.register("logit_adjust")
class LogitAdjusted(_PriorLoss):
    """Logit-adjusted loss: CE on logits + τ·log π (Menon et al., ICLR 2021, eq. 10)."""

    def __init__(self, class_counts, tau: float = LA_TAU):
        super().__init__(class_counts)
        self.tau = float(tau)

    def per_sample(self, logits, target, features=None):
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits), target,
                               reduction="none")


@LOSSES.register("logit_adjust_posthoc")
class PostHocLogitAdjusted(_PriorLoss):
    """CE training, predict with logits - τ·log π (Menon et al., ICLR 2021, eq. 9)."""

    drw_compatible = False  # DRW and the post-hoc shift both correct for the prior

    def __init__(self, class_counts, tau: float = LA_TAU):
        super().__init__(class_counts)
        self.tau = float(tau)

    def per_sample(self, logits, target, features=None):
        return F.cross_entropy(logits, target, reduction="none")

    def adjust_logits(self, logits):
        return logits - self.tau * self.log_prior.to(logits)
