"""What the trainer reads from the data side, built from a run's config.

    data = build_data(cfg, device, rank, world)

Check (or generate) the prepared dataset, take the imbalance profile's long-tailed subset (a
list of indices), add generated tail images if the config names them, and build the training
loader (memory or FFCV, with the sampler of the stage), the balanced test set and the
validation set on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.augment import build_augmentation
from harness.data.beton import Beton
from harness.data.cards import Card, load_card
from harness.data.conversion import prepare
from harness.data.generated import Generated, mix_generated
from harness.data.imbalance import long_tail
from harness.data.loaders import MemoryLoader
from harness.data.sampling import with_sampler
from harness.dist import barrier
from harness.metrics import shot_group
from harness.registry import ConfigError

EVAL_BATCH = 512


@dataclass
class Data:
    """Everything the trainer needs from the data side."""
    card: Card
    train: object
    """Training batches: set_epoch(e), len(), yields (uint8 NCHW, int64) on the device."""
    test: MemoryLoader
    """The balanced test set; over all ranks every image exactly once."""
    counts: list
    """Training images per class after the imbalance profile."""
    indices: np.ndarray
    """The training set as indices into its file: the long-tailed subset of train.beton (and the
    generated images, with data.generated)."""
    augment: object
    """(x uint8, y, generator) -> Batch: the grid's augmentation."""
    batch_augment: object
    """What the trainer applies to training batches: `augment`, less the random-resized-crop
    that the FFCV loader does while decoding large images."""
    mean: torch.Tensor
    std: torch.Tensor
    """Per-channel normalisation on the 0..255 scale, shaped [1, 3, 1, 1]."""
    eval_split: str
    """Where models are selected: test (the LDAM-DRW protocol), val (the source's) or split (carved from train)."""
    val: MemoryLoader | None = None
    """The validation set when eval_split is not test."""
    generated: Generated | None = None
    """The generated tail images in the training set (data.generated), else None."""
    train_file: Beton | None = None
    """The file `indices` index (a second stage that reads the training images once: ldmlr)."""
    features: bool = False
    """Training batches are feature vectors (float [B, D]) a second stage prepared, not images:
    batch_augment passes them through and the trainer does not normalise them."""
    generated_features: list | None = None
    """Features generated per class and added to the training batches (ldmlr), else None."""

    @property
    def groups(self) -> list[str]:
        return [shot_group(c) for c in self.counts]

    def sample_source(self):
        """Where sample images for TensorBoard come from: the training set when it is in memory."""
        return self.train if hasattr(self.train, "images") and not self.features else self.test


def build_data(cfg, device, rank: int = 0, world: int = 1) -> Data:
    """Check (or generate) the prepared dataset, pick the long-tailed subset, build the loaders."""
    d = cfg.data
    card = load_card(d.dataset)
    if rank == 0:  # generates the synthetic dataset when missing; the other ranks wait for it
        prepare(card, d.root)
    barrier()
    folder = prepare(card, d.root)
    real = Beton(folder / "train.beton")
    split = long_tail(real.labels, card.num_classes, d.imbalance, d.imbalance_factor, d.imbalance_params,
                      d.val_fraction if d.val == "split" else 0.0)
    train_file, indices, generated = mix_generated(d, card, real, split.indices, split.counts)
    per_rank = cfg.optim.batch_size // world
    augment = batch_augment = build_augmentation(cfg.aug.name, cfg.aug.params)
    if d.loader == "memory":
        x, y = train_file.read(indices)
        train = MemoryLoader(x.to(device), y.to(device), per_rank, shuffle=True, seed=cfg.seed,
                             rank=rank, world=world, drop_last=True)
    else:
        from harness.data.ffcv_loader import FFCVTrainLoader
        size = train_file.image_size
        crop, batch_augment = augment.split_decoder_crop(size) if size else (None, augment)
        train = FFCVTrainLoader(train_file.path, indices, per_rank, seed=cfg.seed, num_workers=d.num_workers,
                                rank=rank, world=world, device=device, crop=crop, crop_size=size)
    train = with_sampler(train, cfg, train_file.labels[indices])  # class-aware epochs (cRT)
    test = eval_loader(Beton(folder / "test.beton"), None, device, rank, world)
    val = val_loader(d.val, folder, real, split, device, rank, world)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) * 255 for v in (card.mean, card.std))
    return Data(card=card, train=train, test=test, counts=split.counts, indices=indices,
                augment=augment, batch_augment=batch_augment, mean=mean, std=std,
                eval_split=d.val, val=val, generated=generated, train_file=train_file)


def eval_loader(beton: Beton, indices, device, rank: int, world: int) -> MemoryLoader:
    """A whole split (or the given indices of it) on the device, shared out over the ranks."""
    x, y = beton.read(indices)
    return MemoryLoader(x.to(device), y.to(device), EVAL_BATCH, shuffle=False, rank=rank, world=world)


def val_loader(val: str, folder: Path, train: Beton, split, device, rank: int, world: int) -> MemoryLoader | None:
    """The model-selection set: none (test is used), the source's val split, or one carved from train."""
    if val == "split":
        return eval_loader(train, split.val, device, rank, world)
    if val == "val":
        if not (folder / "val.beton").is_file():
            raise ConfigError(f"{folder}: this dataset has no val split (its source has no val/); "
                              f"set data.val to split or test")
        return eval_loader(Beton(folder / "val.beton"), None, device, rank, world)
    return None
