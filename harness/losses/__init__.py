"""The loss zoo: one interface (harness.losses.base.Loss), one registry, every loss checked
against its paper. Importing this package registers every loss; the `<name>_drw` variants come
last because they wrap what is registered by then.

Registered names: ce, focal (softmax), sigmoid_focal (Cui et al.'s), cb_softmax, cb_softmax_bce, cb_focal,
cb_sigmoid, ldam, balanced_softmax, logit_adjust, logit_adjust_posthoc, supcon, bcl, paco, gpaco (contrastive),
sphereface, arcface, cosface, ride, sade (multi-expert), and the DRW variants ce_drw, focal_drw,
sigmoid_focal_drw, ldam_drw, balanced_softmax_drw, logit_adjust_drw, sphereface_drw, arcface_drw, cosface_drw.
"""
from harness.losses import bcl, classic, experts, margin, paco, prior, supcon  # noqa: F401  (they register)
from harness.losses.base import LOSSES, Head, Loss, effective_number_weights, log_prior
from harness.losses.drw import DeferredReweighting, register_drw_variants

register_drw_variants(LOSSES)

__all__ = ["LOSSES", "Loss", "Head", "DeferredReweighting", "effective_number_weights", "log_prior"]
