"""PaCo and GPaCo against an independent, loop-by-loop computation written from the official
PaCoLoss (dvlab-research/Parametric-Contrastive-Learning PaCo/LT/losses.py, GPaCo/LT/losses.py),
their limiting cases and gradcheck in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.losses import LOSSES
from harness.models import Projection
from harness.registry import ConfigError


def gpaco_by_hand(z, logits, target, counts, temperature, alpha, beta, gamma, anchors=None):
    """For every anchor i (the first `anchors` rows, all by default), written out: log-probabilities
    over the C centres (logit + log prior) and the other samples (z_i·z_j / T, weighted by gamma in
    the denominator), averaged over the positives with weights beta (own centre) and alpha
    (same-class samples)."""
    n, c = len(z), logits.shape[1]
    prior = [math.log(k / sum(counts)) for k in counts]
    total = 0.0
    for i in range(anchors or n):
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
    return total / (anchors or n)


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
    gpaco = LOSSES.get("gpaco")
    assert gpaco.head == "projection" and gpaco.projection == Projection(hidden=2, out=32)


@pytest.mark.parametrize("name, params", [("gpaco", {"temperature": 0}), ("gpaco", {"beta": 0}),
                                          ("gpaco", {"alpha": -1}), ("gpaco", {"smooth": 1.0}),
                                          ("paco", {"gamma": -1}), ("paco", {"temperature": -0.1})])
def test_bad_values_are_config_errors(name, params):
    with pytest.raises(ConfigError, match=name):
        LOSSES.build(name, params, class_counts=torch.tensor([3.0, 2.0]))


# ---------------------------------------------------------------------------------------
# PaCo: the query view is the anchor, the key view a candidate without gradient

def paco_inputs():
    """B = 4 images, two views (rows 0-3 the query view, 4-7 the key view), 3 classes."""
    torch.manual_seed(2)
    z = torch.randn(8, 5, dtype=torch.float64)
    logits = torch.randn(8, 3, dtype=torch.float64) * 2
    return z, logits, torch.tensor([0, 2, 0, 1] * 2)


def test_paco_matches_the_hand_computation_on_the_query_view():
    counts = [30, 8, 2]
    z, logits, target = paco_inputs()
    unit = F.normalize(z, dim=1)
    for alpha, beta, gamma, temp in ((0.01, 1.0, 1.0, 0.05), (0.3, 2.0, 0.5, 0.2)):
        loss = LOSSES.build("paco", {"alpha": alpha, "beta": beta, "gamma": gamma, "temperature": temp},
                            class_counts=torch.tensor(counts))
        loss.views = 2
        want = gpaco_by_hand(unit, logits[:4], target.tolist(), counts, temp, alpha, beta, gamma, anchors=4)
        assert float(loss(logits, target, z)) == pytest.approx(want, rel=1e-7)  # the prior is float32


def test_paco_keys_get_no_gradient_and_the_key_logits_none():
    z, logits, target = paco_inputs()
    z.requires_grad_(), logits.requires_grad_()
    loss = LOSSES.build("paco", {}, class_counts=torch.tensor([30.0, 8.0, 2.0]))
    loss.views = 2
    loss(logits, target, z).backward()
    assert z.grad[:4].abs().sum() > 0 and z.grad[4:].abs().sum() == 0
    assert logits.grad[:4].abs().sum() > 0 and logits.grad[4:].abs().sum() == 0
    loss.views = 1
    with pytest.raises(ValueError, match="key view"):
        loss(logits, target, z)


def test_without_samples_paco_is_balanced_softmax_on_the_query_view():
    counts = torch.tensor([30.0, 8.0, 2.0])
    z, logits, target = paco_inputs()
    paco = LOSSES.build("paco", {"alpha": 0.0, "gamma": 0.0}, class_counts=counts)
    paco.views = 2
    balanced = LOSSES.build("balanced_softmax", {}, class_counts=counts)
    assert float(paco(logits, target, torch.zeros(8, 5))) == pytest.approx(float(balanced(logits[:4], target[:4])),
                                                                           rel=1e-9)


def test_paco_and_gpaco_differ_as_the_official_code_does():
    """GPaCo: every view an anchor; PaCo: the query view; PaCo's projection has batch norm."""
    z, logits, target = paco_inputs()
    counts = torch.tensor([30.0, 8.0, 2.0])
    paco, gpaco = (LOSSES.build(name, {}, class_counts=counts) for name in ("paco", "gpaco"))
    paco.views = gpaco.views = 2
    unit = F.normalize(z, dim=1)
    want = gpaco_by_hand(unit, logits, target.tolist(), counts.tolist(), 0.05, 0.01, 1.0, 1.0)
    assert float(gpaco(logits, target, z)) == pytest.approx(want, rel=1e-7)
    assert float(paco(logits, target, z)) != pytest.approx(want, rel=1e-3)
    assert LOSSES.get("paco").projection == Projection(hidden=1, out=32, batch_norm=True)


@pytest.mark.parametrize("name", ["paco", "gpaco"])
def test_gradcheck(name):
    """With respect to the logits and the projections (PaCo: of the query view; its keys are constants)."""
    z, logits, target = paco_inputs()
    loss = LOSSES.build(name, {"temperature": 0.5}, class_counts=torch.tensor([30.0, 8.0, 2.0]))
    loss.views = 2
    rows = 4 if name == "paco" else 8
    query, keys = z[:rows].clone().requires_grad_(), z[rows:]
    assert torch.autograd.gradcheck(lambda c, q: loss(c, target, torch.cat([q, keys])),
                                    (logits.requires_grad_(), query))
