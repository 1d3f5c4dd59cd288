"""How a model's classifier starts, as the authors' code starts it.

- kaidic/LDAM-DRW models/resnet_cifar.py: `_weights_init` applies kaiming_normal_ to every nn.Linear
  and Conv2d (std √(2 / fan_in)); NormedLinear's class vectors start at unit norm
  (`uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`); RIDE's and SADE's experts use the same.
- richardaecn/class-balanced-loss src/model_base.py: a sigmoid loss's last bias starts at -log(C - 1).
- GPaCo's and SupContrast's classifiers, and a second stage's new one (Kang et al.'s cRT), are plain
  nn.Linear: PyTorch's default init, std √(1 / (3 · fan_in)).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from harness.config import RunConfig, from_dict
from harness.losses import LOSSES
from harness.models import CosineHead, build_model, init_linear, loss_options, prior_bias, resolve_head
from harness.registry import ConfigError
from harness.stages import stage_head

SIGMOID_LOSSES = ("sigmoid_focal", "cb_sigmoid", "cb_focal", "sigmoid_focal_drw")


def model_for(loss: str, classes: int = 10, name: str = "resnet8"):
    cls = LOSSES.get(loss)
    torch.manual_seed(0)
    return build_model(name, classes, resolve_head("auto", cls), **loss_options(cls))


def kurtosis(x: torch.Tensor) -> float:
    """E[(x - μ)^4] / σ^4: 3 for a normal distribution, 1.8 for a uniform one."""
    x = x.double().flatten() - x.double().mean()
    return float((x ** 4).mean() / (x ** 2).mean() ** 2)


def test_kaiming_normal_is_the_linear_init_with_std_sqrt_2_over_fan_in():
    torch.manual_seed(0)
    layer = nn.Linear(400, 1000)
    init_linear(layer, "kaiming")
    w = layer.weight.detach()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 400), rel=0.01)
    assert abs(float(w.mean())) < 1e-3 and kurtosis(w) == pytest.approx(3.0, abs=0.05)  # normal, not uniform
    bound = 1 / math.sqrt(400)  # the bias keeps nn.Linear's default, as in LDAM-DRW
    assert float(layer.bias.abs().max()) <= bound and float(layer.bias.std()) > bound / 3
    default = nn.Linear(400, 1000)
    init_linear(default, "torch")  # left as nn.Linear made it
    assert float(default.weight.std()) == pytest.approx(math.sqrt(1 / (3 * 400)), rel=0.01)
    assert kurtosis(default.weight) == pytest.approx(1.8, abs=0.05)
    with pytest.raises(ConfigError, match="xavier"):
        init_linear(default, "xavier")


@pytest.mark.parametrize("loss, std", [("ce", math.sqrt(2 / 64)), ("cb_focal", math.sqrt(2 / 64)),
                                       ("gpaco", math.sqrt(1 / (3 * 64))), ("supcon", math.sqrt(1 / (3 * 64)))])
def test_the_model_builder_inits_the_linear_head_as_the_losss_code(loss, std):
    head = model_for(loss, classes=1000).head  # ResNet-8: 64 features, 64,000 weights
    assert float(head.weight.std()) == pytest.approx(std, rel=0.02)


def test_a_second_stages_new_classifier_is_a_plain_nn_linear():
    crt = from_dict(RunConfig, {"stage": {"kind": "crt"}})
    assert stage_head(crt, loss_options(LOSSES.get("ce")))["head_init"] == "torch"
    assert stage_head(RunConfig(), loss_options(LOSSES.get("ce")))["head_init"] == "kaiming"
    sigmoid = stage_head(crt, loss_options(LOSSES.get("cb_sigmoid")))
    assert sigmoid["sigmoid"] and sigmoid["head_init"] == "torch"  # the prior bias stays


@pytest.mark.parametrize("kind", ["train", "crt"])
def test_model_head_init_gives_every_loss_the_same_start(kind):
    for loss, setting, expected in (("ce", "torch", "torch"), ("supcon", "kaiming", "kaiming"),
                                    ("gpaco", "auto", "torch"),
                                    ("ce", "auto", "kaiming" if kind == "train" else "torch")):
        cfg = from_dict(RunConfig, {"model": {"head_init": setting}, "stage": {"kind": kind}})
        assert stage_head(cfg, loss_options(LOSSES.get(loss)))["head_init"] == expected, (loss, setting, kind)
    with pytest.raises(ConfigError, match="head_init"):
        from_dict(RunConfig, {"model": {"head_init": "xavier"}})


def test_model_head_init_reaches_the_trainers_model_and_moves_the_signature_only_when_set(tmp_path, tiny_card):
    from harness.config import signature
    from harness.run.trainer import Trainer
    base = {"data": {"dataset": str(tiny_card), "root": str(tmp_path / "data"), "loader": "memory",
                     "imbalance_factor": 10}, "model": {"name": "resnet8"}, "schedule": {"epochs": 0}}
    configs = {setting: from_dict(RunConfig, {**base, "model": {"name": "resnet8", "head_init": setting}})
               for setting in ("auto", "torch")}
    assert signature(configs["auto"]) == signature(from_dict(RunConfig, base)) != signature(configs["torch"])
    stds = {}
    for setting, cfg in configs.items():
        torch.manual_seed(0)
        stds[setting] = float(Trainer(cfg, tmp_path / setting).model.head.weight.std())
    assert stds["auto"] == pytest.approx(math.sqrt(2 / 64), rel=0.2)  # ce: Kaiming, 640 weights
    assert stds["torch"] == pytest.approx(math.sqrt(1 / (3 * 64)), rel=0.2)


def test_cosine_class_vectors_start_at_unit_norm():
    torch.manual_seed(0)
    w = CosineHead(64, 100).weight
    assert torch.allclose(w.norm(dim=1), torch.ones(100), atol=1e-5)
    assert float(w.abs().max()) < 1  # uniform in the cube [-1, 1], then scaled down onto the sphere
    assert torch.allclose(model_for("ldam").head.weight.norm(dim=1), torch.ones(10), atol=1e-5)
    experts = model_for("ride", classes=10, name="resnet8_narrow_experts").head.experts
    assert len(experts) == 3
    for head in experts:
        assert torch.allclose(head.weight.norm(dim=1), torch.ones(10), atol=1e-5)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_a_sigmoid_losss_bias_starts_at_the_prior(classes):
    assert prior_bias(classes) == pytest.approx(-math.log(classes - 1))
    for loss in SIGMOID_LOSSES:
        model = model_for(loss, classes)
        assert LOSSES.get(loss).sigmoid and model.no_weight_decay() == {"head.bias"}
        assert torch.equal(model.head.bias, torch.full((classes,), prior_bias(classes)))
        p = torch.sigmoid(model.head.bias)  # every class starts at π = 1/C
        assert torch.allclose(p, torch.full_like(p, 1 / classes))


def test_other_losses_keep_the_default_bias_and_decay_everything():
    for loss in ("ce", "focal", "cb_softmax", "balanced_softmax", "ce_drw", "gpaco"):
        model = model_for(loss, classes=100)
        assert not LOSSES.get(loss).sigmoid and model.no_weight_decay() == set()
        bias = model.head.bias
        assert float(bias.abs().max()) <= 1 / 8 and float(bias.std()) > 0.02  # nn.Linear's U(±1/√64)
    assert model_for("ldam").no_weight_decay() == set()
    with pytest.raises(ConfigError, match="sigmoid loss needs a linear head"):
        build_model("resnet8", 10, "cosine", sigmoid=True)
