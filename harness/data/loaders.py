"""The memory loader and the epoch order every training loader follows.

A loader yields (uint8 NCHW images, int64 labels) on the device. Both training loaders
(this one and harness.data.ffcv_loader.FFCVTrainLoader) read the same samples in the same order for a given seed, epoch,
rank and world size (`epoch_order`), so switching `data.loader` changes speed, not results;
only on images larger than 32x32, where the FFCV loader random-resized-crops while decoding,
do its crops come from another random stream than the batched augmentation's.
"""
from __future__ import annotations

import numpy as np
import torch


def epoch_order(indices: np.ndarray, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """What rank `rank` reads in `epoch`, in order: torch's DistributedSampler share, i.e. every
    world-th item of one permutation per (seed, epoch) whatever the world size, so a global
    batch holds the same samples on 1 or N ranks (the remainder of n / world dropped, so the
    ranks' shares are disjoint and all as long)."""
    indices = np.asarray(indices)
    from torch.utils.data import DistributedSampler
    sampler = DistributedSampler(indices, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return indices[np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))]


class MemoryLoader:
    """The whole (long-tailed) uint8 set as one tensor on the device; batches are slices of
    this rank's share of the epoch's order. No worker processes."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """Positions in `images` that this rank reads this epoch, in order."""
        n = len(self.labels)
        if self.shuffle:
            order = epoch_order(np.arange(n), self.seed, self.epoch, self.rank, self.world)
        else:  # evaluation: every sample exactly once over the ranks
            order = np.arange(self.rank, n, self.world)
        return torch.from_numpy(order).to(self.images.device)

    def __len__(self) -> int:
        n = len(self.labels)
        share = n // self.world if self.shuffle else len(range(self.rank, n, self.world))
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __iter__(self):
        idx = self.indices()
        stop = len(self) * self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            sel = idx[start:start + self.batch_size]
            yield self.images.index_select(0, sel), self.labels.index_select(0, sel)  # 20x [sel] on CPU
