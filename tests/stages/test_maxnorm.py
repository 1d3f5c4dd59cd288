"""Weight balancing's second stage (Alshammari et al., CVPR 2022) in parts: the MaxNorm radius and
projection against hand computations, the hook as the trainer calls it, its loss (cb_softmax_bce)
against an independent computation, and the recipe's defaults (ShadeAlsha/LTR-weight-balancing
demo2_second-stage-training.py). End to end: tests/run/test_stages.py."""
import math

import pytest
import torch
import torch.nn as nn

from harness.config import RunConfig, StageConfig, from_dict
from harness.losses import LOSSES
from harness.stages import stage_config, stage_hook
from harness.stages.maxnorm import MaxNorm, maxnorm_radius, project_rows

# class rows with norms 5, 1, 10 and 0.625, exact in float32
ROWS = [[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.375, 0.5]]


def test_the_radius_sits_thresh_of_the_way_from_the_smallest_to_the_largest_row_norm():
    norms = [math.hypot(*row) for row in ROWS]
    for thresh in (0.0, 0.1, 0.5, 1.0):
        expected = min(norms) + thresh * (max(norms) - min(norms))
        assert maxnorm_radius(torch.tensor(ROWS), thresh) == pytest.approx(expected, rel=1e-6)


def test_the_projection_puts_long_rows_on_the_sphere_and_leaves_short_ones_alone():
    w = torch.tensor(ROWS)
    radius = 2.0
    project_rows(w, radius)
    for before, after in zip(torch.tensor(ROWS), w):
        norm = math.hypot(*before.tolist())
        if norm > radius:  # the same direction, length exactly the radius
            assert after.tolist() == pytest.approx([v * radius / norm for v in before.tolist()], rel=1e-6)
        else:
            assert torch.equal(after, before)  # untouched, bit for bit


class Tiny(nn.Module):
    """A frozen 'backbone' and a linear head, as stage_model leaves a maxnorm model."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Identity()
        self.head = nn.Linear(2, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(ROWS))
            self.head.bias.copy_(torch.tensor([5.0, -5.0, 0.0, 1.0]))

    def forward(self, x):
        return self.head(self.backbone(x))


def take_a_step(model: Tiny) -> None:
    """One SGD step (it leaves rows 0 and 2 longer than the radius below, row 3 shorter)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [2.0, 1.0], [0.5, -1.0]]), torch.arange(4)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("every", ["step", "epoch"])
def test_the_hook_bounds_every_class_vector_after_a_step_by_the_first_stages_radius(every):
    cfg = from_dict(RunConfig, {"stage": {"kind": "maxnorm", "maxnorm_thresh": 0.1, "maxnorm_every": every}})
    model = Tiny()
    hook = stage_hook(cfg, model)  # set up from the head as stage_model leaves it: the first stage's
    assert isinstance(hook, MaxNorm) and hook.radius == pytest.approx(0.625 + 0.1 * (10 - 0.625))
    take_a_step(model)
    bias, stepped = model.head.bias.detach().clone(), model.head.weight.detach().clone()
    long = stepped.norm(dim=1) > hook.radius
    assert long.any() and not long.all()
    hook(model, epoch_end=False)  # a step inside the epoch: projected under the paper's rule only
    inside = model.head.weight.detach().clone()
    hook(model, epoch_end=True)  # the epoch's last step: projected under both
    after = model.head.weight.detach()
    if every == "epoch":
        assert torch.equal(inside, stepped)
    assert after[long].norm(dim=1).tolist() == pytest.approx([hook.radius] * int(long.sum()), rel=1e-6)
    unit = after[long] / after[long].norm(dim=1, keepdim=True)
    assert torch.allclose(unit, stepped[long] / stepped[long].norm(dim=1, keepdim=True))
    assert torch.equal(after[~long], stepped[~long])  # rows inside the ball: untouched
    assert torch.equal(model.head.bias, bias)  # the bias is never constrained
    # the radius is fixed before training: it does not follow the head's new norms
    assert stage_hook(cfg, Tiny()).radius == hook.radius


def test_the_other_stages_constrain_nothing():
    model = Tiny()
    for kind in ("train", "crt", "ldmlr"):
        stage_hook(from_dict(RunConfig, {"stage": {"kind": kind}}), model)(model, True)
    assert torch.equal(model.head.weight, torch.tensor(ROWS))


def cb_softmax_bce_reference(logits, targets, counts, beta):
    """(1/(B·C)) Σ_i w_{y_i} Σ_j -[y_ij log p_ij + (1 - y_ij) log(1 - p_ij)], p = softmax, w the
    effective-number weights normalised to sum to C: CB_loss(..., "softmax") of the WB code, in floats."""
    c = len(counts)
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    w = [v * c / sum(raw) for v in raw]
    total = 0.0
    for row, y in zip(logits, targets):
        z = sum(math.exp(v) for v in row)
        for j, v in enumerate(row):
            p = math.exp(v) / z
            total += w[y] * -(math.log(p) if j == y else math.log(1 - p))
    return total / (len(logits) * c)


def test_cb_softmax_bce_is_the_class_balanced_bce_on_softmax_of_the_wb_code():
    counts = [500.0, 60.0, 12.0, 3.0]
    logits = [[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 0.1], [-0.5, 0.2, 0.9, 1.4],
              [1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0]]
    targets = [0, 1, 2, 3, 2]
    for beta in (0.9999, 0.99, 0.0):
        loss = LOSSES.build("cb_softmax_bce", {"beta": beta}, class_counts=torch.tensor(counts))
        value = loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(targets))
        assert value.item() == pytest.approx(cb_softmax_bce_reference(logits, targets, counts, beta), rel=1e-6)
    default = LOSSES.build("cb_softmax_bce", {}, class_counts=torch.tensor(counts))
    assert default.beta == 0.9999  # the code's CB_loss(..., "softmax", 0.9999, 2.0, ...)


def test_the_maxnorm_recipe_is_the_codes():
    cfg = from_dict(RunConfig, {"optim": {"weight_decay": 5e-3, "batch_size": 64}, "stage": {"kind": "maxnorm"}})
    s = cfg.stage
    assert (s.epochs, s.lr, s.weight_decay, s.loss, s.maxnorm_thresh, s.maxnorm_every) == (
        10, 0.01, 0.1, "cb_softmax_bce", 0.1, "epoch")
    run = stage_config(cfg)
    assert (run.optim.name, run.optim.lr, run.optim.momentum, run.optim.weight_decay, run.optim.batch_size) == (
        "sgd", 0.01, 0.9, 0.1, 64)
    assert (run.schedule.epochs, run.schedule.warmup_epochs, run.schedule.decay) == (10, 0, "cosine")
    assert (run.loss.name, run.model.head) == ("cb_softmax_bce", "linear")
    # the paper's plain class-balanced CE and its own numbers are one key away
    other = stage_config(from_dict(RunConfig, {"stage": {"kind": "maxnorm", "loss": "cb_softmax", "lr": 0.05,
                                                         "weight_decay": 1e-3}}))
    assert (other.loss.name, other.optim.lr, other.optim.weight_decay) == ("cb_softmax", 0.05, 1e-3)
    # crt keeps what it always trained with
    crt = stage_config(from_dict(RunConfig, {"optim": {"weight_decay": 5e-3}, "stage": {"kind": "crt"}}))
    assert (crt.loss.name, crt.optim.lr, crt.optim.weight_decay, crt.optim.batch_size) == ("ce", 0.05, 5e-3, 128)
    assert StageConfig(kind="crt").weight_decay is None and StageConfig(kind="train").maxnorm_thresh == 0.1
