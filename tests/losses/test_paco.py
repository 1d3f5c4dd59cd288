"""GPaCo against an independent, loop-by-loop computation, and its limiting cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.losses import LOSSES
from harness.registry import ConfigError


def gpaco_by_hand(z, logits, target, counts, temperature, alpha, beta, gamma):
    """For every anchor i, written out: log-probabilities over the C centres (logit + log prior)
    and the other samples (z_i·z_j / T, weighted by gamma in the denominator), averaged over the
    positives with weights beta (own centre) and alpha (same-class samples)."""
    n, c = logits.shape
    prior = [math.log(k / sum(counts)) for k in counts]
    total = 0.0
    for i in range(n):
        centres = [float(logits[i, k]) + prior[k] for k in range(c)]
        samples = {j: float(z[i] @ z[j]) / temperature for j in range(n) if j != i}
        denominator = sum(math.exp(s) for s in centres) + gamma * sum(math.exp(s) for s in samples.values())
        log_z = math.log(denominator)
        weighted, weights = beta * (centres[target[i]] - log_z), beta
        for j, s in samples.items():
            if target[j] == target[i]:
                weighted += alpha * (s - log_z)
                weights += alpha
        total += -weighted / weights
    return total / n


def test_gpaco_matches_the_hand_computation():
    torch.manual_seed(0)
    counts = [50, 10, 3]
    z = F.normalize(torch.randn(8, 5, dtype=torch.float64), dim=1)
    logits = torch.randn(8, 3, dtype=torch.float64) * 3
    target = torch.tensor([0, 0, 1, 2, 0, 1, 1, 2])
    for alpha, beta, gamma, t in ((0.01, 1.0, 1.0, 0.05), (0.5, 2.0, 0.3, 0.2)):
        loss = LOSSES.build("gpaco", {"alpha": alpha, "beta": beta, "gamma": gamma, "temperature": t},
                            class_counts=torch.tensor(counts))
        want = gpaco_by_hand(z, logits, target.tolist(), counts, t, alpha, beta, gamma)
        assert float(loss(logits, target, z * 7)) == pytest.approx(want, rel=1e-5)  # z is normalised inside


def test_without_samples_gpaco_is_balanced_softmax():
    """alpha = 0 and gamma = 0 leave only the centres: cross-entropy on logits + log prior. (With
    zero projections: the official code's max-shift includes the sample similarities, and its 1e-12
    in the log then shows when those are large.)"""
    torch.manual_seed(1)
    counts = torch.tensor([100.0, 20.0, 5.0, 1.0])
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    gpaco = LOSSES.build("gpaco", {"alpha": 0.0, "gamma": 0.0}, class_counts=counts)
    balanced = LOSSES.build("balanced_softmax", {}, class_counts=counts)
    assert float(gpaco(logits, target, torch.zeros(16, 8))) == pytest.approx(float(balanced(logits, target)), rel=1e-6)


def test_gpaco_is_finite_for_a_lone_class_and_learns_through_both_parts():
    counts = torch.tensor([10.0, 1.0])
    logits = torch.randn(4, 2, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    loss = LOSSES.build("gpaco", {}, class_counts=counts)(logits, torch.tensor([0, 0, 0, 1]), z)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    assert LOSSES.get("gpaco").head == "projection" and LOSSES.get("gpaco").projection == (2, 32)


@pytest.mark.parametrize("params", [{"temperature": 0}, {"beta": 0}, {"alpha": -1}, {"smooth": 1.0}])
def test_bad_gpaco_values_are_config_errors(params):
    with pytest.raises(ConfigError, match="gpaco"):
        LOSSES.build("gpaco", params, class_counts=torch.tensor([3.0, 2.0]))
