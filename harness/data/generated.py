"""Generated tail images (tools/generate_tail.py) added to a long-tailed training set.

    data: {generated: data/generated/<job>, generated_max_share: 0.5}

(Older grids say `aug: {name: standard+synthetic, params: {synthetic: {path, max_share}}}`;
the config moves that to these keys.) A generator output folder holds generated.beton (its
images in (class, index) order), generated_labels.npy and generated.json (class names, images
per class, image size): harness.generate.pack writes them, this module reads them. Training
reads one FFCV file that holds the real training split followed by every generated image
(built once per generator output and real split, cached in the generator's folder); the
long-tailed real indices plus the chosen generated ones select from it, so the memory and the
FFCV loaders train on the same set.

generated_max_share caps the generated share of each class: class c with n_c real images gets
s_c = min(generated_c, floor(max_share / (1 - max_share) * n_c)), the largest s with
s <= max_share * (n_c + s); max_share = 1 takes every generated image, 0 none. The first s_c
images by index are taken, so a smaller cap picks a subset of a larger one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.beton import Beton, write_beton
from harness.files import file_lock
from harness.registry import ConfigError

BETON, LABELS, INFO = "generated.beton", "generated_labels.npy", "generated.json"
"""The files of a packed generator output folder."""


@dataclass
class Generated:
    """The generated images a run trains on."""
    path: Path
    """The generator's output folder."""
    counts: list
    """Generated images taken per class."""
    available: list
    """Generated images in the folder per class."""

    def samples(self, n: int):
        """Up to n of the images taken, in turn from each class that got some (uint8 NCHW, labels)."""
        starts = np.cumsum([0] + self.available[:-1])
        in_turn = (int(starts[c] + i) for i in range(max(self.counts, default=0))
                   for c, take in enumerate(self.counts) if i < take)
        return Beton(self.path / BETON).read(np.fromiter(itertools.islice(in_turn, n), dtype=np.int64))


def generated_take(generated: list[int], real: list[int], max_share: float) -> list[int]:
    """Generated images per class: all of them, capped at a max_share of the class's images."""
    if max_share >= 1:
        return [int(g) for g in generated]
    caps = [math.floor(max_share * n / (1 - max_share) + 1e-9) for n in real]
    return [min(int(g), cap) for g, cap in zip(generated, caps)]


def read_info(gen_dir: str | Path) -> dict:
    """generated.json of a packed generator output folder, or a one-line ConfigError."""
    path = Path(gen_dir) / INFO
    if not path.is_file():
        raise ConfigError(f"data.generated: {gen_dir} has no {INFO}; run tools/generate_tail.py "
                          f"for it until it finishes (it packs the images at the end)")
    return json.loads(path.read_text())


def check_generated(gen_dir: str | Path, card) -> dict:
    """The folder's generated.json, after checking it was generated for this dataset."""
    info = read_info(gen_dir)
    if info["class_names"] != list(card.classes):
        raise ConfigError(f"data.generated: {gen_dir} was generated for other classes than "
                          f"dataset '{card.name}'; generate for this dataset")
    if info["images"] and info["size"] != [card.resolution, card.resolution]:
        raise ConfigError(f"data.generated: {gen_dir} holds {info['size'][0]}x{info['size'][1]} images, "
                          f"dataset '{card.name}' is {card.resolution}x{card.resolution}; "
                          f"generate with out_size: {card.resolution}")
    return info


def mixed_beton(train: Beton, gen_dir: str | Path) -> Path:
    """<gen_dir>/train+generated-<key>.beton: the real split then every generated image (built once)."""
    gen_dir = Path(gen_dir)
    stat = train.path.stat()
    key = f"{train.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{read_info(gen_dir)['manifest_sha256']}"
    path = gen_dir / f"train+generated-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}.beton"
    if path.is_file():
        return path
    with file_lock(gen_dir / ".mix.lock"):
        if not path.is_file():
            real_x, real_y = train.read()
            gen_x, gen_y = Beton(gen_dir / BETON).read()
            images = np.concatenate([real_x.permute(0, 2, 3, 1).numpy(), gen_x.permute(0, 2, 3, 1).numpy()])
            write_beton(path, images, np.concatenate([real_y.numpy(), gen_y.numpy()]))
    return path


def mix_generated(data_cfg, card, train: Beton, indices: np.ndarray,
                  counts: list[int]) -> tuple[Beton, np.ndarray, Generated | None]:
    """(training file, indices into it, the generated images taken or None) for a DataConfig."""
    if not data_cfg.generated:
        return train, indices, None
    info = check_generated(data_cfg.generated, card)
    generated = Generated(Path(data_cfg.generated),
                          generated_take(info["counts"], counts, data_cfg.generated_max_share), info["counts"])
    if not sum(generated.counts):
        return train, indices, generated
    starts = np.cumsum([0] + info["counts"][:-1])
    chosen = np.concatenate([start + np.arange(n) for start, n in zip(starts, generated.counts)])
    mixed = np.concatenate([indices, len(train) + chosen]).astype(np.int64)
    return Beton(mixed_beton(train, generated.path)), mixed, generated
