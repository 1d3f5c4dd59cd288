"""Deferred re-weighting (Cao et al., NeurIPS 2019): `<loss>_drw` for every per-sample loss.

Until the start epoch the base loss is used as it is; from it on, each sample's loss is
weighted by its class's effective-number weight (Cui et al. 2019, β = 0.9999, normalised to
sum to C), and the batch loss is Σ w_y·ℓ / Σ w_y, as `F.cross_entropy(weight=...)` in the
LDAM-DRW code.

The start epoch (0-based, the first weighted one) is either
- `drw_epoch`: an absolute epoch (e.g. 160), which wins when set, or
- `drw_frac`: a fraction of the run, round(drw_frac · epochs); the default 0.8 gives the
  reference 160 of 200 epochs and scales to short runs (8 of 10).
"""
from __future__ import annotations

import inspect
import sys
from typing import ClassVar

from harness.losses.base import Loss, effective_number_weights, require, upcast
from harness.registry import Registry

DRW_BETA = 0.9999
"""Cao et al. 2019: β of the deferred class-balanced weights."""
DRW_FRAC = 0.8
"""Cao et al. 2019: re-weighting starts at epoch 160 of 200."""
HEAD_ATTRIBUTES = ("head", "projection", "head_init", "sigmoid")
"""What a `<loss>_drw` takes over from its base loss for the model it trains (harness.losses.Loss)."""


class DeferredReweighting(Loss):
    """Deferred re-weighting (Cao et al., NeurIPS 2019) around the loss `base`."""

    base: ClassVar[type[Loss]]

    def __init__(self, class_counts, drw_frac: float = DRW_FRAC, drw_epoch: int | None = None,
                 drw_beta: float = DRW_BETA, **params):
        super().__init__(class_counts)
        require(0.0 <= drw_frac <= 1.0, f"drw_frac must be in [0, 1], got {drw_frac}")
        require(drw_epoch is None or (int(drw_epoch) == drw_epoch and drw_epoch >= 0),
                f"drw_epoch must be a non-negative integer, got {drw_epoch}")
        self.drw_frac = float(drw_frac)
        self.drw_epoch = None if drw_epoch is None else int(drw_epoch)
        self.inner = self.base(class_counts, **params)
        self.register_buffer("weight", effective_number_weights(self.class_counts, drw_beta),
                             persistent=False)
        self.active = False  # set by set_epoch

    def start_epoch(self, epochs: int) -> int:
        """The first re-weighted epoch (0-based) of a run of `epochs` epochs."""
        return self.drw_epoch if self.drw_epoch is not None else round(self.drw_frac * epochs)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.set_epoch(epoch, epochs)
        self.active = epoch >= self.start_epoch(epochs)

    def per_sample(self, logits, target, features=None):
        return self.inner.per_sample(logits, target, features)

    def forward(self, logits, target, features=None):
        if not self.active:
            return self.inner(logits, target, features)
        losses = self.inner.per_sample(upcast(logits), target, features)
        w = self.weight.to(losses)[target]
        return (w * losses).sum() / w.sum()

    def adjust_logits(self, logits):
        return self.inner.adjust_logits(logits)


def drw_variant(base: type[Loss]) -> type[DeferredReweighting]:
    """A DeferredReweighting subclass around `base` whose signature is base's plus drw_*."""
    own = inspect.signature(DeferredReweighting.__init__).parameters
    extra = [p.replace(kind=p.KEYWORD_ONLY) for n, p in own.items() if n.startswith("drw_")]
    base_sig = inspect.signature(base)
    clash = set(base_sig.parameters) & {p.name for p in extra}
    assert not clash, f"{base.__name__} has parameters {clash} that DRW uses"
    name = f"{base.__name__}DRW"
    first_line = (base.__doc__ or base.__name__).strip().splitlines()[0]
    return type(name, (DeferredReweighting,), {
        "base": base,
        **{attribute: getattr(base, attribute) for attribute in HEAD_ATTRIBUTES},
        "__signature__": base_sig.replace(parameters=[*base_sig.parameters.values(), *extra]),
        "__doc__": f"Deferred re-weighting (Cao et al., NeurIPS 2019) of: {first_line}",
        "__module__": __name__,
        "__qualname__": name,
    })


def register_drw_variants(registry: Registry) -> None:
    """Register `<name>_drw` for every registered loss that computes per-sample losses."""
    for name in registry.names():
        base = registry.get(name)
        if getattr(base, "drw_compatible", False) and not issubclass(base, DeferredReweighting):
            variant = drw_variant(base)
            setattr(sys.modules[__name__], variant.__name__, variant)  # so pickle finds it
            registry.register(f"{name}_drw")(variant)
