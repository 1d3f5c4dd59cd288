"""Datasets: cards, one-time FFCV conversion, long-tailed subsets and the training loaders.

    card = load_card("cifar10")                     # datasets/cifar10.yaml
    convert(card, "~/downloads", "data")            # tools/prepare_data.py: source -> .beton once
    data = build_data(cfg, device, rank, world)     # what the trainer reads
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.augment import AUGMENTATIONS, Batch, build_augmentation
from harness.data.cards import Card, load_card
from harness.data.conversion import atomic_write_text, convert, data_dir, prepare
from harness.data.ffcv_io import beton_image_size, beton_labels, read_beton
from harness.data.imbalance import PROFILES, long_tail, shot_group
from harness.data.loaders import FFCVTrainLoader, MemoryLoader
from harness.data.sampling import with_sampler
from harness.data.synthetic_mix import mix_synthetic
from harness.dist import barrier
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
    generated images, with the `synthetic` augmentation)."""
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
    synthetic_counts: list | None = None
    """Generated images per class in the training set (the `synthetic` augmentation), else None."""

    @property
    def groups(self) -> list[str]:
        return [shot_group(c) for c in self.counts]


def build_data(cfg, device, rank: int = 0, world: int = 1) -> Data:
    """Check (or generate) the prepared dataset, pick the long-tailed subset, build the loaders."""
    d = cfg.data
    card = load_card(d.dataset)
    if rank == 0:  # generates the synthetic dataset when missing; the other ranks wait for it
        prepare(card, d.root)
    barrier()
    folder = prepare(card, d.root)
    split = long_tail(beton_labels(folder / "train.beton"), card.num_classes, d.imbalance,
                      d.imbalance_factor, d.imbalance_params, d.val_fraction if d.val == "split" else 0.0)
    # the `synthetic` augmentation adds generated images: another file, more indices
    path, indices, synthetic = mix_synthetic(cfg.aug, card, folder / "train.beton", split.indices, split.counts)
    per_rank = cfg.optim.batch_size // world
    augment = batch_augment = build_augmentation(cfg.aug.name, cfg.aug.params)
    if d.loader == "memory":
        x, y = read_beton(path, indices)
        train = MemoryLoader(x.to(device), y.to(device), per_rank, shuffle=True, seed=cfg.seed,
                             rank=rank, world=world, drop_last=True)
    else:
        size = beton_image_size(path)
        crop, batch_augment = augment.split_decoder_crop(size) if size else (None, augment)
        train = FFCVTrainLoader(path, indices, per_rank, seed=cfg.seed, num_workers=d.num_workers,
                                rank=rank, world=world, device=device, crop=crop, crop_size=size)
    train = with_sampler(train, cfg, beton_labels(path)[indices])  # class-aware epochs (cRT)
    test = eval_loader(folder / "test.beton", None, device, rank, world)
    val = val_loader(d.val, folder, split, device, rank, world)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) * 255 for v in (card.mean, card.std))
    return Data(card=card, train=train, test=test, counts=split.counts, indices=indices,
                augment=augment, batch_augment=batch_augment, mean=mean, std=std,
                eval_split=d.val, val=val, synthetic_counts=synthetic)


def eval_loader(path: Path, indices, device, rank: int, world: int) -> MemoryLoader:
    """A whole split (or the given indices of it) on the device, shared out over the ranks."""
    x, y = read_beton(path, indices)
    return MemoryLoader(x.to(device), y.to(device), EVAL_BATCH, shuffle=False, rank=rank, world=world)


def val_loader(val: str, folder: Path, split, device, rank: int, world: int) -> MemoryLoader | None:
    """The model-selection set: none (test is used), the source's val split, or one carved from train."""
    if val == "split":
        return eval_loader(folder / "train.beton", split.val, device, rank, world)
    if val == "val":
        if not (folder / "val.beton").is_file():
            raise ConfigError(f"{folder}: this dataset has no val split (its source has no val/); "
                              f"set data.val to split or test")
        return eval_loader(folder / "val.beton", None, device, rank, world)
    return None


__all__ = ["AUGMENTATIONS", "Batch", "Card", "Data", "MemoryLoader", "PROFILES",
           "atomic_write_text", "build_data", "convert", "data_dir", "load_card", "prepare"]
