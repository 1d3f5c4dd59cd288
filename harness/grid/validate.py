"""Validation of a cell before anything runs: registered names, parameters, combinations."""
from __future__ import annotations

from harness.config import RunConfig
from harness.data.augment import check_augmentation
from harness.data.imbalance import PROFILES
from harness.losses import LOSSES
from harness.models import MODELS, check_head
from harness.registry import ConfigError
from harness.stages import check_stage


def validate(cfg: RunConfig, where: str = "") -> None:
    """Check the registered names and the combinations before anything runs."""
    def named(key: str, fn, *args):
        try:
            fn(*args)
        except ConfigError as e:
            raise ConfigError(f"{where}key '{key}': {e}") from None

    named("data.imbalance", PROFILES.check_params, cfg.data.imbalance, cfg.data.imbalance_params,
          ("n_max", "num_classes", "factor"))
    named("loss.name", LOSSES.check_params, cfg.loss.name, cfg.loss.params, ("class_counts",))
    named("model.name", MODELS.get, cfg.model.name)
    named("model.head", check_head, cfg.model.head, LOSSES.get(cfg.loss.name))
    named("aug.name", check_augmentation, cfg.aug.name, cfg.aug.params)
    check_stage(cfg, where)
    if cfg.data.imbalance_factor < 1:
        raise ConfigError(f"{where}key 'data.imbalance_factor' must be >= 1, got {cfg.data.imbalance_factor}")
    if cfg.schedule.epochs < 1 or cfg.optim.batch_size < 1:
        raise ConfigError(f"{where}key 'schedule.epochs' and 'optim.batch_size' must be >= 1")
