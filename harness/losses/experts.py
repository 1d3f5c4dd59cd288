"""Multi-expert losses: RIDE (Wang et al., ICLR 2021) and SADE (Zhang et al., NeurIPS 2022).

Both train a multi-expert model (`model.name: resnet32_experts`, head `experts`): its logits are
[B, K, C], expert k's cosine logits already multiplied by s = 30 in the model, as in the authors'
code; features are [B, K, D]. The losses reduce the K experts to one scalar; `adjust_logits`
turns [B, K, C] into the ensemble's [B, C] that evaluation predicts with (the trainer also
reports each expert's own top-1).

Sources (the authors' repositories, files named in each docstring):
- RIDE: frank-xwang/RIDE-LongTailRecognition @ ab8be5c.
- SADE: Vanint/SADE-AgnosticLT @ cba11b8.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.data.augment import Batch, SimAugment
from harness.losses.base import LOSSES, Loss, effective_number_weights, require, upcast

# ---------------------------------------------------------------------------------------
# RIDE

RIDE_MAX_M = 0.5
"""RIDE model/loss.py `RIDELoss(max_m=0.5)`: LDAM's largest margin."""
RIDE_S = 30.0
"""RIDE model/loss.py `RIDELoss(s=30)`: the scale the LDAM margin is multiplied by (the model's s)."""
RIDE_DIVERSITY_FACTOR = -0.45
"""RIDE configs/config_imbalance_cifar100_ride.json `additional_diversity_factor: -0.45` (λ; the
class default -0.2 is the ImageNet-LT / iNaturalist value). Negative: the KL to the ensemble is
maximised, which makes the experts diverse."""
RIDE_TEMPERATURE = 1.0
"""RIDE model/loss.py `RIDELoss(base_diversity_temperature=1.0)`."""
RIDE_REWEIGHT_FACTOR = 0.05
"""RIDE model/loss.py `RIDELoss(reweight_factor=0.05)`: how far the per-class diversity
temperature follows the class prior."""
RIDE_BASE_FACTOR = 1.0
"""RIDE model/loss.py `RIDELoss(base_loss_factor=1.0)`: the weight of each expert's LDAM term."""
RIDE_DRW_FRAC = 0.8
"""RIDE CIFAR config `reweight_epoch: 160` of 200 epochs: re-weighting and the per-class
temperature start after epoch 160 (1-based), i.e. at 0-based epoch 160 = 0.8 of the run."""
RIDE_DRW_BETA = 0.9999
"""RIDE model/loss.py: `betas = [0, 0.9999]`, the class-balanced weights of the DRW phase."""


@LOSSES.register("ride")
class RIDE(Loss):
    """RIDE's loss: per expert, LDAM(-DRW) plus a distribution-aware diversity term; summed over experts.

    Follows frank-xwang/RIDE-LongTailRecognition model/loss.py `RIDELoss.forward`, with z_k the
    expert logits (s·cos θ), z̄ = mean_k z_k the ensemble, y the target:

        L = Σ_k  base_loss_factor · CE_w(z_k − s·m_y·1_y, y)
                + λ · T̄² · KL( softmax(z̄ / T) ‖ softmax(z_k / T) )

    - m_c = max_m · n_c^(-1/4) / max_c n_c^(-1/4): LDAM's margins (subtracted after scaling).
    - Before the deferred epoch: w = none and T = base_diversity_temperature (a scalar). From it on
      (`set_epoch`): w = the class-balanced weights (β = 0.9999, sum C) and the per-class
      temperature T_c = base · t_c / max t, t_c = C·π_c·reweight_factor + 1 − reweight_factor
      (a column divisor of the logits); T̄ is its mean.
    - The KL target softmax(z̄ / T) is detached and includes expert k itself; `F.kl_div(...,
      'batchmean')` as in the code. λ < 0 (-0.45 on CIFAR) rewards disagreement with the ensemble.
    - With λ = 0 the code gives each expert's LDAM term the ensemble logits z̄ instead of z_k;
      kept here. With one expert and λ = 0 the loss is LDAM-DRW on s·cos θ.

    The deferred epoch is round(drw_frac · epochs) (0-based), or `drw_epoch` when set; drw_frac 1
    turns the deferred part off (RIDE's `reweight: false`). Evaluation predicts with the mean of
    the expert logits (RIDE's `ResNet_s.forward` output). RIDE's optional second stage, the
    expert-assignment router (model/ldam_drw_resnets/ea_resnet_cifar.py), is not implemented, and
    neither is its distillation variant (`RIDELossWithDistill`).
    """

    head = "experts"
    drw_compatible = False  # the deferred re-weighting is part of the loss

    def __init__(self, class_counts, max_m: float = RIDE_MAX_M, s: float = RIDE_S,
                 additional_diversity_factor: float = RIDE_DIVERSITY_FACTOR,
                 base_diversity_temperature: float = RIDE_TEMPERATURE,
                 reweight_factor: float = RIDE_REWEIGHT_FACTOR, base_loss_factor: float = RIDE_BASE_FACTOR,
                 drw_frac: float = RIDE_DRW_FRAC, drw_epoch: int | None = None, drw_beta: float = RIDE_DRW_BETA):
        super().__init__(class_counts)
        require(max_m >= 0, f"ride max_m must be >= 0, got {max_m}")
        require(s > 0, f"ride s must be > 0, got {s}")
        require(base_diversity_temperature > 0,
                f"ride base_diversity_temperature must be > 0, got {base_diversity_temperature}")
        require(0.0 <= drw_frac <= 1.0, f"drw_frac must be in [0, 1], got {drw_frac}")
        require(drw_epoch is None or (int(drw_epoch) == drw_epoch and drw_epoch >= 0),
                f"drw_epoch must be a non-negative integer, got {drw_epoch}")
        self.s, self.diversity_factor = float(s), float(additional_diversity_factor)
        self.base_temperature, self.base_factor = float(base_diversity_temperature), float(base_loss_factor)
        self.drw_frac, self.drw_epoch = float(drw_frac), None if drw_epoch is None else int(drw_epoch)
        counts = self.class_counts.double()
        margins = counts ** -0.25
        prior = counts / counts.sum()
        temperature = self.num_classes * prior * reweight_factor + 1 - reweight_factor
        require(bool((temperature > 0).all()), f"ride reweight_factor {reweight_factor} is too large: "
                                               f"a class temperature is not positive")
        self.register_buffer("margins", (margins * max_m / margins.max()).float(), persistent=False)
        self.register_buffer("drw_weight", effective_number_weights(self.class_counts, drw_beta), persistent=False)
        temperature = temperature / temperature.max()
        self.register_buffer("temperature", self.base_temperature * temperature.float(), persistent=False)
        self.temperature_mean = self.base_temperature * temperature.mean().item()
        self.active = False  # the deferred phase; set by set_epoch

    def start_epoch(self, epochs: int) -> int:
        """The first deferred epoch (0-based) of a run of `epochs` epochs."""
        return self.drw_epoch if self.drw_epoch is not None else round(self.drw_frac * epochs)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.active = epoch >= self.start_epoch(epochs)

    def forward(self, logits, target, features=None):
        logits = upcast(logits)
        ensemble = logits.mean(dim=1)
        if self.active:
            weight, temperature = self.drw_weight.to(logits), self.temperature.to(logits).view(1, -1)
            temperature_mean = self.temperature_mean
        else:
            weight, temperature, temperature_mean = None, self.base_temperature, self.base_temperature
        margin = self.s * self.margins.to(logits)[target].unsqueeze(1) * F.one_hot(target, self.num_classes)
        target_dist = F.softmax(ensemble.detach() / temperature, dim=1)
        loss = logits.new_zeros(())
        for z in logits.unbind(dim=1):
            base_logits = ensemble if self.diversity_factor == 0 else z
            loss = loss + self.base_factor * F.cross_entropy(base_logits - margin, target, weight=weight)
            expert_dist = F.log_softmax(z / temperature, dim=1)
            loss = loss + self.diversity_factor * temperature_mean ** 2 * F.kl_div(
                expert_dist, target_dist, reduction="batchmean")
        return loss

    def adjust_logits(self, logits):
        return logits.mean(dim=1)


# ---------------------------------------------------------------------------------------
# SADE

SADE_TAU = 2.0
"""SADE configs/config_cifar100_ir100_sade.json `tau: 2`: the backward expert's inverse-prior power."""
SADE_PRIOR_EPS = 1e-9
"""SADE model/loss.py: `torch.log(self.prior + 1e-9)`."""

TTA_EPOCHS = 5
"""SADE configs/test_time_cifar100_ir100_sade.json `epochs: 5`: passes over the test set."""
TTA_BATCH = 128
"""SADE test_training_cifar.py: the test-time loader's batch size (shuffled)."""
TTA_LR, TTA_MOMENTUM, TTA_WEIGHT_DECAY = 0.1, 0.9, 5e-4
"""SADE configs/test_time_cifar100_ir100_sade.json: SGD lr 0.1, momentum 0.9, nesterov, weight decay 5e-4."""
TTA_MIN_WEIGHT = 0.05
"""SADE test_training_cifar.py: stop after a pass when an expert's weight (rounded to 2 decimals) is below 0.05."""
TTA_COS_EPS = 1e-6
"""SADE test_training_cifar.py: `CosineSimilarity(dim=1, eps=1e-6)`."""

SADE_VIEW = SimAugment(pad=4, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.2, sigma=(0.1, 2.0))
"""SADE test_training_cifar.py, `train_trsfm` of the two views (`TwoCropsTransform`):
RandomCrop(32, padding=4), RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
RandomGrayscale(p=0.2), RandomApply([GaussianBlur([.1, 2.])], p=0.2), RandomHorizontalFlip()
(the flip is drawn with the crop: it commutes with the colour operations and the symmetric blur)."""


@LOSSES.register("sade")
class SADE(Loss):
    """SADE's diverse-expert loss (Zhang et al., NeurIPS 2022), with its optional test-time aggregation.

    Training, as Vanint/SADE-AgnosticLT model/loss.py `DiverseExpertLoss.forward`: three experts,
    each a plain cross-entropy (mean over the batch) on adjusted logits, summed:

        expert 1 (forward, long-tailed):  CE(z_1, y)
        expert 2 (uniform):               CE(z_2 + log π, y)                 balanced softmax
        expert 3 (backward, inverse):     CE(z_3 + log π − τ·log π̃, y)       τ = 2

    z_k are the expert logits (s·cos θ, s = 30, from the model), π the training prior (+1e-9 inside
    the logs, as the code), π̃ the inverse prior of `DiverseExpertLoss.inverse_prior`: the class of
    prior rank r (ascending) gets the prior value of rank C−1−r.

    Evaluation predicts with the mean of the three experts' logits (SADE test.py), or, after the
    test-time aggregation, with Σ_k w_k z_k.

    Test-time self-supervised aggregation (`test_time_aggregation: true`; off by default) is
    TRANSDUCTIVE: after training, before the final evaluation, it fits three aggregation weights
    on the unlabeled images of the evaluation (test) set itself, as SADE test_training_cifar.py
    (`test_training`) does: raw weights a = 1/3 each, w = softmax(a); for shuffled batches of 128,
    two augmented views of each image (`sade_view`), p_v = softmax(Σ_k w_k z_k(view v)), loss
    −mean cos(p_1, p_2); SGD (lr 0.1, momentum 0.9, nesterov, weight decay 5e-4) on a only, the
    model in eval mode and unchanged; 5 passes, stopping after a pass when a rounded weight is
    below 0.05. The weights are in this loss's state dict (checkpoints and resume carry them).
    Every rank fits them on the whole test set from the same seed, with no collective; the trainer
    then gives all ranks rank 0's.
    """

    head = "experts"
    drw_compatible = False
    num_experts: ClassVar[int] = 3

    def __init__(self, class_counts, tau: float = SADE_TAU, test_time_aggregation: bool = False):
        super().__init__(class_counts)
        self.tau, self.test_time_aggregation = float(tau), bool(test_time_aggregation)
        prior = self.class_counts / self.class_counts.sum()
        self.register_buffer("log_prior", torch.log(prior + SADE_PRIOR_EPS), persistent=False)
        self.register_buffer("log_inverse_prior", torch.log(inverse_prior(prior) + SADE_PRIOR_EPS),
                             persistent=False)
        self.register_buffer("aggregation", torch.full((self.num_experts,), 1.0 / self.num_experts))
        self.register_buffer("aggregated", torch.tensor(False))

    def forward(self, logits, target, features=None):
        logits = upcast(logits)
        if logits.dim() != 3 or logits.shape[1] != self.num_experts:
            raise ValueError(f"sade needs logits [B, {self.num_experts}, C] from a 3-expert model, "
                             f"got {tuple(logits.shape)}")
        forward, uniform, backward = logits.unbind(dim=1)
        log_prior = self.log_prior.to(logits)
        return (F.cross_entropy(forward, target)
                + F.cross_entropy(uniform + log_prior, target)
                + F.cross_entropy(backward + log_prior - self.tau * self.log_inverse_prior.to(logits), target))

    def weights(self) -> torch.Tensor:
        """The aggregation weights w = softmax(a): 1/3 each until the test-time aggregation ran."""
        return F.softmax(self.aggregation, dim=0)

    def adjust_logits(self, logits):
        if not bool(self.aggregated):
            return logits.mean(dim=1)
        return (self.weights().to(logits).view(1, -1, 1) * logits).sum(dim=1)

    def fit_test_time(self, logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      seed: int) -> str:
        """SADE's test-time aggregation on the unlabeled `images` (see the class docstring); '' when
        it is off or already done (a resumed run), else a line that says what it found."""
        if not self.test_time_aggregation or bool(self.aggregated):
            return ""
        raw = torch.full_like(self.aggregation, 1.0 / self.num_experts).requires_grad_(True)
        optimizer = torch.optim.SGD([raw], lr=TTA_LR, momentum=TTA_MOMENTUM, nesterov=True,
                                    weight_decay=TTA_WEIGHT_DECAY)
        g = torch.Generator(device=images.device).manual_seed(seed)
        passes = 0
        while passes < TTA_EPOCHS:
            order = torch.randperm(len(images), generator=g, device=images.device)
            for start in range(0, len(images), TTA_BATCH):
                x = images[order[start:start + TTA_BATCH]]
                views = [logits_of(sade_view(x, g)).float() for _ in range(2)]
                w = F.softmax(raw, dim=0).view(1, -1, 1)
                p1, p2 = (F.softmax((w * z).sum(dim=1), dim=1) for z in views)
                loss = -F.cosine_similarity(p1, p2, dim=1, eps=TTA_COS_EPS).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            passes += 1
            if (F.softmax(raw.detach(), dim=0) * 100).round().lt(TTA_MIN_WEIGHT * 100).any():
                break
        with torch.no_grad():
            self.aggregation.copy_(raw)
            self.aggregated.fill_(True)
        weights = " ".join(f"{v:.3f}" for v in self.weights().tolist())
        return f"sade test-time aggregation (transductive, on the test images): weights {weights} after {passes} passes"


def inverse_prior(prior: torch.Tensor) -> torch.Tensor:
    """π̃: the prior values in reversed rank order (SADE `DiverseExpertLoss.inverse_prior`): the
    class with the k-th smallest prior gets the k-th largest. Ties are broken by class index."""
    values, order = torch.sort(prior, stable=True)
    rank = torch.argsort(order)
    return values[len(prior) - 1 - rank]


def sade_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view of each uint8 image [B, 3, H, W], as SADE's test-time `train_trsfm`."""
    return SADE_VIEW(Batch(x, None), g).x
