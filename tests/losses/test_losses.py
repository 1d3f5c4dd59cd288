"""The loss zoo against independent computations.

Every reference below is written out from the paper's formula with Python floats and
loops (`math`, no torch functional helpers, nothing from harness.losses), on small
hand-made inputs.
"""
from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from harness.losses import LOSSES, Loss
from harness.registry import ConfigError

COUNTS = [60.0, 20.0, 6.0, 2.0]  # a small long-tailed set: class 0 is the head
C = len(COUNTS)
TARGET = [0, 1, 2, 3, 2, 0]
B = len(TARGET)
# linear logits and cosine logits (cos θ in (-1, 1)), fixed by hand
LOGITS = [[2.0, -1.0, 0.5, 0.0],
          [0.3, 1.2, -0.7, 0.1],
          [-0.5, 0.2, 0.9, 1.4],
          [1.0, 0.0, -1.0, -2.0],
          [0.0, 0.0, 0.0, 0.0],
          [-1.5, 2.5, 0.4, -0.3]]
COS = [[0.8, -0.1, 0.3, 0.0],
       [0.2, 0.6, -0.4, 0.1],
       [-0.3, 0.1, 0.5, 0.7],
       [0.9, 0.2, -0.6, -0.95],
       [0.0, 0.0, 0.0, 0.0],
       [-0.7, 0.9, 0.25, -0.2]]

EXPECTED_NAMES = {
    "ce", "focal", "cb_softmax", "cb_focal", "cb_sigmoid", "ldam", "balanced_softmax",
    "logit_adjust", "logit_adjust_posthoc", "supcon", "sphereface", "arcface", "cosface", "gpaco", "paco", "bcl",
    "ride", "sade",
    "cb_softmax_bce", "ce_drw", "ldam_drw", "focal_drw", "balanced_softmax_drw", "logit_adjust_drw",
    "sphereface_drw", "arcface_drw", "cosface_drw", "sigmoid_focal", "sigmoid_focal_drw",
}
HEADS = {"ce": "linear", "focal": "linear", "sigmoid_focal": "linear", "cb_softmax": "linear",
         "cb_softmax_bce": "linear", "cb_focal": "linear", "cb_sigmoid": "linear", "balanced_softmax": "linear",
         "logit_adjust": "linear", "logit_adjust_posthoc": "linear", "ldam": "cosine", "cosface": "cosine",
         "arcface": "cosine", "sphereface": "cosine", "supcon": "projection",
         "gpaco": "projection", "paco": "projection", "bcl": "projection",  # tests/losses/test_contrastive.py
         "ride": "experts", "sade": "experts"}  # the multi-expert losses: tests/losses/test_experts.py


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def target():
    return torch.tensor(TARGET)


def build(name, counts=COUNTS, **params):
    return LOSSES.build(name, params, class_counts=torch.tensor(counts))


def close(value, expected, tol=1e-6):
    assert float(value) == pytest.approx(float(expected), rel=tol, abs=tol)


# ---------------------------------------------------------------------------------------
# independent references (Python floats)

def ce_ref(row, y):
    """-log softmax(row)[y]."""
    return -(row[y] - math.log(sum(math.exp(v) for v in row)))


def mean(xs):
    return sum(xs) / len(xs)


def cb_weights_ref(counts, beta):
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def sigmoid_focal_ref(row, y, gamma):
    """Σ_i -(1 - p_i^t)^γ log p_i^t with p^t = σ(z) at the label, 1 - σ(z) elsewhere."""
    total = 0.0
    for i, z in enumerate(row):
        p_t = sigmoid(z) if i == y else 1.0 - sigmoid(z)
        total += -((1.0 - p_t) ** gamma) * math.log(p_t)
    return total


def with_target(row, y, value):
    out = list(row)
    out[y] = value
    return out


# ---------------------------------------------------------------------------------------
# registry and interface

def test_every_name_is_registered_with_its_head():
    assert EXPECTED_NAMES <= set(LOSSES.names())
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        assert issubclass(cls, Loss)
        base = name[:-4] if name.endswith("_drw") else name
        assert cls.head == HEADS[base], name
        assert build(name).head == HEADS[base]


def test_drw_variants_exactly_for_per_sample_losses():
    drw = {n[:-4] for n in LOSSES.names() if n.endswith("_drw")}
    assert drw == {"ce", "focal", "sigmoid_focal", "ldam", "balanced_softmax", "logit_adjust", "sphereface",
                   "arcface", "cosface"}


def test_misspelled_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match="gama"):
        LOSSES.build("focal", {"gama": 1}, class_counts=torch.tensor(COUNTS))
    with pytest.raises(ConfigError, match="drw_start"):
        build("focal_drw", drw_start=3)
    loss = build("focal_drw", gamma=1.0, drw_epoch=3, drw_beta=0.99)  # base and DRW keys together
    assert loss.inner.gamma == 1.0 and loss.start_epoch(10) == 3


def test_bad_values_and_counts_are_config_errors():
    for name, params in [("focal", {"gamma": -1}), ("cb_softmax", {"beta": 1.5}),
                         ("supcon", {"mode": "both"}), ("ce_drw", {"drw_frac": 2.0}),
                         ("sphereface", {"m": 2.5}), ("ldam", {"s": 0})]:
        with pytest.raises(ConfigError):
            build(name, **params)
    with pytest.raises(ConfigError, match="no training images"):
        build("ce", counts=[5.0, 0.0, 1.0])


VIEWS = {"paco": 2, "bcl": 2}
"""The losses that tell views apart, with the views they get here (rows 0-2 and 3-5 of the batch)."""


def inputs_for(name):
    head = LOSSES.get(name).head
    if head == "experts":  # three experts' scaled logits [B, 3, C]
        logits = (30 * t(COS)).unsqueeze(1).repeat(1, 3, 1) * t([0.9, 1.0, 1.1]).view(1, 3, 1)
        features = torch.linspace(-1, 1, B * 3 * 2, dtype=torch.float64).reshape(B, 3, 2)
        return logits.detach().requires_grad_(), features.requires_grad_()
    logits = t(COS if head == "cosine" else LOGITS).requires_grad_()
    rows = B + C if LOSSES.get(name).projection.centres else B  # bcl: the class centres after the rows
    features = torch.linspace(-1, 1, rows * 3, dtype=torch.float64).reshape(rows, 3).requires_grad_()
    return logits, features


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_loss_runs_backward_and_pickles(name):
    loss = build(name)
    loss.set_epoch(0, 10)
    loss.views = VIEWS.get(name, 1)
    logits, features = inputs_for(name)
    value = loss(logits, target(), features)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.adjust_logits(logits.detach()).shape == (B, C)
    pickle.loads(pickle.dumps(loss))


def test_half_precision_logits_give_a_float32_loss():
    value = build("ldam")(t(COS, torch.bfloat16), target())
    assert value.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# each loss against its formula

def test_ce():
    expected = mean([ce_ref(r, y) for r, y in zip(LOGITS, TARGET)])
    close(build("ce")(t(LOGITS), target()), expected)


def test_focal_and_its_gamma_zero_limit():
    gamma = 2.0
    per = []
    for r, y in zip(LOGITS, TARGET):
        p = math.exp(-ce_ref(r, y))
        per.append(-((1 - p) ** gamma) * math.log(p))
    close(build("focal")(t(LOGITS), target()), mean(per))
    close(build("focal", gamma=0.0)(t(LOGITS), target()), build("ce")(t(LOGITS), target()))


def test_effective_number_weights():
    from harness.losses import effective_number_weights
    cifar10_if100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    got = effective_number_weights(torch.tensor(cifar10_if100, dtype=torch.float32), 0.9999)
    for g, e in zip(got.tolist(), cb_weights_ref(cifar10_if100, 0.9999)):
        assert g == pytest.approx(e, rel=1e-5)
    assert float(got.sum()) == pytest.approx(10, rel=1e-6)
    inverse = effective_number_weights(torch.tensor([4.0, 1.0]), 1.0)  # β = 1: 1 / n
    assert inverse.tolist() == pytest.approx([0.4, 1.6])


def test_cb_softmax_and_its_beta_zero_limit():
    w = cb_weights_ref(COUNTS, 0.9999)
    expected = mean([w[y] * ce_ref(r, y) for r, y in zip(LOGITS, TARGET)])
    close(build("cb_softmax")(t(LOGITS), target()), expected)
    close(build("cb_softmax", beta=0.0)(t(LOGITS), target()), build("ce")(t(LOGITS), target()))


def test_cb_sigmoid_and_cb_focal():
    beta = 0.999
    w = cb_weights_ref(COUNTS, beta)
    for gamma in (0.0, 0.5, 2.0):
        expected = mean([w[y] * sigmoid_focal_ref(r, y, gamma) for r, y in zip(LOGITS, TARGET)])
        close(build("cb_focal", beta=beta, gamma=gamma)(t(LOGITS), target()), expected)
    expected = mean([w[y] * sigmoid_focal_ref(r, y, 0.0) for r, y in zip(LOGITS, TARGET)])
    close(build("cb_sigmoid", beta=beta)(t(LOGITS), target()), expected)
    unweighted = mean([sigmoid_focal_ref(r, y, 0.0) for r, y in zip(LOGITS, TARGET)])
    close(build("cb_sigmoid", beta=0.0)(t(LOGITS), target()), unweighted)


def test_sigmoid_focal_is_cuis_focal_baseline_and_cb_focal_at_beta_zero():
    for gamma in (0.0, 0.5, 1.0, 2.0):
        expected = mean([sigmoid_focal_ref(r, y, gamma) for r, y in zip(LOGITS, TARGET)])
        close(build("sigmoid_focal", gamma=gamma)(t(LOGITS), target()), expected)
        close(build("cb_focal", beta=0.0, gamma=gamma)(t(LOGITS), target()), expected)
    default = mean([sigmoid_focal_ref(r, y, 1.0) for r, y in zip(LOGITS, TARGET)])  # cifar_im_trainval.sh: γ = 1
    close(build("sigmoid_focal")(t(LOGITS), target()), default)
    close(build("sigmoid_focal", gamma=0.0)(t(LOGITS), target()), build("cb_sigmoid", beta=0.0)(t(LOGITS), target()))
    # a confident right answer costs almost nothing: each class (1 - p^t)·BCE ≈ e^-24
    sure = t([[12.0, -12.0, -12.0, -12.0]])
    assert float(build("sigmoid_focal")(sure, torch.tensor([0]))) < 1e-9
    with pytest.raises(ConfigError, match="sigmoid_focal gamma"):
        build("sigmoid_focal", gamma=-0.5)


def test_only_the_sigmoid_losses_declare_the_sigmoid_prior():
    sigmoid = {n for n in LOSSES.names() if LOSSES.get(n).sigmoid}
    assert sigmoid == {"sigmoid_focal", "sigmoid_focal_drw", "cb_sigmoid", "cb_focal"}


def test_ldam_and_its_zero_margin_limit():
    s, max_m = 30.0, 0.5
    raw = [n ** -0.25 for n in COUNTS]
    margins = [m * max_m / max(raw) for m in raw]
    assert margins[-1] == pytest.approx(0.5)  # the rarest class gets max_m
    per = [ce_ref([s * v for v in with_target(r, y, r[y] - margins[y])], y)
           for r, y in zip(COS, TARGET)]
    close(build("ldam")(t(COS), target()), mean(per))
    plain = mean([ce_ref([s * v for v in r], y) for r, y in zip(COS, TARGET)])
    close(build("ldam", max_m=0.0)(t(COS), target()), plain)
    assert torch.equal(build("ldam").adjust_logits(t(COS)), s * t(COS))


def test_balanced_softmax_and_uniform_prior_limit():
    total = sum(COUNTS)
    per = [ce_ref([v + math.log(COUNTS[j] / total) for j, v in enumerate(r)], y)
           for r, y in zip(LOGITS, TARGET)]
    close(build("balanced_softmax")(t(LOGITS), target()), mean(per))
    uniform = build("balanced_softmax", counts=[7.0] * C)
    close(uniform(t(LOGITS), target()), build("ce")(t(LOGITS), target()))


def test_logit_adjust_loss():
    tau, total = 1.5, sum(COUNTS)
    per = [ce_ref([v + tau * math.log(COUNTS[j] / total) for j, v in enumerate(r)], y)
           for r, y in zip(LOGITS, TARGET)]
    close(build("logit_adjust", tau=tau)(t(LOGITS), target()), mean(per))
    close(build("logit_adjust", tau=0.0)(t(LOGITS), target()), build("ce")(t(LOGITS), target()))
    close(build("logit_adjust")(t(LOGITS), target()),
          build("balanced_softmax")(t(LOGITS), target()))


def test_logit_adjust_posthoc_moves_predictions_to_the_tail():
    loss = build("logit_adjust_posthoc")
    close(loss(t(LOGITS), target()), build("ce")(t(LOGITS), target()))  # training is CE
    total = sum(COUNTS)
    adjusted = loss.adjust_logits(t(LOGITS))
    for r, a in zip(LOGITS, adjusted.tolist()):
        assert a == pytest.approx([v - math.log(COUNTS[j] / total) for j, v in enumerate(r)])
    # head class 0 narrowly ahead of tail class 3: the adjustment flips it
    narrow = t([[1.0, 0.0, 0.0, 0.5], [0.2, 0.1, 0.0, 0.0]])
    assert narrow.argmax(1).tolist() == [0, 0]
    assert loss.adjust_logits(narrow).argmax(1).tolist() == [3, 3]
    rng = torch.Generator().manual_seed(0)
    many = torch.randn(500, C, generator=rng, dtype=torch.float64)
    tail = lambda z: int((z.argmax(1) >= 2).sum())  # noqa: E731 (classes 2, 3 are the tail)
    assert tail(loss.adjust_logits(many)) > tail(many)


def test_cosface_and_its_zero_margin_limit():
    s, m = 30.0, 0.35
    per = [ce_ref([s * v for v in with_target(r, y, r[y] - m)], y) for r, y in zip(COS, TARGET)]
    close(build("cosface")(t(COS), target()), mean(per))
    plain = mean([ce_ref([s * v for v in r], y) for r, y in zip(COS, TARGET)])
    close(build("cosface", m=0.0)(t(COS), target()), plain)


def arcface_ref(cos, y, s, m, easy_margin=False):
    c = cos[y]
    theta = math.acos(c)
    if easy_margin:
        target_value = math.cos(theta + m) if c > 0 else c
    elif theta + m < math.pi:  # cos θ > cos(π - m)
        target_value = math.cos(theta + m)
    else:
        target_value = c - m * math.sin(m)  # sin(π - m) = sin m
    return ce_ref([s * v for v in with_target(cos, y, target_value)], y)


def test_arcface_and_its_zero_margin_limit():
    cos = [list(r) for r in COS]
    cos[3][3] = -0.95  # θ + m > π for target 3 with m = 0.5: exercises the fallback
    for m, easy in ((0.5, False), (0.5, True), (0.3, False)):
        expected = mean([arcface_ref(r, y, 64.0, m, easy) for r, y in zip(cos, TARGET)])
        close(build("arcface", m=m, easy_margin=easy)(t(cos), target()), expected, tol=1e-5)
    plain = mean([ce_ref([64.0 * v for v in r], y) for r, y in zip(COS, TARGET)])
    close(build("arcface", m=0.0)(t(COS), target()), plain, tol=1e-5)


def psi_ref(theta, m):
    for k in range(m):
        if k * math.pi / m <= theta <= (k + 1) * math.pi / m:
            return (-1) ** k * math.cos(m * theta) - 2 * k
    raise AssertionError(theta)


def sphereface_ref(cos, y, norm, lam, m=4):
    theta = math.acos(cos[y])
    target_value = (lam * norm * cos[y] + norm * psi_ref(theta, m)) / (1 + lam)
    return ce_ref(with_target([norm * v for v in cos], y, target_value), y)


def test_sphereface_formula_and_per_iteration_annealing():
    features = t([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.0, 0.0],
                  [2.0, -1.0, 2.0], [0.0, 1.0, 0.0], [-2.0, 0.0, 1.0]])
    norms = [math.sqrt(sum(v * v for v in row)) for row in features.tolist()]

    def expected(lam):
        return mean([sphereface_ref(r, y, n, lam) for r, y, n in zip(COS, TARGET, norms)])

    loss = build("sphereface")
    close(loss(t(COS), target(), features), expected(1000.0))  # iteration 0: λ = base
    for it in range(1, 4):
        close(loss(t(COS), target(), features), expected(1000.0 / (1 + 0.12 * it)))
    with torch.no_grad():  # evaluation does not advance the schedule
        loss(t(COS), target(), features)
    assert int(loss.step) == 4
    restored = build("sphereface")
    restored.load_state_dict(loss.state_dict())  # the iteration survives a checkpoint
    assert int(restored.step) == 4
    restored.step.fill_(10_000)
    close(restored(t(COS), target(), features), expected(5.0))  # λ has reached λ_min
    # ψ is continuous and decreasing over [0, π]
    thetas = torch.linspace(0, math.pi, 721, dtype=torch.float64)
    psi = loss.psi(thetas.cos())
    for th, p in zip(thetas.tolist()[::60], psi.tolist()[::60]):
        assert p == pytest.approx(psi_ref(th, 4), abs=1e-9)
    assert (psi.diff() <= 1e-12).all()


# ---------------------------------------------------------------------------------------
# deferred re-weighting

def test_drw_start_epoch_from_fraction_or_absolute():
    loss = build("ce_drw")
    assert loss.start_epoch(200) == 160 and loss.start_epoch(10) == 8
    assert build("ce_drw", drw_frac=0.5).start_epoch(30) == 15
    assert build("ce_drw", drw_epoch=160, drw_frac=0.1).start_epoch(200) == 160


@pytest.mark.parametrize("name, rows", [("ce", LOGITS), ("ldam", COS), ("focal", LOGITS)])
def test_drw_is_the_base_loss_then_the_weighted_loss(name, rows):
    base, drw = build(name), build(f"{name}_drw")
    for epoch in (0, 100, 159):
        drw.set_epoch(epoch, 200)
        close(drw(t(rows), target()), base(t(rows), target()))
    w = cb_weights_ref(COUNTS, 0.9999)
    per = base.per_sample(t(rows), target()).tolist()
    weighted = sum(w[y] * v for y, v in zip(TARGET, per)) / sum(w[y] for y in TARGET)
    for epoch in (160, 199):
        drw.set_epoch(epoch, 200)
        close(drw(t(rows), target()), weighted)
    if name == "ce":  # the LDAM-DRW code's F.cross_entropy(weight=...)
        close(weighted, F.cross_entropy(t(rows), target(), weight=t(w)))
    drw.set_epoch(0, 200)  # a new run (or a resumed one) before the start is unweighted again
    close(drw(t(rows), target()), base(t(rows), target()))


# ---------------------------------------------------------------------------------------
# gradients

SMOOTH = ["ce", "focal", "sigmoid_focal", "cb_softmax", "cb_focal", "cb_sigmoid", "balanced_softmax",
          "logit_adjust", "ldam", "cosface", "ce_drw"]


@pytest.mark.parametrize("name", SMOOTH)
def test_gradcheck(name):
    loss = build(name)
    loss.set_epoch(9, 10)  # DRW active
    rows = COS if loss.head == "cosine" else LOGITS
    logits = t(rows).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: loss(z, target()), (logits,))
