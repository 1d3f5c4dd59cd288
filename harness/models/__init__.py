"""Backbones and classifier heads.

A model maps images to `(logits, features)`: features are the penultimate embedding, logits
come from the head (see `heads` for the linear, cosine, projection and experts heads). A
multi-expert model (RIDE's and SADE's ResNet-32, `backbones.ExpertResNet`) returns logits
[B, K, C] and features [B, K, D], one row per expert.

    heads.py        HEADS, the heads, HEAD_CHOICES, resolve_head, check_head, init_linear, prior_bias
    backbones.py    MODELS: resnet32, resnet8, resnet8_narrow, resnet32_experts, resnet8_narrow_experts
    classifier.py   Classifier, build_model, loss_options, check_model
"""
from harness.models.backbones import MODELS, CifarResNet, ExpertResNet, expert_count
from harness.models.classifier import Classifier, build_model, check_model, loss_options
from harness.models.heads import (
    EXPERT_S,
    HEAD_CHOICES,
    HEADS,
    PROJECTION_DIM,
    CosineHead,
    ExpertHeads,
    LinearHead,
    Projection,
    ProjectionHead,
    check_head,
    init_linear,
    prior_bias,
    resolve_head,
)

__all__ = ["MODELS", "HEADS", "HEAD_CHOICES", "PROJECTION_DIM", "EXPERT_S", "CifarResNet", "ExpertResNet",
           "Classifier", "CosineHead", "ExpertHeads", "LinearHead", "Projection", "ProjectionHead", "build_model",
           "check_head", "check_model", "expert_count", "init_linear", "loss_options", "prior_bias", "resolve_head"]
