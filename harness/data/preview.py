"""A PNG grid of augmented samples, so a person can look at what an augmentation does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.augment import build_augmentation


def pick(labels: np.ndarray, rows: int) -> np.ndarray:
    """The first image of `rows` classes spread over all classes."""
    classes = np.unique(labels)
    chosen = classes[np.linspace(0, len(classes) - 1, min(rows, len(classes))).round().astype(int)]
    return np.array([np.flatnonzero(labels == c)[0] for c in chosen])


def preview_grid(images: torch.Tensor, labels: torch.Tensor, aug: str, path: str | Path,
                 params: dict | None = None, columns: int = 8, seed: int = 0) -> Path:
    """Write a grid: one row per image, the original first, then `columns - 1` augmented copies."""
    from PIL import Image
    augment = build_augmentation(aug, params)
    rows, _, h, w = images.shape
    copies = images.repeat_interleave(columns - 1, 0)
    out = augment(copies, labels.repeat_interleave(columns - 1, 0), torch.Generator().manual_seed(seed)).x
    grid = torch.cat([images[:, None], out.view(rows, columns - 1, 3, h, w)], 1)  # [rows, cols, 3, h, w]
    scale = max(1, 96 // h)
    grid = grid.repeat_interleave(scale, 3).repeat_interleave(scale, 4)
    grid = torch.nn.functional.pad(grid, (2, 2, 2, 2), value=255)  # white gaps between tiles
    hh, ww = grid.shape[-2:]
    canvas = grid.permute(0, 3, 1, 4, 2).reshape(rows * hh, columns * ww, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.numpy()).save(path)
    return path


def samples(card, source_root: str | Path | None, prepared_root: str | Path, rows: int = 8):
    """`rows` training images of different classes, from the source or else the prepared files."""
    if source_root is not None:
        from harness.data.readers import open_source
        source = open_source(card, source_root)
        idx = pick(source.labels("train"), rows)
        images = torch.from_numpy(source.images("train", card.resolution, indices=idx)).permute(0, 3, 1, 2)
        return images.contiguous(), torch.from_numpy(source.labels("train")[idx])
    from harness.data.beton import Beton
    from harness.data.conversion import data_dir, verify
    verify(card, prepared_root)
    train = Beton(data_dir(card, prepared_root) / "train.beton")
    return train.read(pick(train.labels, rows))
