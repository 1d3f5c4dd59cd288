"""Validation of a grid's cells before anything runs: every part a cell names is built and run on
a dummy input, so a bad value stops the sweep (and --dry-run) with one line that names the file,
the key and the value:

    jobs/x.yaml: key 'loss.params.max_m': ldam max_m must be >= 0, got -1

    check = Validator("jobs/x.yaml: ")
    for cfg in configs:
        check(cfg)                      # ConfigError, one line

Per cell, through the registries (so parts registered later are covered the same way):
- the dataset card, and the imbalance profile's class counts: from the prepared training labels
  when the dataset is prepared under data.root, else from the card's n_max images per class;
- the augmentation with its parameters, on a small uint8 batch at the card's resolution;
- the model with its head, one forward on a few images (no gradient);
- the loss with those class counts, on that model's outputs, at the first and the last epoch;
- a second stage's own config (harness.stages.stage_config), the same way.

Every build is cached by the values that decide it, so a 60-cell grid builds a few models and
a 512-cell grid costs about what its distinct parts cost. Whether the data is prepared and a
second stage's first stage exists is the sweep's pre-flight (harness.sweep.preflight).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from harness.config import RunConfig
from harness.data.augment import build_augmentation, count_views
from harness.data.beton import Beton
from harness.data.cards import Card, load_card
from harness.data.conversion import data_dir, read_manifest
from harness.data.imbalance import PROFILES, long_tail
from harness.losses import LOSSES
from harness.models import build_model, check_head, check_model, loss_options, resolve_head
from harness.registry import ConfigError
from harness.stages import check_stage, stage_config

NOMINAL_N_MAX = 500
"""Images per class assumed for a card that gives no n_max, when its dataset is not prepared."""
BATCH = 4
"""Images in the dummy batches (labels 0, C-1, 0, C-1: every class seen twice, for SupCon)."""


def validate(cfg: RunConfig, where: str = "") -> None:
    """Check one config's parts (a grid checks all its cells with one Validator)."""
    Validator(where)(cfg)


class Validator:
    """Builds and runs the parts of each config it is called with; raises ConfigError (one line)."""

    def __init__(self, where: str = ""):
        self.where = where
        self.cache: dict = {}

    def __call__(self, cfg: RunConfig) -> None:
        for key, value in (("data.imbalance_factor", cfg.data.imbalance_factor),
                           ("schedule.epochs", cfg.schedule.epochs), ("optim.batch_size", cfg.optim.batch_size)):
            if value < 1:
                self.fail(key, f"must be >= 1, got {value}")
        if cfg.log.eval_every < 0:
            self.fail("log.eval_every", f"must be >= 0 (0: after the last epoch only), got {cfg.log.eval_every}")
        self.check_names(cfg)
        check_stage(cfg, self.where)
        self.check_parts(cfg)
        trains_with = stage_config(cfg)
        if trains_with is not cfg:  # a second stage trains its own loss and head
            try:
                self.check_parts(trains_with)
            except ConfigError as e:
                raise ConfigError(f"{self.where}key 'stage.kind': the {cfg.stage.kind} stage's own config: "
                                  f"{str(e).removeprefix(self.where)}") from None

    def fail(self, key: str, reason: str, value=None):
        """Raise the one-line error for `key`; the value is added when the reason does not show it."""
        forms = {str(value), repr(value)} | ({f"{value:g}"} if isinstance(value, float) else set())
        shown = value is None or any(form in reason for form in forms)
        raise ConfigError(f"{self.where}key '{key}': {reason}" + ("" if shown else f" (got {value!r})"))

    def check_names(self, cfg: RunConfig) -> None:
        """Registered names and parameter names, and the combinations of loss, model and head."""
        def named(key: str, fn, *args):
            try:
                fn(*args)
            except ConfigError as e:
                self.fail(key, str(e))

        loss = LOSSES.get(cfg.loss.name) if cfg.loss.name in LOSSES else None
        named("data.imbalance", PROFILES.check_params, cfg.data.imbalance, cfg.data.imbalance_params,
              ("n_max", "num_classes", "factor"))
        named("loss.name", LOSSES.check_params, cfg.loss.name, cfg.loss.params, ("class_counts",))
        named("model.name", check_model, cfg.model.name, loss, cfg.model.params)
        named("model.head", check_head, cfg.model.head, loss)  # the augmentation: see augmentation()

    # -- building the parts ------------------------------------------------------------------
    def check_parts(self, cfg: RunConfig) -> None:
        card = self.once(("card", cfg.data.dataset), lambda: load_card(cfg.data.dataset),
                         "data.dataset", cfg.data.dataset)
        counts = self.counts(cfg, card)
        self.augmentation(cfg, card)
        model_key, outputs = self.model(cfg, card)
        self.loss(cfg, counts, model_key, outputs)

    def once(self, cache_key: tuple, build, key: str, value, params: dict | None = None, attempt=None):
        """build() once per cache_key. Its failure is the one-line error of `key` and `value` for
        every cell, or of the first of `params` ({dotted key: value}) with which attempt(key,
        value) fails on its own, the others at their defaults."""
        if cache_key not in self.cache:
            try:
                self.cache[cache_key] = (build(), None)
            except Exception as e:  # a part may reject a value with any kind of error
                culprit = blame(params or {}, attempt)
                self.cache[cache_key] = (None, (*(culprit or (key, value)), reason(e)))
        result, error = self.cache[cache_key]
        if error:
            key, value, why = error
            self.fail(key, why, value)
        return result

    def counts(self, cfg: RunConfig, card: Card) -> list[int]:
        """The imbalance profile's training counts, as the trainer will compute them."""
        d = cfg.data

        def build(params=d.imbalance_params):
            labels = prepared_labels(card, d.root)
            if labels is None:
                per_class = card.n_max or card.source.get("train_per_class") or NOMINAL_N_MAX
                labels = np.repeat(np.arange(card.num_classes), per_class)
            counts = long_tail(labels, card.num_classes, d.imbalance, d.imbalance_factor, params,
                               d.val_fraction if d.val == "split" else 0.0).counts
            empty = [card.classes[c] for c, n in enumerate(counts) if n < 1]
            if len(counts) != card.num_classes or empty:
                left = f"class '{empty[0]}' without images" if empty else f"{len(counts)} counts"
                raise ConfigError(f"profile {d.imbalance} at factor {d.imbalance_factor:g} leaves {left} "
                                  f"for {card.num_classes} classes; every class needs training images")
            return counts

        cache_key = ("counts", card.path, d.root, d.imbalance, d.imbalance_factor, dumps(d.imbalance_params),
                     d.val, d.val_fraction)
        return self.once(cache_key, build, "data.imbalance_factor", d.imbalance_factor,
                         dotted("data.imbalance_params", d.imbalance_params), lambda k, v: build({last(k): v}))

    def augmentation(self, cfg: RunConfig, card: Card) -> None:
        """The augmentation with its parameters, on a uint8 batch at the card's resolution."""
        name, r = cfg.aug.name, card.resolution

        def build(params=cfg.aug.params):
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (BATCH, 3, r, r), dtype=torch.uint8, generator=g)
            build_augmentation(name, params)(x, dummy_labels(card.num_classes), g)

        parts = {f"aug.params.{part}": v for part, v in cfg.aug.params.items()}
        flat = {k: v for part, values in parts.items() for k, v in dotted(part, values).items()}
        self.once(("aug", name, dumps(cfg.aug.params), r, card.num_classes), build, "aug.name", name, flat,
                  lambda k, v: build({k.split(".")[2]: {last(k): v}}))

    def model(self, cfg: RunConfig, card: Card) -> tuple[tuple, tuple]:
        """(cache key, (logits, features)) of the model with its head on a few images (each view of
        them, view-major, as the trainer's batches hold them); built once per (model, head,
        parameters, classes, resolution, views)."""
        loss = LOSSES.get(cfg.loss.name)
        head = resolve_head(cfg.model.head, loss)
        name, params, c, r = cfg.model.name, cfg.model.params, card.num_classes, card.resolution
        options, views = loss_options(loss), count_views(cfg.aug.name)

        @torch.no_grad()
        def build(params=params):
            torch.manual_seed(0)
            model = build_model(name, c, head, params or None, **options)
            logits, features = model.eval()(torch.rand(BATCH * views, 3, r, r))
            return logits.float(), features.float()

        cache_key = ("model", name, head, dumps(params), c, r, *options.values(), views)
        return cache_key, self.once(cache_key, build, "model.name", name, dotted("model.params", params),
                                    lambda k, v: build({last(k): v}))

    def loss(self, cfg: RunConfig, counts: list[int], model_key: tuple, outputs: tuple) -> None:
        """The loss with the class counts, on the model's outputs, at the first and the last epoch."""
        name, epochs = cfg.loss.name, cfg.schedule.epochs
        logits, features = outputs
        views = count_views(cfg.aug.name)

        @torch.no_grad()
        def build(params=cfg.loss.params):
            loss = LOSSES.build(name, params, class_counts=torch.tensor(counts, dtype=torch.float32))
            loss.views = views
            target = dummy_labels(len(counts)).repeat(views)
            for epoch in sorted({0, max(0, epochs - 1)}):  # tau_norm trains 0 epochs: the loss is still built
                loss.set_epoch(epoch, max(1, epochs))
                value = loss(logits, target, features)
                loss.adjust_logits(logits)
                if value.numel() != 1 or not torch.isfinite(value).all():
                    raise ConfigError(f"loss {name} gives {value.flatten()[0].item()} on a dummy batch at "
                                      f"epoch {epoch + 1}; check its parameters")

        params = cfg.loss.params
        key, value = ("loss.params", params) if params else ("loss.name", name)
        self.once(("loss", name, dumps(params), tuple(counts), epochs, model_key), build, key, value,
                  dotted("loss.params", params), lambda k, v: build({last(k): v}))


# ---------------------------------------------------------------------------------------
# helpers

def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def dummy_labels(num_classes: int) -> torch.Tensor:
    return torch.tensor([0, num_classes - 1] * (BATCH // 2))


def prepared_labels(card: Card, root: str) -> np.ndarray | None:
    """The prepared training labels, or None when the dataset is not (or not readably) prepared."""
    folder = data_dir(card, root)
    if read_manifest(folder) is None:
        return None
    try:
        return Beton(folder / "train.beton").labels
    except (ConfigError, OSError, ValueError):
        return None  # the pre-flight says what is wrong with it


def reason(error: Exception) -> str:
    """A part's error as one line: ConfigError's message, else the kind and the first line."""
    if isinstance(error, ConfigError):
        return str(error)
    text = str(error).strip()
    return f"{type(error).__name__}" + (f": {text.splitlines()[0][:200]}" if text else "")


def dotted(section: str, params) -> dict:
    """{'loss.params.max_m': -1} from section 'loss.params' and {'max_m': -1}."""
    return {f"{section}.{k}": v for k, v in params.items()} if isinstance(params, dict) else {}


def last(key: str) -> str:
    return key.rsplit(".", 1)[1]


def blame(params: dict, attempt) -> tuple[str, object] | None:
    """(key, value) of the first of `params` with which attempt(key, value) fails, else None."""
    for k, v in params.items():
        try:
            attempt(k, v)
        except Exception:  # the part's own kind of error: this parameter is the culprit
            return k, v
    return None
