"""The multi-expert losses (RIDE, SADE) and SADE's test-time aggregation against independent
computations.

The references are written out from the authors' code (frank-xwang/RIDE-LongTailRecognition
model/loss.py `RIDELoss`; Vanint/SADE-AgnosticLT model/loss.py `DiverseExpertLoss`,
test_training_cifar.py) with numpy and explicit loops, nothing from harness.losses, on small
hand-made inputs: logits [B, K, C] that already carry the scale s = 30, as the models give them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.augment import gaussian_blur, op_hue
from harness.losses import LOSSES
from harness.losses.experts import SADE, inverse_prior, sade_view

COUNTS = [60.0, 20.0, 6.0, 2.0, 11.0]  # long-tailed, distinct counts, not sorted
C = len(COUNTS)
TARGET = [0, 1, 2, 3, 4, 2]
B = len(TARGET)
S = 30.0


def expert_logits(k: int = 3, seed: int = 0) -> torch.Tensor:
    """s·cos θ for k experts: [B, k, C] in float64, cos θ in (-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    return S * (2 * torch.rand(B, k, C, generator=g, dtype=torch.float64) - 1)


def build(name, counts=COUNTS, **params):
    return LOSSES.build(name, params, class_counts=torch.tensor(counts))


def target():
    return torch.tensor(TARGET)


def log_softmax(row: np.ndarray) -> np.ndarray:
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


# ---------------------------------------------------------------------------------------
# RIDE

def ride_reference(z: np.ndarray, y: list, n: list, deferred: bool, lam=-0.45, s=30.0, max_m=0.5,
                   base_t=1.0, rf=0.05, beta=0.9999) -> float:
    """RIDELoss.forward, one sample and one expert at a time."""
    n = np.asarray(n, dtype=np.float64)
    batch, k, c = z.shape
    margin = n ** -0.25
    margin = margin * max_m / margin.max()
    weight = (1 - beta) / (1 - beta ** n)
    weight = weight / weight.sum() * c
    prior = n / n.sum()
    temp = c * prior * rf + 1 - rf
    temp = base_t * temp / temp.max() if deferred else np.full(c, base_t)
    ensemble = z.mean(axis=1)
    total = 0.0
    for e in range(k):
        num = den = 0.0
        for i in range(batch):
            row = (ensemble[i] if lam == 0 else z[i, e]).copy()
            row[y[i]] -= s * margin[y[i]]
            w = weight[y[i]] if deferred else 1.0
            num += w * -log_softmax(row)[y[i]]
            den += w
        total += num / den
        kl = 0.0
        for i in range(batch):
            q = np.exp(log_softmax(ensemble[i] / temp))
            kl += (q * (np.log(q) - log_softmax(z[i, e] / temp))).sum()
        total += lam * temp.mean() ** 2 * kl / batch
    return total


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("params", [{}, {"additional_diversity_factor": -0.2, "reweight_factor": 0.02},
                                    {"base_diversity_temperature": 1.5, "max_m": 0.3},
                                    {"additional_diversity_factor": 0.0}])
def test_ride_matches_the_reference(deferred, params):
    loss = build("ride", **params)
    loss.set_epoch(8 if deferred else 7, 10)  # the deferred phase from round(0.8 · 10) = 8
    z = expert_logits()
    expected = ride_reference(z.numpy(), TARGET, COUNTS, deferred,
                              lam=params.get("additional_diversity_factor", -0.45),
                              rf=params.get("reweight_factor", 0.05), max_m=params.get("max_m", 0.5),
                              base_t=params.get("base_diversity_temperature", 1.0))
    assert loss(z, target()).item() == pytest.approx(expected, rel=1e-5)


def test_ride_with_one_expert_and_no_diversity_is_ldam_drw():
    ride, ldam_drw = build("ride", additional_diversity_factor=0.0), build("ldam_drw")
    z = expert_logits(k=1)
    for epoch in (0, 7, 8, 9):  # before and in the deferred phase (8 of 10 for both)
        ride.set_epoch(epoch, 10)
        ldam_drw.set_epoch(epoch, 10)
        assert ride.active == ldam_drw.active == (epoch >= 8)
        assert ride(z, target()).item() == pytest.approx(ldam_drw(z[:, 0] / S, target()).item(), rel=1e-6)


def test_ride_sums_over_experts_and_identical_experts_have_no_diversity_term():
    ldam = build("ldam")
    one = expert_logits(k=1)
    same = one.expand(B, 3, C)
    ride = build("ride")
    assert ride(same, target()).item() == pytest.approx(3 * ldam(one[:, 0] / S, target()).item(), rel=1e-6)


def test_ride_diversity_term_rewards_disagreement_and_treats_the_ensemble_as_a_constant():
    """Without the LDAM terms the loss is λ·Σ_k KL(q ‖ p_k), q = softmax(z̄) detached (T = 1 before
    the deferred phase): its gradient for expert k is λ·(p_k − q) / B, and it is below zero (λ < 0)."""
    z = expert_logits().requires_grad_(True)
    loss = build("ride", base_loss_factor=0.0)(z, target())
    assert loss.item() < 0
    loss.backward()
    zn = z.detach().numpy()
    q = np.stack([np.exp(log_softmax(zn[i].mean(axis=0))) for i in range(B)])
    for k in range(3):
        p = np.stack([np.exp(log_softmax(zn[i, k])) for i in range(B)])
        np.testing.assert_allclose(z.grad[:, k].numpy(), -0.45 * (p - q) / B, rtol=1e-6, atol=1e-12)


def test_ride_deferred_phase_starts_at_the_configured_epoch():
    ride = build("ride")
    assert ride.start_epoch(200) == 160  # RIDE's CIFAR config: reweight_epoch 160 of 200
    assert build("ride", drw_epoch=3).start_epoch(200) == 3
    never = build("ride", drw_frac=1.0)
    never.set_epoch(199, 200)
    assert not never.active


def test_ride_predicts_with_the_mean_of_the_experts():
    z = expert_logits()
    torch.testing.assert_close(build("ride").adjust_logits(z), z.mean(dim=1))


# ---------------------------------------------------------------------------------------
# SADE

def inverse_prior_reference(prior: np.ndarray) -> np.ndarray:
    """The class with the r-th smallest prior gets the r-th largest prior value."""
    order = np.argsort(prior, kind="stable")
    out = np.empty_like(prior)
    out[order] = prior[order[::-1]]
    return out


def sade_reference(z: np.ndarray, y: list, n: list, tau=2.0) -> float:
    """DiverseExpertLoss.forward: CE(z1), CE(z2 + log π), CE(z3 + log π − τ log π̃), each a batch mean, summed."""
    n = np.asarray(n, dtype=np.float64)
    prior = n / n.sum()
    log_prior = np.log(prior + 1e-9)
    shifts = [np.zeros(len(n)), log_prior, log_prior - tau * np.log(inverse_prior_reference(prior) + 1e-9)]
    total = 0.0
    for e, shift in enumerate(shifts):
        total += np.mean([-log_softmax(z[i, e] + shift)[y[i]] for i in range(len(y))])
    return total


def test_inverse_prior_reverses_the_ranks():
    prior = torch.tensor(COUNTS) / sum(COUNTS)
    inverse = inverse_prior(prior)
    np.testing.assert_allclose(inverse.numpy(), inverse_prior_reference(prior.numpy()))
    assert inverse[0] == prior.min() and inverse[3] == prior.max()  # head <-> tail
    torch.testing.assert_close(inverse_prior(inverse), prior)


@pytest.mark.parametrize("tau", [2.0, 1.0])
def test_sade_matches_the_reference(tau):
    z = expert_logits()
    expected = sade_reference(z.numpy(), TARGET, COUNTS, tau)
    assert build("sade", tau=tau)(z, target()).item() == pytest.approx(expected, rel=1e-6)


def test_sade_expert_2_is_balanced_softmax_and_balanced_data_gives_three_cross_entropies():
    z = expert_logits().requires_grad_(True)
    build("sade")(z, target()).backward()
    z2 = z.detach()[:, 1].clone().requires_grad_(True)
    build("balanced_softmax")(z2, target()).backward()
    torch.testing.assert_close(z.grad[:, 1], z2.grad, rtol=1e-6, atol=1e-9)
    ce = build("ce", counts=[5.0] * C)
    balanced = build("sade", counts=[5.0] * C)  # π = π̃ uniform: every adjustment is a constant
    assert balanced(z.detach(), target()).item() == pytest.approx(
        sum(ce(z.detach()[:, k], target()).item() for k in range(3)), rel=1e-6)


def test_sade_needs_three_experts():
    with pytest.raises(ValueError, match="3-expert"):
        build("sade")(expert_logits(k=2), target())


def test_sade_predicts_with_the_mean_then_with_the_aggregation_weights():
    sade, z = build("sade"), expert_logits()
    torch.testing.assert_close(sade.adjust_logits(z), z.mean(dim=1))
    sade.aggregation.copy_(torch.tensor([0.0, 1.0, 2.0]))
    sade.aggregated.fill_(True)
    w = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    expected = sum(w[k] * z[:, k].numpy() for k in range(3))
    np.testing.assert_allclose(sade.adjust_logits(z).numpy(), expected, rtol=1e-6, atol=1e-5)  # float32 weights


# ---------------------------------------------------------------------------------------
# SADE's test-time aggregation

def images(n=40, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def stable_first_expert(seed=0):
    """Fake expert logits: expert 1 gives the same confident answer for every view of an image
    (one class per place in the batch, which both views share), experts 2 and 3 give noise."""
    g = torch.Generator().manual_seed(seed)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        stable = torch.zeros(len(x), C, dtype=torch.float32)
        stable[torch.arange(len(x)), torch.arange(len(x)) % C] = 20.0
        noise = 20 * torch.randn(len(x), 2, C, generator=g)
        return torch.cat([stable.unsqueeze(1), noise], dim=1)
    return logits_of


def test_aggregation_is_off_unless_asked_for():
    sade = build("sade")
    assert sade.fit_test_time(stable_first_expert(), images(), seed=0) == ""
    assert not bool(sade.aggregated)
    torch.testing.assert_close(sade.weights(), torch.full((3,), 1 / 3))


def test_aggregation_learns_normalised_weights_that_favour_the_stable_expert_and_are_saved():
    sade = build("sade", test_time_aggregation=True)
    note = sade.fit_test_time(stable_first_expert(), images(), seed=0)
    assert "transductive" in note and bool(sade.aggregated)
    w = sade.weights()
    assert w.sum().item() == pytest.approx(1.0) and (w > 0).all()
    assert w[0] > 1 / 3 + 0.05 and w[0] > w[1] and w[0] > w[2]  # prediction stability favours expert 1
    again = build("sade", test_time_aggregation=True)  # a resumed run: the state dict carries the weights
    again.load_state_dict(sade.state_dict())
    assert bool(again.aggregated) and torch.equal(again.weights(), w)
    assert again.fit_test_time(stable_first_expert(), images(), seed=0) == ""  # done once
    assert torch.equal(again.weights(), w)


def test_aggregation_is_reproducible_from_its_seed():
    runs = []
    for _ in range(2):
        sade = build("sade", test_time_aggregation=True)
        sade.fit_test_time(stable_first_expert(seed=1), images(), seed=3)
        runs.append(sade.aggregation.clone())
    assert torch.equal(*runs)


def test_the_views_are_random_uint8_images_of_the_same_size():
    x = images(8)
    a, b = (sade_view(x, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert not torch.equal(a, x) and not torch.equal(a, b)
    assert torch.equal(a, sade_view(x, torch.Generator().manual_seed(0)))


def test_hue_rotation_and_blur():
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 200
    green = op_hue(red, torch.tensor([1 / 3]))
    assert green[0, :, 0, 0].tolist() == [0, 200, 0]
    x = images(4)
    assert (op_hue(x, torch.zeros(4)).int() - x.int()).abs().max() <= 1
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)
    assert torch.equal(gaussian_blur(x, torch.full((4,), 0.1)), x)  # σ = 0.1: the kernel is a delta
    assert (gaussian_blur(x, torch.full((4,), 2.0)).float().std() < x.float().std())


def test_sade_registered_with_the_experts_head_and_three_experts():
    assert LOSSES.get("sade") is SADE and SADE.head == "experts" and SADE.num_experts == 3
    assert LOSSES.get("ride").head == "experts" and "ride_drw" not in LOSSES and "sade_drw" not in LOSSES
