"""Imbalance profiles: a long-tailed training set is a list of indices, never a copy.

`exp` is the LDAM-DRW protocol: n_i = int(n_max * IF^(-i/(C-1))); within each class the
images are shuffled with a fixed seed (0) and the first n_i are kept; class 0 is the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.registry import Registry

PROFILES: Registry = Registry("imbalance profile")


@PROFILES.register("exp")
def exp_counts(n_max: int, num_classes: int, factor: float) -> list[int]:
    """Exponential decay from n_max (class 0) to n_max / factor (last class)."""
    if num_classes == 1:
        return [n_max]
    ratio = 1.0 / factor  # written as LDAM-DRW's code writes it, so int() truncates alike
    return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]


@PROFILES.register("step")
def step_counts(n_max: int, num_classes: int, factor: float, mu: float = 0.5) -> list[int]:
    """The last fraction `mu` of the classes keep n_max / factor images; the rest keep n_max."""
    n_tail = int(round(mu * num_classes))
    return [n_max] * (num_classes - n_tail) + [int(n_max / factor)] * n_tail


@PROFILES.register("none")
def no_counts(n_max: int, num_classes: int, factor: float = 1.0) -> list[int]:
    """Balanced: every class keeps n_max images."""
    return [n_max] * num_classes


def class_counts(profile: str, labels: np.ndarray, num_classes: int, factor: float,
                 params: dict | None = None) -> list[int]:
    """Per-class training counts that `profile` keeps from a set with these labels."""
    available = np.bincount(labels, minlength=num_classes)
    wanted = PROFILES.build(profile, params, n_max=int(available.max()),
                            num_classes=num_classes, factor=factor)
    return [min(int(w), int(a)) for w, a in zip(wanted, available)]


def subset_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices into the full set: per class, shuffle with `seed` and keep the first counts[c]."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.sort(np.concatenate(keep)).astype(np.int64)


@dataclass
class TrainSplit:
    """The long-tailed training subset and, when carved from train, the validation split."""
    indices: np.ndarray
    counts: list
    val: np.ndarray | None = None


def carve_val(labels: np.ndarray, num_classes: int, fraction: float, seed: int = 1) -> np.ndarray:
    """A balanced validation split: per class, shuffle with `seed` and take round(fraction * n_c)."""
    rng = np.random.RandomState(seed)
    held = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held.append(idx[:max(1, int(round(fraction * len(idx))))] if len(idx) > 1 else idx[:0])
    return np.sort(np.concatenate(held)).astype(np.int64)


def long_tail(labels: np.ndarray, num_classes: int, profile: str, factor: float,
              params: dict | None = None, val_fraction: float = 0.0) -> TrainSplit:
    """The training subset a profile keeps from the full training set (indices into it).

    With val_fraction > 0 a balanced validation split is held out first and the profile is
    applied to the rest; otherwise this is exactly the LDAM-DRW subset.
    """
    labels = np.asarray(labels)
    pool = np.arange(len(labels))
    val = None
    if val_fraction > 0:
        val = carve_val(labels, num_classes, val_fraction)
        pool = np.setdiff1d(pool, val)
    counts = class_counts(profile, labels[pool], num_classes, factor, params)
    return TrainSplit(pool[subset_indices(labels[pool], counts, seed=0)], counts, val)
