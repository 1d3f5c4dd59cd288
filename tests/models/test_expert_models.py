"""The multi-expert ResNet of RIDE and SADE: its size, its layout, its logits, and how it is
checked against the loss before a run.

Parameter counts (trainable parameters, BatchNorm's affine ones included, running statistics
not): RIDE's own model (frank-xwang/RIDE-LongTailRecognition model/ldam_drw_resnets/
ride_resnet_cifar.py `ResNet_s(BasicBlock, [5, 5, 5], num_experts, num_classes,
reduce_dimension, use_norm=True)`) has 783,856 parameters with 3 experts and 100 classes and
770,896 with 10 classes (counted by building it); by hand: stem 464 + layer1 23,360 shared, and
per expert 9·16·24 + 9·24·24 + 96 + 4·(2·9·24·24 + 96) (layer2) + 9·24·48 + 9·48·48 + 192
+ 4·(2·9·48·48 + 192) (layer3) + 48·C (NormedLinear, no bias).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.config import RunConfig, from_dict, signature
from harness.grid.validate import validate
from harness.losses import LOSSES
from harness.models import EXPERT_S, MODELS, build_model, check_head, expert_count, resolve_head
from harness.registry import ConfigError

SHARED = 464 + 23_360  # conv1 + bn1, layer1 (5 blocks of 16 channels)


def per_expert(w2: int, w3: int, classes: int) -> int:
    def block(i, o):
        return 9 * i * o + 9 * o * o + 4 * o
    return block(16, w2) + 4 * block(w2, w2) + block(w2, w3) + 4 * block(w3, w3) + w3 * classes


def count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("experts, reduce, classes, expected", [
    (3, True, 100, 783_856), (3, True, 10, 770_896), (3, False, 100, 1_362_064), (1, True, 100, 277_168)])
def test_parameter_count_is_rides(experts, reduce, classes, expected):
    model = build_model("resnet32_experts", classes, "experts", {"num_experts": experts, "reduce_dimension": reduce})
    w2, w3 = (24, 48) if reduce else (32, 64)
    assert count(model) == expected == SHARED + experts * per_expert(w2, w3, classes)


def test_the_single_head_resnet32_is_unchanged():
    assert count(build_model("resnet32", 10, "linear")) == 464_154  # "ResNet32 0.46M" of the LDAM-DRW code


def test_shared_stem_and_first_stage_then_one_branch_and_cosine_head_per_expert():
    torch.manual_seed(0)
    model = build_model("resnet32_experts", 10, "experts").eval()
    backbone, heads = model.backbone, model.head
    assert model.num_experts == backbone.num_experts == 3 and len(heads.experts) == 3
    assert len(backbone.layer2s) == len(backbone.layer3s) == 3 and len(backbone.layer1) == 5
    assert [b.conv2.out_channels for b in (backbone.layer1[0], backbone.layer2s[0][0], backbone.layer3s[0][0])] == \
        [16, 24, 48]
    x = torch.randn(4, 3, 32, 32)
    logits, features = model(x)
    assert logits.shape == (4, 3, 10) and features.shape == (4, 3, 48)
    with torch.no_grad():  # written out: shared part, then expert k's stages, pooling, s·cos θ
        shared = backbone.layer1(F.relu(backbone.bn(backbone.conv(x))))
        for k in range(3):
            f = backbone.layer3s[k](backbone.layer2s[k](shared)).mean(dim=(2, 3))
            w = heads.experts[k].weight
            cos = (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
            torch.testing.assert_close(features[:, k], f)
            torch.testing.assert_close(logits[:, k], EXPERT_S * cos)
    assert logits.abs().max() <= EXPERT_S + 1e-4


def test_an_expert_depends_only_on_the_shared_part_and_its_own_branch():
    torch.manual_seed(0)
    model = build_model("resnet8_narrow_experts", 10, "experts").eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)[0].detach()
    with torch.no_grad():
        for p in model.backbone.layer3s[1].parameters():
            p.add_(1.0)
    after = model(x)[0].detach()
    assert torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, 2], after[:, 2])
    assert not torch.equal(before[:, 1], after[:, 1])


def test_expert_models_and_expert_losses_go_together():
    ride, sade = LOSSES.get("ride"), LOSSES.get("sade")
    assert expert_count("resnet32_experts") == 3 and expert_count("resnet32") is None
    assert resolve_head("auto", sade) == "experts" and resolve_head("auto", ride) == "experts"
    check_head("experts", ride)
    with pytest.raises(ConfigError, match="experts head"):
        check_head("cosine", ride)
    with pytest.raises(ConfigError, match="expert loss"):
        build_model("resnet32_experts", 10, "linear")
    with pytest.raises(ConfigError, match="multi-expert model"):
        build_model("resnet32", 10, "experts")
    assert set(MODELS.names()) >= {"resnet32_experts", "resnet8_narrow_experts"}


def config(model: dict, loss: str, **loss_params) -> RunConfig:
    return from_dict(RunConfig, {"model": model, "loss": {"name": loss, "params": loss_params}})


@pytest.mark.parametrize("model, loss, key, message", [
    ({"name": "resnet32_experts"}, "ce", "model.name", "train it with an expert loss"),
    ({"name": "resnet32"}, "sade", "model.name", "needs a multi-expert model"),
    ({"name": "resnet32_experts", "params": {"num_experts": 2}}, "sade", "model.name", "needs 3 experts"),
    ({"name": "resnet32_experts", "params": {"num_experts": 0}}, "ride", "model.name", "positive integer"),
    ({"name": "resnet32_experts", "params": {"experts": 3}}, "ride", "model.params", "no parameter experts"),
    ({"name": "resnet32", "params": {"num_experts": 3}}, "ce", "model.params", "no parameter num_experts"),
    ({"name": "resnet32_experts", "head": "cosine"}, "ride", "model.head", "experts head"),
])
def test_validation_names_the_key_of_a_bad_combination(model, loss, key, message):
    with pytest.raises(ConfigError, match=f"key '{key}[.a-z_]*'.*{message}"):
        validate(config(model, loss))


def test_valid_expert_cells_and_the_signature_of_unset_model_params():
    validate(config({"name": "resnet32_experts"}, "sade", test_time_aggregation=True))
    validate(config({"name": "resnet32_experts", "params": {"num_experts": 4}}, "ride"))
    plain = from_dict(RunConfig, {})
    assert signature(plain) == signature(from_dict(RunConfig, {"model": {"params": {}}}))
    assert signature(plain) != signature(from_dict(RunConfig, {"model": {"params": {"num_experts": 4}}}))
