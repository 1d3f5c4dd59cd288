"""The `synthetic` augmentation: generated tail images mixed into the long-tailed training set.

    aug: {name: standard+synthetic, params: {synthetic: {path: data/generated/<job>, max_share: 0.5}}}

A generator output folder (tools/generate_tail.py) holds synthetic.beton (its images in
(class, index) order), synthetic_labels.npy and synthetic.json (class names, images per
class, image size). Training reads one FFCV file that holds the real training split
followed by every synthetic image (built once per generator output and real split, cached
in the generator's folder); the long-tailed real indices plus the chosen synthetic ones
select from it, so the memory and the FFCV loaders train on the same set.

max_share caps the synthetic share of each class: class c with n_c real images gets
s_c = min(generated_c, floor(max_share / (1 - max_share) * n_c)), the largest s with
s <= max_share * (n_c + s); max_share = 1 takes every generated image, 0 none. The first
s_c images by index are taken, so a smaller cap picks a subset of a larger one.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from harness.data.augment import AUGMENTATIONS, Batch
from harness.data.conversion import file_lock
from harness.registry import ConfigError

BETON, LABELS, INFO = "synthetic.beton", "synthetic_labels.npy", "synthetic.json"


@AUGMENTATIONS.register("synthetic")
class Synthetic:
    """Generated images added to the training set (by build_data); batches pass through unchanged."""

    def __init__(self, path: str = "", max_share: float = 0.5):
        if not isinstance(path, str) or not path:
            raise ConfigError("aug.params.synthetic.path: give the generator's output folder "
                              "(the out_dir of tools/generate_tail.py)")
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 <= max_share <= 1:
            raise ConfigError(f"aug.params.synthetic.max_share: must be a number in [0, 1], got {max_share!r}")
        self.path, self.max_share = Path(path), float(max_share)

    def __call__(self, batch: Batch, g) -> Batch:
        return batch


def synthetic_take(generated: list[int], real: list[int], max_share: float) -> list[int]:
    """Synthetic images per class: all generated ones, capped at a max_share of the class's images."""
    if max_share >= 1:
        return [int(g) for g in generated]
    caps = [math.floor(max_share * n / (1 - max_share) + 1e-9) for n in real]
    return [min(int(g), cap) for g, cap in zip(generated, caps)]


def read_info(gen_dir: str | Path) -> dict:
    """synthetic.json of a packed generator output folder, or a one-line ConfigError."""
    path = Path(gen_dir) / INFO
    if not path.is_file():
        raise ConfigError(f"aug.params.synthetic.path: {gen_dir} has no {INFO}; run tools/generate_tail.py "
                          f"for it until it finishes (it packs the images at the end)")
    return json.loads(path.read_text())


def mixed_beton(train_path: str | Path, gen_dir: str | Path) -> Path:
    """<gen_dir>/train+synthetic-<key>.beton: the real split then every synthetic image (built once)."""
    from harness.data.ffcv_io import read_beton, write_beton

    train_path, gen_dir = Path(train_path), Path(gen_dir)
    stat = train_path.stat()
    key = f"{train_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{read_info(gen_dir)['manifest_sha256']}"
    path = gen_dir / f"train+synthetic-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}.beton"
    if path.is_file():
        return path
    with file_lock(gen_dir / ".mix.lock"):
        if not path.is_file():
            real_x, real_y = read_beton(train_path)
            syn_x, syn_y = read_beton(gen_dir / BETON)
            images = np.concatenate([real_x.permute(0, 2, 3, 1).numpy(), syn_x.permute(0, 2, 3, 1).numpy()])
            write_beton(path, images, np.concatenate([real_y.numpy(), syn_y.numpy()]))
    return path


def mix_synthetic(aug, card, train_path: Path, indices: np.ndarray,
                  counts: list[int]) -> tuple[Path, np.ndarray, list[int] | None]:
    """(training file, indices into it, synthetic images per class or None) for an AugConfig."""
    from harness.data.ffcv_io import beton_length

    if "synthetic" not in [p.strip() for p in aug.name.split("+")]:
        return train_path, indices, None
    part = AUGMENTATIONS.build("synthetic", aug.params.get("synthetic", {}))
    info = read_info(part.path)
    if info["class_names"] != list(card.classes):
        raise ConfigError(f"aug.params.synthetic.path: {part.path} was generated for other classes than "
                          f"dataset '{card.name}'; generate for this dataset")
    if info["images"] and info["size"] != [card.resolution, card.resolution]:
        raise ConfigError(f"aug.params.synthetic.path: {part.path} holds {info['size'][0]}x{info['size'][1]} images, "
                          f"dataset '{card.name}' is {card.resolution}x{card.resolution}; "
                          f"generate with out_size: {card.resolution}")
    take = synthetic_take(info["counts"], counts, part.max_share)
    if not sum(take):
        return train_path, indices, take
    starts = np.cumsum([0] + info["counts"][:-1])
    chosen = np.concatenate([start + np.arange(n) for start, n in zip(starts, take)])
    mixed = np.concatenate([indices, beton_length(train_path) + chosen]).astype(np.int64)
    return mixed_beton(train_path, part.path), mixed, take
