"""Supervised contrastive learning (Khosla et al., NeurIPS 2020), as HobbitLong/SupContrast runs it.

Followed: HobbitLong/SupContrast losses.py (`SupConLoss`, contrast_mode 'all'), main_supcon.py (two
draws of one augmentation per image, `TwoCropTransform`; the model's normalised MLP projection) and
the README's CIFAR command (`--temp 0.1`; `SupConLoss`'s base_temperature stays at its 0.07, so
the loss is scaled by 0.1 / 0.07). Two recipes:

- two-stage (the paper's): `loss.params: {mode: pretrain}` trains the encoder with SupCon alone,
  then `stage.kind: linear` trains a linear classifier on the frozen features (main_linear.py);
- joint: SupCon plus `ce_weight`·cross-entropy on the linear head in one run. The SupContrast code
  has no joint mode; this is the "SupCon + CE" baseline of the long-tailed papers (e.g. BCL's).

Two views: `aug.name: "simaugment,simaugment"` gives each image two independent draws
(harness.data.augment.Views); the batch holds V·B rows, view-major, and the labels repeated, so
every row is an anchor whose positives include its other view. SimAugment with `blur_p: 0` is
main_supcon.py's augmentation (RandomResizedCrop scale 0.2-1, flip, colour jitter 0.4/0.4/0.4/0.1
with p 0.8, grayscale p 0.2).

Under DDP each rank contrasts its own share of the batch (the SupContrast code's DataParallel
contrasts the whole batch); on one device the two agree.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from harness.losses.base import LOSSES, Loss, require, upcast

SUPCON_TEMPERATURE = 0.1
"""The README's CIFAR pre-training: `python main_supcon.py --batch_size 1024 --learning_rate 0.5
--temp 0.1 --cosine` (main_supcon.py's default is 0.07); the paper's τ = 0.1 too."""
SUPCON_BASE_TEMPERATURE = 0.07
"""losses.py `SupConLoss(base_temperature=0.07)`: the loss is multiplied by temperature / base_temperature."""

MODES = ("joint", "pretrain")


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float,
                           base_temperature: float) -> torch.Tensor:
    """`SupConLoss.forward` for unit embeddings z [N, D] (all views, view-major) and their labels [N].

    Every row is an anchor; its positives are the other rows of its class (its other views
    included); it is contrasted with every row but itself. An anchor without a positive (with one
    view, a class seen once in the batch) adds 0 and still counts in the mean over the N anchors,
    as in the code's edge-case handling. The mean is scaled by temperature / base_temperature.
    """
    itself = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & ~itself
    sim = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = (sim - sim.logsumexp(dim=1, keepdim=True)).masked_fill(~positive, 0.0)
    mean_log_prob_pos = log_prob.sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def view_rows(features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [N, D], labels [N]) from features [N, D] with labels [N] (the views already view-major
    rows, as the trainer gives them), or from [B, V, D] with labels [B] (SupConLoss's layout)."""
    if features.dim() == 3:
        return features.transpose(0, 1).reshape(-1, features.shape[-1]), target.repeat(features.shape[1])
    return features, target


@LOSSES.register("supcon")
class SupCon(Loss):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), alone or joint with CE.

    `features`: the embedding to contrast, [N, D] (rows matching `target`) or [B, V, D]; it is
    L2-normalised here (the SupContrast model normalises its projection). `mode="pretrain"` is the
    first stage of the two-stage recipe (SupCon only; `logits` may be None); `mode="joint"` adds
    `ce_weight`·CE on `logits`, one row per row of the embedding.
    """

    head = "projection"
    drw_compatible = False  # the contrastive term has no per-class weight
    head_init = "torch"  # SupContrast's classifiers (SupCEResNet.fc, LinearClassifier.fc) are plain nn.Linear

    def __init__(self, class_counts, temperature: float = SUPCON_TEMPERATURE,
                 base_temperature: float = SUPCON_BASE_TEMPERATURE,
                 mode: Literal["joint", "pretrain"] = "joint", ce_weight: float = 1.0):
        super().__init__(class_counts)
        require(temperature > 0 and base_temperature > 0,
                f"supcon temperature and base_temperature must be > 0, got {temperature}, {base_temperature}")
        require(mode in MODES, f"supcon mode must be one of {', '.join(MODES)}, got {mode!r}")
        require(ce_weight >= 0, f"supcon ce_weight must be >= 0, got {ce_weight}")
        self.temperature, self.base_temperature = float(temperature), float(base_temperature)
        self.mode, self.ce_weight = mode, float(ce_weight)

    def forward(self, logits, target, features=None):
        if features is None:
            raise ValueError("supcon needs features: the embedding, shape [N, D] or [B, V, D]")
        z, labels = view_rows(upcast(features), target)
        loss = supervised_contrastive(F.normalize(z, dim=1), labels, self.temperature, self.base_temperature)
        if self.mode == "pretrain":  # the unused classifier stays in the graph (DDP expects its gradient)
            return loss if logits is None else loss + 0.0 * logits.sum()
        if logits is None:
            raise ValueError("supcon mode 'joint' needs logits for its CE term")
        if logits.shape[0] != len(labels):
            raise ValueError(f"supcon: logits have {logits.shape[0]} rows, the embedding {len(labels)}")
        return loss + self.ce_weight * F.cross_entropy(upcast(logits), labels)
