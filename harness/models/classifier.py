"""A backbone and a head: what the trainer builds from `model.name`, `model.head` and `model.params`."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.models.backbones import MODELS, expert_count
from harness.models.heads import HEADS, ExpertHeads, Projection, ProjectionHead, init_linear, prior_bias
from harness.registry import ConfigError

SUPCON_PROJECTION = Projection()
"""The default projection: SupCon's MLP beside a linear classifier."""


class Classifier(nn.Module):
    """A backbone (images -> features), a head (features -> logits) and, for the contrastive losses, a
    projection (features -> the embedding returned as features); with class centres (BCL, models/resnext.py
    `BCLModel.head_fc`), the features are the N embeddings followed by the C centres: the head's weight
    vectors through their own MLP.

    With a multi-expert backbone (`num_experts` K > 0) the head is `ExpertHeads`: logits
    [B, K, C] (each expert's s·cos) and features [B, K, D]; the expert losses reduce them.

    A linear head's weight starts as `head_init` says (heads.init_linear); with `sigmoid` (a
    sigmoid loss, Loss.sigmoid) its bias starts at -log(C - 1) and `no_weight_decay()` names it.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head: str, num_experts: int = 0,
                 projection: Projection = SUPCON_PROJECTION, head_init: str = "kaiming", sigmoid: bool = False):
        super().__init__()
        self.backbone = backbone
        if head == "experts":
            self.head = ExpertHeads(feature_dim, num_classes, num_experts)
        else:
            self.head = HEADS.get(projection.classifier if head == "projection" else head)(feature_dim, num_classes)
        if sigmoid and not isinstance(self.head, nn.Linear):
            raise ConfigError(f"a sigmoid loss needs a linear head with a bias, not '{head}'")
        if isinstance(self.head, nn.Linear):
            init_linear(self.head, head_init, prior_bias(num_classes) if sigmoid else None)
        p = Projection(*projection)
        mlp = (lambda: ProjectionHead(feature_dim, p.out, p.hidden, p.batch_norm))
        self.projection = mlp() if head == "projection" else None
        self.centres = mlp() if head == "projection" and p.centres else None
        self.feature_dim = feature_dim
        self.num_experts = num_experts
        self.sigmoid = sigmoid

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the optimizer must not decay (harness.run.optim): a sigmoid loss's
        head bias, as Cui et al. leave the last layer's bias out of the L2 term (class-balanced-loss
        src/cifar_main.py `_tower_fn`: `'dense/bias' not in v.name` for the sigmoid and focal losses)."""
        return {"head.bias"} if self.sigmoid else set()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        logits = self.head(f)
        if self.projection is None:
            return logits, f
        z = self.projection(f)
        if self.centres is None:
            return logits, z
        centres = self.centres(self.head.weight)  # [C, d]: BCL's head_fc(fc.weight.T)
        return logits, torch.cat([z, centres.to(z.dtype)])


def check_model(name: str, loss_cls, params: dict | None = None) -> None:
    """Raise ConfigError unless the model suits the loss: a multi-expert backbone goes with an
    expert loss (head 'experts') and the other way round, with a positive whole number of experts,
    the number the loss needs if it needs one (`loss_cls.num_experts`, e.g. SADE's 3)."""
    experts = expert_count(name, params)  # None: a single-head backbone
    if experts is not None and (isinstance(experts, bool) or not isinstance(experts, int) or experts < 1):
        raise ConfigError(f"model '{name}': num_experts must be a positive integer, got {experts!r}")
    wants_experts = getattr(loss_cls, "head", "linear") == "experts"
    if experts and not wants_experts:
        raise ConfigError(f"model '{name}' has {experts} experts; train it with an expert loss (ride, sade)")
    if wants_experts and not experts:
        raise ConfigError(f"loss '{loss_cls.__name__}' needs a multi-expert model "
                          f"({', '.join(n for n in MODELS.names() if expert_count(n) is not None)}), not '{name}'")
    needed = getattr(loss_cls, "num_experts", None)
    if needed is not None and experts != needed:
        raise ConfigError(f"loss '{loss_cls.__name__}' needs {needed} experts; model '{name}' has {experts} "
                          f"(model.params.num_experts)")


def build_model(name: str, num_classes: int, head: str, params: dict | None = None,
                projection: Projection = SUPCON_PROJECTION, head_init: str = "kaiming",
                sigmoid: bool = False) -> Classifier:
    """The registered backbone `name` (built with `params`) and the head `head` (not 'auto'); with
    the projection head, `projection` is what the loss asks for (Loss.projection: MLP, classifier,
    centres). `projection`, `head_init` and `sigmoid` are the loss's own (Loss.projection,
    Loss.head_init, Loss.sigmoid): `loss_options`."""
    backbone = MODELS.build(name, params)
    experts = getattr(backbone, "num_experts", 0)
    if experts and head != "experts":
        raise ConfigError(f"model '{name}' has {experts} experts and needs the experts head (an expert loss), "
                          f"not '{head}'")
    if head == "experts" and not experts:
        raise ConfigError(f"the experts head needs a multi-expert model, not '{name}'")
    return Classifier(backbone, backbone.out_dim, num_classes, head, experts, projection, head_init, sigmoid)


def loss_options(loss_cls) -> dict:
    """What `build_model` takes from a loss class: its projection, head init and sigmoid prior."""
    return {"projection": getattr(loss_cls, "projection", SUPCON_PROJECTION),
            "head_init": getattr(loss_cls, "head_init", "kaiming"), "sigmoid": getattr(loss_cls, "sigmoid", False)}

