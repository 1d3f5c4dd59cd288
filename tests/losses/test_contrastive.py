"""SupCon and BCL against loop-by-loop computations written from the authors' code
(HobbitLong/SupContrast losses.py `SupConLoss`; FlamieZhu/Balanced-Contrastive-Learning
loss/contrastive.py `BalSCL` and loss/logitadjust.py), their limiting cases, gradcheck in
float64, and the model BCL trains (cosine classifier, class centres). PaCo/GPaCo: test_paco.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.losses import LOSSES
from harness.models import build_model, check_head, resolve_head
from harness.registry import ConfigError

COUNTS = [40.0, 12.0, 5.0, 2.0]


def build(name, **params):
    return LOSSES.build(name, params, class_counts=torch.tensor(COUNTS))


def unit(rows):
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def supcon_code(rows, labels, temperature, base_temperature):
    """SupConLoss.forward (contrast_mode 'all') written out for unit rows (every view, view-major):
    each row against every other row; an anchor without positive adds 0 (the code sets its
    positive count to 1) and the mean runs over every anchor; times temperature / base_temperature."""
    total = 0.0
    for i, zi in enumerate(rows):
        others = [j for j in range(len(rows)) if j != i]
        log_denominator = math.log(sum(math.exp(dot(zi, rows[j]) / temperature) for j in others))
        positives = [j for j in others if labels[j] == labels[i]]
        mean_pos = sum(dot(zi, rows[p]) / temperature - log_denominator for p in positives) / max(len(positives), 1)
        total += -(temperature / base_temperature) * mean_pos
    return total / len(rows)


def la_ce(row, y, counts):
    """LogitAdjust (tau 1): cross-entropy of row + log(n_c / N)."""
    adjusted = [v + math.log(n / sum(counts)) for v, n in zip(row, counts)]
    return -(adjusted[y] - math.log(sum(math.exp(v) for v in adjusted)))


def balscl_code(rows, labels, centres, temperature, averaging=True, complement=True):
    """BalSCL.forward written out: anchors are the contrastive rows; candidates the rows and (with
    the complement) the C centres, labelled 0..C-1; the denominator averages each class's
    candidates (|B_c|, less one for the anchor's own class; without averaging: sums them)."""
    cands = [(r, y) for r, y in zip(rows, labels)] + ([(c, k) for k, c in enumerate(centres)] if complement else [])
    size = {k: sum(1 for _, y in cands if y == k) for k in range(len(centres))}
    total = 0.0
    for i, (zi, yi) in enumerate(zip(rows, labels)):
        others = [j for j in range(len(cands)) if j != i]
        denominator = 0.0
        for j in others:
            zj, yj = cands[j]
            weight = 1.0 / (size[yj] - (1 if yj == yi else 0)) if averaging else 1.0
            denominator += weight * math.exp(dot(zi, zj) / temperature)
        positives = [j for j in others if cands[j][1] == yi]
        mean_pos = sum(dot(zi, cands[p][0]) / temperature - math.log(denominator) for p in positives)
        total += -mean_pos / max(len(positives), 1)
    return total / len(rows)


RAW = [[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0], [0.5, 0.5, 0.5], [0.9, -0.2, 0.1], [-0.3, 0.8, 0.2]]
LABELS = [0, 1, 2, 3, 2, 0]  # one view: classes 1 and 3 are alone, their anchors have no positive
LOGITS = [[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 0.1], [-0.5, 0.2, 0.9, 1.4],
          [1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0], [-1.5, 2.5, 0.4, -0.3]]


# ---------------------------------------------------------------------------------------
# SupCon

def test_supcon_is_the_codes_loss_with_its_base_temperature_and_lone_anchors():
    """Two fixes against the code: the factor temperature / base_temperature (0.1 / 0.07 by
    default) and the mean over every anchor, those without a positive adding 0."""
    loss = build("supcon", mode="pretrain")
    assert (loss.temperature, loss.base_temperature) == (0.1, 0.07)
    want = supcon_code(unit(RAW), LABELS, 0.1, 0.07)
    assert float(loss(None, torch.tensor(LABELS), t(RAW))) == pytest.approx(want, rel=1e-9)
    # before the fixes: no factor, and the mean over the four anchors that have a positive
    before = supcon_code(unit(RAW), LABELS, 0.1, 0.1) * 6 / 4
    assert abs(float(loss(None, torch.tensor(LABELS), t(RAW))) - before) > 0.1


def test_supcon_with_two_views_in_either_layout_and_joint_with_ce():
    views = [[[1.0, 0.2], [0.8, 0.5]], [[0.1, 1.0], [-0.2, 0.9]], [[0.7, 0.7], [1.0, -0.1]]]
    labels = [0, 1, 0]
    rows = unit([v[0] for v in views] + [v[1] for v in views])  # view-major, as the trainer's batch
    want = supcon_code(rows, labels * 2, 0.2, 0.07)
    loss = build("supcon", mode="pretrain", temperature=0.2)
    assert float(loss(None, torch.tensor(labels), t(views))) == pytest.approx(want, rel=1e-9)  # [B, V, D]
    flat = t([v[0] for v in views] + [v[1] for v in views])
    assert float(loss(None, torch.tensor(labels * 2), flat)) == pytest.approx(want, rel=1e-9)  # [V·B, D]
    logits = t(LOGITS)
    ce = sum(-(r[y] - math.log(sum(math.exp(v) for v in r))) for r, y in zip(LOGITS, labels * 2)) / 6
    joint = build("supcon", temperature=0.2, ce_weight=0.5)
    assert float(joint(logits, torch.tensor(labels * 2), flat)) == pytest.approx(want + 0.5 * ce, rel=1e-9)
    with pytest.raises(ValueError, match="rows"):
        joint(logits[:3], torch.tensor(labels * 2), flat)


def test_supcon_limiting_cases():
    labels = torch.tensor([0, 1, 2, 3])
    lone = build("supcon", mode="pretrain")(None, labels, t(RAW[:4]).requires_grad_())
    assert lone.item() == 0.0 and lone.requires_grad  # no anchor has a positive: 0, still in the graph
    same = t([[1.0, 2.0, 3.0]] * 6)  # identical embeddings: every candidate equally likely
    value = build("supcon", mode="pretrain", temperature=0.5, base_temperature=0.5)(None, torch.zeros(6).long(), same)
    assert float(value) == pytest.approx(math.log(5), rel=1e-12)
    scaled = build("supcon", mode="pretrain", temperature=0.5)(None, torch.zeros(6).long(), same)
    assert float(scaled) == pytest.approx(0.5 / 0.07 * math.log(5), rel=1e-12)


@pytest.mark.parametrize("mode", ["pretrain", "joint"])
def test_gradcheck_supcon(mode):
    loss = build("supcon", mode=mode)
    features = (torch.linspace(-1, 1, 36, dtype=torch.float64) + 0.1 * torch.arange(36.0).sin()).reshape(6, 2, 3)
    logits = t(LOGITS + LOGITS).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, f: loss(z, torch.tensor(LABELS), f),
                                    (logits, features.requires_grad_()))


@pytest.mark.parametrize("params", [{"temperature": 0}, {"base_temperature": -1}, {"mode": "both"},
                                    {"ce_weight": -1}])
def test_bad_supcon_values_are_config_errors(params):
    with pytest.raises(ConfigError, match="supcon"):
        build("supcon", **params)


# ---------------------------------------------------------------------------------------
# BCL

CENTRES = [[0.3, -1.0, 0.2], [1.0, 1.0, -0.5], [-0.7, 0.1, 0.9], [0.2, 0.2, -1.0]]


def bcl_inputs(views=3):
    """B = 3 images, `views` views: the rows view-major, then the C = 4 centres."""
    torch.manual_seed(0)
    b = 3
    features = torch.randn(views * b + 4, 3, dtype=torch.float64)
    features[-4:] = t(CENTRES)
    cos = torch.rand(views * b, 4, dtype=torch.float64) * 2 - 1
    return cos, torch.tensor([0, 3, 0] * views), features


@pytest.mark.parametrize("averaging, complement", [(True, True), (False, True), (True, False), (False, False)])
def test_bcl_is_the_codes_logit_adjusted_ce_and_balscl(averaging, complement):
    cos, labels, features = bcl_inputs()
    loss = build("bcl", class_averaging=averaging, class_complement=complement)
    loss.views = 3
    z = unit(features.tolist())
    ce = sum(la_ce([30 * v for v in row], y, COUNTS) for row, y in zip(cos[:3].tolist(), labels[:3].tolist())) / 3
    scl = balscl_code(z[3:9], labels[3:].tolist(), z[9:], 0.1, averaging, complement)
    assert float(loss(cos, labels, features)) == pytest.approx(2.0 * ce + 0.6 * scl, rel=1e-9)


def test_bcl_without_averaging_and_complement_is_supcon_plus_logit_adjusted_ce():
    cos, labels, features = bcl_inputs()
    bcl = build("bcl", alpha=1.0, beta=1.0, class_averaging=False, class_complement=False)
    bcl.views = 3
    supcon = build("supcon", mode="pretrain", temperature=0.1, base_temperature=0.1)
    logit_adjust = build("logit_adjust")
    want = logit_adjust(30 * cos[:3], labels[:3]) + supcon(None, labels[3:], features[3:9])
    assert float(bcl(cos, labels, features)) == pytest.approx(float(want), rel=1e-9)


def test_bcl_class_averaging_weighs_every_class_as_one():
    """Two class-0 rows and k copies of one class-1 row, no centres: averaged, the k copies weigh as
    one in every denominator, so each anchor's loss does not depend on k and the mean is
    (2·L0 + k·L1) / (k + 2) with L0, L1 fixed; summed (SupCon), the class-0 anchors' loss grows with k."""
    from harness.losses.bcl import balanced_contrastive

    def value(k, averaging):
        rows = F.normalize(t([[1.0, 0.0], [0.6, 0.8]] + [[0.0, 1.0]] * k), dim=1)
        labels = torch.tensor([0, 0] + [1] * k)
        return float(balanced_contrastive(rows, labels, t([[1.0, 0.0], [0.0, 1.0]]), 0.5, averaging, False))

    def predicted_at_6(averaging):
        mix = t([[2 / 4, 2 / 4], [2 / 5, 3 / 5]])  # the shares of class-0 and class-1 anchors at k = 2, 3
        l0, l1 = torch.linalg.solve(mix, t([value(2, averaging), value(3, averaging)])).tolist()
        return (2 * l0 + 6 * l1) / 8
    assert value(6, True) == pytest.approx(predicted_at_6(True), rel=1e-9)
    assert value(6, False) != pytest.approx(predicted_at_6(False), rel=1e-3)


def test_gradcheck_bcl():
    cos, labels, features = bcl_inputs(views=2)
    loss = build("bcl")
    loss.views = 2
    assert torch.autograd.gradcheck(lambda c, f: loss(c, labels, f),
                                    (cos.requires_grad_(), features.requires_grad_()))


def test_bcl_needs_a_contrastive_view_and_its_features():
    cos, labels, features = bcl_inputs(views=2)
    loss = build("bcl")
    with pytest.raises(ValueError, match="view"):
        loss(cos, labels, features)  # views = 1
    loss.views = 2
    with pytest.raises(ValueError, match="centres"):
        loss(cos, labels, features[:-4])


@pytest.mark.parametrize("params", [{"temperature": 0}, {"alpha": -1}, {"scale": 0}])
def test_bad_bcl_values_are_config_errors(params):
    with pytest.raises(ConfigError, match="bcl"):
        build("bcl", **params)


def test_the_bcl_model_has_a_cosine_classifier_and_returns_the_class_centres():
    bcl = LOSSES.get("bcl")
    head = resolve_head("auto", bcl)
    model = build_model("resnet8", 4, head, None, bcl.projection).eval()
    logits, features = model(torch.rand(5, 3, 32, 32))
    assert logits.shape == (5, 4) and logits.abs().max() <= 1 + 1e-6  # cos θ; the loss scales it by 30
    assert features.shape == (5 + 4, 128)
    with torch.no_grad():
        assert torch.allclose(features[-4:], model.centres(model.head.weight))  # head_fc(fc.weight.T)
    batch_norms = [m for m in model.projection if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(batch_norms) == 1 and len(model.centres) == 4  # Linear-BN-ReLU-Linear, twice
    for head in ("linear", "cosine"):
        with pytest.raises(ConfigError, match="projection"):
            check_head(head, bcl)
