"""Margin losses on the cosine head: the logits they receive are cos θ_j, unscaled.

Each one replaces the target logit by a harder one and takes softmax cross-entropy.
At evaluation LDAM, CosFace and ArcFace predict with s·cos θ (the training-time scale of
the non-target logits, so softmax probabilities are on the scale the model was fit on);
SphereFace predicts with cos θ (its scale ‖f‖ is not known there; the argmax is the same).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, require, target_mask

LDAM_MAX_M = 0.5
"""Cao et al. 2019: the largest margin (the rarest class), CIFAR setting."""
LDAM_S = 30.0
"""Cao et al. 2019 code: the scale of the normed (cosine) classifier."""

COSFACE_M = 0.35
"""Wang et al. 2018 (AM-Softmax and CosFace both): the additive cosine margin."""
COSFACE_S = 30.0
"""Wang et al. 2018, AM-Softmax (IEEE SPL): s = 30. CosFace (CVPR) uses s = 64 for faces;
we take the AM-Softmax value, which is also LDAM's s, for few-class image classification."""

ARCFACE_S = 64.0
"""Deng et al. 2019: feature scale."""
ARCFACE_M = 0.5
"""Deng et al. 2019: additive angular margin (radians)."""

SPHEREFACE_M = 4
"""Liu et al. 2017: the angular multiplier m of A-Softmax."""
SPHEREFACE_LAMBDA_BASE = 1000.0
SPHEREFACE_LAMBDA_GAMMA = 0.12
SPHEREFACE_LAMBDA_MIN = 5.0
"""Liu et al. 2017, their Caffe MarginInnerProduct settings: λ = max(λ_min, base·(1 + γ·it)^-1),
`it` the training iteration; λ starts at 1000 and reaches 5 after ~1660 iterations."""

SIN_EPS = 1e-12
"""Floor under 1 - cos²θ before the square root: keeps sin θ's gradient finite at |cos θ| = 1."""


class _CosineLoss(Loss):
    head = "cosine"

    def __init__(self, class_counts, s: float):
        super().__init__(class_counts)
        require(s > 0, f"scale s must be > 0, got {s}")
        self.s = float(s)

    def adjust_logits(self, logits):
        return self.s * logits


@LOSSES.register("ldam")
class LDAM(_CosineLoss):
    """Label-distribution-aware margin: s·(cos θ_y - m_y), m_j ∝ n_j^(-1/4) (Cao et al., NeurIPS 2019)."""

    def __init__(self, class_counts, max_m: float = LDAM_MAX_M, s: float = LDAM_S):
        super().__init__(class_counts, s)
        require(max_m >= 0, f"ldam max_m must be >= 0, got {max_m}")
        margins = self.class_counts.double() ** -0.25
        self.register_buffer("margins", (margins * max_m / margins.max()).float(),
                             persistent=False)

    def per_sample(self, logits, target, features=None):
        cos_m = logits - self.margins.to(logits)  # m_j subtracted from every class, kept at the target
        cos = torch.where(target_mask(logits, target), cos_m, logits)
        return F.cross_entropy(self.s * cos, target, reduction="none")


@LOSSES.register("cosface")
class CosFace(_CosineLoss):
    """Additive cosine margin s·(cos θ_y - m) (Wang et al. 2018, AM-Softmax / CosFace)."""

    def __init__(self, class_counts, s: float = COSFACE_S, m: float = COSFACE_M):
        super().__init__(class_counts, s)
        self.m = float(m)

    def per_sample(self, logits, target, features=None):
        cos = torch.where(target_mask(logits, target), logits - self.m, logits)
        return F.cross_entropy(self.s * cos, target, reduction="none")


@LOSSES.register("arcface")
class ArcFace(_CosineLoss):
    """Additive angular margin s·cos(θ_y + m) (Deng et al., CVPR 2019)."""

    def __init__(self, class_counts, s: float = ARCFACE_S, m: float = ARCFACE_M,
                 easy_margin: bool = False):
        super().__init__(class_counts, s)
        require(0 <= m < math.pi, f"arcface m must be in [0, π), got {m}")
        self.m, self.easy_margin = float(m), bool(easy_margin)
        # where θ + m would pass π, cos(θ + m) stops decreasing in θ; beyond that threshold
        # the target logit falls back to the CosFace-like cos θ - m·sin m (insightface code)
        self.threshold = math.cos(math.pi - m)
        self.fallback = math.sin(math.pi - m) * m

    def per_sample(self, logits, target, features=None):
        cos = logits
        sin = (1.0 - cos * cos).clamp_min(SIN_EPS).sqrt()
        cos_plus_m = cos * math.cos(self.m) - sin * math.sin(self.m)
        if self.easy_margin:
            cos_plus_m = torch.where(cos > 0, cos_plus_m, cos)
        else:
            cos_plus_m = torch.where(cos > self.threshold, cos_plus_m, cos - self.fallback)
        out = torch.where(target_mask(logits, target), cos_plus_m, cos)
        return F.cross_entropy(self.s * out, target, reduction="none")


@LOSSES.register("sphereface")
class SphereFace(Loss):
    """A-Softmax: target logit ‖f‖·(λ cos θ + ψ(θ)) / (1 + λ), ψ = (-1)^k cos mθ - 2k (Liu et al., CVPR 2017).

    λ is annealed per training iteration (an internal counter, saved in the state dict,
    advanced by each forward in training mode with gradients enabled), as in the paper's
    Caffe layer; `set_epoch` does nothing.
    """

    head = "cosine"

    def __init__(self, class_counts, m: int = SPHEREFACE_M,
                 lambda_base: float = SPHEREFACE_LAMBDA_BASE,
                 lambda_gamma: float = SPHEREFACE_LAMBDA_GAMMA,
                 lambda_min: float = SPHEREFACE_LAMBDA_MIN):
        super().__init__(class_counts)
        require(int(m) == m and m >= 1, f"sphereface m must be a positive integer, got {m}")
        self.m = int(m)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_min = float(lambda_min)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def lam(self) -> float:
        """λ at the current iteration."""
        return max(self.lambda_min,
                   self.lambda_base / (1.0 + self.lambda_gamma * int(self.step)))

    def psi(self, cos: torch.Tensor) -> torch.Tensor:
        """ψ(θ) = (-1)^k cos(mθ) - 2k for θ in [kπ/m, (k+1)π/m]: monotonic in θ on [0, π]."""
        theta = cos.detach().clamp(-1.0, 1.0).acos()
        k = (self.m * theta / math.pi).floor().clamp(max=self.m - 1)
        # cos(mθ) as the Chebyshev polynomial T_m(cos θ): smooth in cos θ, unlike acos
        t_prev, t = torch.ones_like(cos), cos
        for _ in range(self.m - 1):
            t_prev, t = t, 2 * cos * t - t_prev
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
        return sign * t - 2.0 * k

    def per_sample(self, logits, target, features=None):
        if features is None:
            raise ValueError("sphereface needs the features (it scales cos θ by ‖f‖)")
        lam = self.lam
        if self.training and torch.is_grad_enabled():
            self.step += 1
        cos = logits
        norm = features.to(cos).norm(dim=1, keepdim=True)
        target_logit = (lam * cos + self.psi(cos)) / (1.0 + lam)
        out = norm * torch.where(target_mask(logits, target), target_logit, cos)
        return F.cross_entropy(out, target, reduction="none")
