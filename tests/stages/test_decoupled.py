"""Kang et al.'s second stages as their code runs them (facebookresearch/classifier-balancing):
τ-norm's τ chosen on the validation split (tau_norm.py's sweep), cRT's BatchNorm in train mode
(run_networks.py), and the settings that must not select on the test set. End to end through the
Trainer: tests/run/test_stages.py (the kang fixture)."""
import math

import pytest
import torch
import torch.nn as nn

from harness.config import RunConfig, StageConfig, from_dict, signature
from harness.config.schema import TAU_GRID
from harness.grid.validate import Validator, validate
from harness.registry import ConfigError
from harness.stages import Frozen, stage_config, stage_fit
from harness.stages.decoupled import choose_tau, tau_hits

# Two classes in 2-D: w_0 = (2, 0) has twice the norm of w_1 = (0, 1), so with τ the logits of
# f = (1, r) are 2^(1-τ) for class 0 and r for class 1: class 0 wins iff r < 2^(1-τ), i.e. iff
# τ < 1 - log2(r). Class 0 images at r = 1.2, 1.3 are right for τ < 0.737, τ < 0.621; class 1
# images at r = 1.6, 1.45, 1.38 for τ > 0.322, 0.464, 0.535. Only τ = 0.6 of the grid gets all five.
W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
RATIOS, LABELS = [1.2, 1.3, 1.6, 1.45, 1.38], [0, 0, 1, 1, 1]
F = torch.tensor([[1.0, r] for r in RATIOS])
Y = torch.tensor(LABELS)


def by_hand(tau: float) -> float:
    """Mean per-class accuracy of the τ-normalised classifier, one image at a time in plain floats."""
    norms = [math.hypot(*row) for row in W.tolist()]
    right, total = [0, 0], [0, 0]
    for (fx, fy), label in zip(F.tolist(), LABELS):
        logits = [(fx * w[0] + fy * w[1]) / n ** tau for w, n in zip(W.tolist(), norms)]
        right[label] += logits.index(max(logits)) == label
        total[label] += 1
    return 100 * sum(r / t for r, t in zip(right, total)) / 2


def test_the_tau_search_picks_the_tau_with_the_best_balanced_val_accuracy():
    hits = tau_hits(F, Y, W, TAU_GRID, 2)
    tau, accs = choose_tau(TAU_GRID, hits, torch.bincount(Y).double())
    assert tau == 0.6
    assert accs == pytest.approx([by_hand(t) for t in TAU_GRID], abs=1e-9)
    assert accs[TAU_GRID.index(0.6)] == 100 and accs[TAU_GRID.index(0.5)] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert accs[0] == 50 and accs[-1] == 50  # τ = 0: every image class 0; τ = 2: every image class 1


def test_tau_zero_is_the_plain_classifier_and_tau_one_the_unit_norm_one():
    g = torch.Generator().manual_seed(0)
    f, w = torch.randn(200, 8, generator=g), torch.randn(5, 8, generator=g) * torch.rand(5, 1, generator=g) * 4
    y = torch.randint(0, 5, (200,), generator=g)
    hits = tau_hits(f, y, w, [0.0, 1.0], 5)
    for row, weights in zip(hits, (w, nn.functional.normalize(w, dim=1))):
        right = (f @ weights.T).argmax(1) == y
        assert row.tolist() == torch.bincount(y[right], minlength=5).double().tolist()


def test_ties_go_to_the_first_candidate_and_classes_without_images_do_not_count():
    hits = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tau, accs = choose_tau([0.3, 0.1, 0.2], hits, torch.tensor([1.0, 0.0, 2.0]))
    assert tau == 0.3 and accs == [50.0, 50.0, 0.0]


def test_stage_fit_sets_the_chosen_taus_weights_and_says_what_it_chose():
    cfg = from_dict(RunConfig, {"data": {"val": "split"}, "stage": {"kind": "tau_norm", "tau": "search"}})
    model = nn.Module()
    model.head = nn.Linear(2, 2)
    with torch.no_grad():
        model.head.weight.copy_(W)
    val = [(F[:3], Y[:3]), (F[3:], Y[3:])]  # two batches: the counts add up
    found = stage_fit(cfg, model, val, lambda x: x)
    assert found["tau"] == 0.6 and found["split"] == "split" and found["val_top1"]["0.6"] == 100
    assert len(found["val_top1"]) == 21 and found["val_top1"]["0"] == 50
    assert torch.allclose(model.head.weight, W / W.norm(dim=1, keepdim=True) ** 0.6)
    plain = from_dict(RunConfig, {"data": {"val": "split"}, "stage": {"kind": "tau_norm"}})
    assert stage_fit(plain, model, val, lambda x: x) is None


# ---------------------------------------------------------------------------------------
# cRT's BatchNorm

def backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("bn_train", [False, True])
def test_bn_statistics_move_in_train_mode_and_stay_when_frozen(bn_train):
    frozen = Frozen(backbone(), bn_train=bn_train)
    bn = frozen.module[1]
    before = {k: v.clone() for k, v in frozen.module.state_dict().items()}
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    frozen.train()
    out = frozen(x)
    assert bn.training == bn_train and not out.requires_grad
    assert all(not p.requires_grad for p in frozen.parameters())
    after = frozen.module.state_dict()
    for key in ("0.weight", "1.weight", "1.bias"):  # the weights never change
        assert torch.equal(after[key], before[key]), key
    assert torch.equal(after["1.running_mean"], before["1.running_mean"]) != bn_train
    with torch.no_grad():  # in train mode the batch is normalised with its own statistics
        h = frozen.module[0](x)
        own = nn.functional.batch_norm(h, None, None, bn.weight, bn.bias, training=True)
    assert torch.allclose(out, own.relu().mean((2, 3)), atol=1e-5) == bn_train
    frozen.eval()  # evaluation: the running statistics, unchanged by it
    moved = bn.running_mean.clone()
    frozen(x)
    assert not bn.training and torch.equal(bn.running_mean, moved)


# ---------------------------------------------------------------------------------------
# configs: Kang's settings, and nothing chosen on the test set

@pytest.mark.parametrize("tree, key", [
    ({"stage": {"kind": "tau_norm", "tau": "search"}}, "stage.tau"),  # data.val test by default
    ({"stage": {"kind": "crt", "from_epoch": "best"}}, "stage.from_epoch"),
    ({"stage": {"kind": "tau_norm", "from_epoch": "best"}, "data": {"val": "test"}}, "stage.from_epoch"),
    ({"stage": {"kind": "tau_norm", "tau": "search", "tau_grid": []}, "data": {"val": "split"}}, "stage.tau_grid"),
    ({"stage": {"kind": "tau_norm", "tau": "search", "tau_grid": [1, -1]}, "data": {"val": "split"}},
     "stage.tau_grid"),
    ({"stage": {"kind": "tau_norm", "tau": -0.5}}, "stage.tau"),
])
def test_choosing_on_the_test_set_and_bad_taus_are_config_errors(tree, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(from_dict(RunConfig, tree))


def test_kangs_settings_validate_with_a_validation_split():
    check = Validator()
    for stage in ({"kind": "tau_norm", "tau": "search", "from_epoch": "best"},
                  {"kind": "tau_norm", "tau": "search", "tau_grid": [0, 0.5, 1]},
                  {"kind": "crt", "bn": "train", "from_epoch": "best", "weight_decay": 5e-4}):
        check(from_dict(RunConfig, {"data": {"val": "split"}, "stage": stage}))
    with pytest.raises(ConfigError, match="key 'stage.tau' must be"):
        from_dict(RunConfig, {"stage": {"kind": "tau_norm", "tau": "best"}})
    with pytest.raises(ConfigError, match="key 'stage.bn' must be"):
        from_dict(RunConfig, {"stage": {"kind": "crt", "bn": "eval"}})


def test_the_new_fields_split_no_signature_unless_set():
    plain = from_dict(RunConfig, {"stage": {"kind": "tau_norm"}})
    same = [{"kind": "tau_norm", "tau": 1}, {"kind": "tau_norm", "tau_grid": [0.5]},  # no search: no candidates
            {"kind": "tau_norm", "bn": "train"}]  # bn is crt's
    for stage in same:
        assert signature(from_dict(RunConfig, {"stage": stage})) == signature(plain), stage
    crt = from_dict(RunConfig, {"stage": {"kind": "crt"}})
    assert crt.stage.bn == "frozen" and crt.stage.from_epoch == "last" and crt.stage.weight_decay is None
    assert signature(crt) == signature(from_dict(RunConfig, {"stage": {"kind": "crt", "bn": "frozen"}}))
    assert signature(crt) != signature(from_dict(RunConfig, {"stage": {"kind": "crt", "bn": "train"}}))
    search = from_dict(RunConfig, {"stage": {"kind": "tau_norm", "tau": "search"}})
    assert search.stage.tau_grid == TAU_GRID == [i / 10 for i in range(21)]
    assert StageConfig(kind="train", tau="search").tau == 1.0  # unused by a train run
    assert stage_config(search).schedule.epochs == 0
