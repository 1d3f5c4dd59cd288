"""Supervised contrastive learning (Khosla et al., NeurIPS 2020)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, require, upcast

SUPCON_TEMPERATURE = 0.1
"""Khosla et al. 2020: τ = 0.1 for their ImageNet results (the code's default is 0.07)."""

MODES = ("joint", "pretrain")


def supervised_contrastive(z: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_out (Khosla et al. eq. 2) for unit embeddings z of shape [B, V, D].

    Every (sample, view) is an anchor; its positives are the other views of the same sample
    and all views of the other samples of its class; it is contrasted with everything but
    itself. The loss is the mean over the anchors that have at least one positive (with one
    view per sample, a class seen once in the batch has none) and 0 when no anchor has one.
    """
    batch, views, _ = z.shape
    z = z.transpose(0, 1).reshape(views * batch, -1)  # view-major rows: row r is sample r % B
    labels = target.repeat(views)
    itself = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & ~itself
    n_positive = positive.sum(dim=1)
    anchors = n_positive > 0
    if not anchors.any():
        return z.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
    sim = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = sim - sim.logsumexp(dim=1, keepdim=True)
    mean_log_prob_pos = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / n_positive[anchors]
    return -mean_log_prob_pos.mean()


@LOSSES.register("supcon")
class SupCon(Loss):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), alone or joint with CE.

    `features`: the embedding to contrast, [B, D] (one view per sample) or [B, V, D]; it is
    L2-normalised here. `mode="pretrain"` is the first stage of the two-stage recipe (SupCon
    only; `logits` may be None); `mode="joint"` adds `ce_weight`·CE on `logits`, which have
    B rows, or B·V rows ordered view-major (torch.cat of the views, the SupCon code's order).
    """

    head = "projection"
    drw_compatible = False  # the contrastive term has no per-class weight
    head_init = "torch"  # SupContrast's classifiers (SupCEResNet.fc, LinearClassifier.fc) are plain nn.Linear

    def __init__(self, class_counts, temperature: float = SUPCON_TEMPERATURE,
                 mode: Literal["joint", "pretrain"] = "joint", ce_weight: float = 1.0):
        super().__init__(class_counts)
        require(temperature > 0, f"supcon temperature must be > 0, got {temperature}")
        require(mode in MODES, f"supcon mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.temperature, self.mode, self.ce_weight = float(temperature), mode, float(ce_weight)

    def forward(self, logits, target, features=None):
        if features is None:
            raise ValueError("supcon needs features: the embedding, shape [B, D] or [B, V, D]")
        views = upcast(features) if features.dim() == 3 else upcast(features)[:, None]
        loss = supervised_contrastive(F.normalize(views, dim=-1), target, self.temperature)
        if self.mode == "pretrain":  # the unused classifier stays in the graph (DDP expects its gradient)
            return loss if logits is None else loss + 0.0 * logits.sum()
        if logits is None:
            raise ValueError("supcon mode 'joint' needs logits for its CE term")
        batch, n_views = views.shape[:2]
        if logits.shape[0] == batch:
            labels = target
        elif logits.shape[0] == batch * n_views:
            labels = target.repeat(n_views)
        else:
            raise ValueError(f"supcon: logits have {logits.shape[0]} rows; expected {batch} "
                             f"or {batch * n_views} (B or B·V)")
        return loss + self.ce_weight * F.cross_entropy(upcast(logits), labels)
