"""Class-aware sampling: which training images an epoch visits (Kang et al., ICLR 2020).

Class j is visited with probability p_j ∝ n_j^q: q = 1 is instance-balanced (every image once,
the loaders' plain permutation), q = 0 class-balanced (cRT), q = 1/2 square-root. An epoch
keeps its length n = Σ n_j: class j gets n·p_j draws (largest remainders round), taken by
cycling through reshuffled lists of its images, as Kang et al.'s ClassAwareSampler does.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.data.loaders import MemoryLoader, epoch_order

SAMPLERS = {"instance": 1.0, "sqrt": 0.5, "class": 0.0}
"""The power q of each sampler's class weights n_j^q."""


def sampler_name(stage) -> str:
    """The sampler a run trains with: stage.sampler, where 'auto' is class-balanced for cRT only."""
    if stage.sampler != "auto":
        return stage.sampler
    return "class" if stage.kind == "crt" else "instance"


def class_draws(counts: np.ndarray, q: float) -> np.ndarray:
    """Draws per class in an epoch of Σ counts images, proportional to counts^q."""
    n = int(counts.sum())
    weights = np.where(counts > 0, counts.astype(np.float64) ** q, 0.0)
    share = n * weights / weights.sum()
    draws = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - draws), kind="stable")[: n - draws.sum()]
    draws[extra] += 1
    return draws


def draw_epoch(labels: np.ndarray, q: float, seed: int, epoch: int) -> np.ndarray:
    """Positions into `labels` for one epoch (with repeats where q < 1), grouped by class;
    the loaders shuffle them. The same on every rank for a given seed and epoch."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch, 0x5A])
    counts = np.bincount(labels)
    picks = []
    for c, m in enumerate(class_draws(counts, q)):
        members = np.flatnonzero(labels == c)
        if m:
            cycles = -(-m // len(members))
            picks.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:m])
    return np.concatenate(picks)


class SampledMemoryLoader(MemoryLoader):
    """A MemoryLoader whose epochs are class-aware draws instead of permutations."""

    def __init__(self, base: MemoryLoader, q: float):
        super().__init__(base.images, base.labels, base.batch_size, shuffle=True, seed=base.seed,
                         rank=base.rank, world=base.world, drop_last=base.drop_last)
        self.q, self.labels_np = q, base.labels.cpu().numpy()

    def indices(self) -> torch.Tensor:
        drawn = draw_epoch(self.labels_np, self.q, self.seed, self.epoch)
        order = epoch_order(drawn, self.seed, self.epoch, self.rank, self.world)
        return torch.from_numpy(order).to(self.images.device)


class SampledFFCVLoader:
    """An FFCVTrainLoader whose epochs are class-aware draws: each epoch's draw replaces the
    loader's indices in place (as many, so its length stays), and FFCV shuffles them."""

    def __init__(self, base, labels: np.ndarray, q: float, seed: int):
        self.base, self.labels, self.q, self.seed = base, np.asarray(labels), q, seed
        self.subset = base.loader.indices.copy()

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)
        self.base.loader.indices[:] = self.subset[draw_epoch(self.labels, self.q, self.seed, epoch)]

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        return iter(self.base)


def with_sampler(train, cfg, labels: np.ndarray):
    """The training loader `train` drawing its epochs by cfg's sampler (instance: unchanged).

    `labels`: the class of each training image, in the loader's order."""
    q = SAMPLERS[sampler_name(cfg.stage)]
    if q == 1.0:
        return train
    if isinstance(train, MemoryLoader):
        return SampledMemoryLoader(train, q)
    return SampledFFCVLoader(train, labels, q, cfg.seed)
