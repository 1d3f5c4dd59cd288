"""FFCV's Loader over a list of indices, with each DDP rank reading a disjoint share."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import Squeeze, ToTensor, ToTorchImage
from ffcv.traversal_order import Random

from harness.data.ffcv_io import check_beton
from harness.data.loaders import epoch_order


class RankLoader(Loader):
    """FFCV's Loader whose RANDOM order is `epoch_order`: distributed=True semantics for a
    given rank and world size. FFCV's own distributed mode reads the rank from a process
    group and pads the last share with repeats; this one needs no process group and drops
    the remainder instead, so the shares are disjoint."""

    def __init__(self, *args, rank: int, world: int, **kwargs):
        self.rank, self.world = rank, world
        super().__init__(*args, **kwargs)

    def next_traversal_order(self):
        if not isinstance(self.traversal_order, Random):
            return super().next_traversal_order()
        return epoch_order(self.indices, self.seed, self.next_epoch, self.rank, self.world)


def ffcv_loader(path: str | Path, batch_size: int, *, indices: np.ndarray | None = None,
                shuffle: bool, seed: int = 0, num_workers: int = 1, drop_last: bool = False,
                rank: int = 0, world: int = 1, image_pipeline: list | None = None) -> RankLoader:
    """An FFCV Loader yielding (uint8 NCHW images, int64 labels) as CPU tensors; RANDOM
    order when shuffling (QUASI_RANDOM cannot be shared out over ranks)."""
    check_beton(path)
    image = (image_pipeline or [SimpleRGBImageDecoder()]) + [ToTensor(), ToTorchImage(channels_last=False)]
    return RankLoader(
        str(path), rank=rank, world=world, batch_size=batch_size, num_workers=num_workers,
        order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
        indices=None if indices is None else np.asarray(indices),
        drop_last=drop_last, seed=seed, os_cache=True,
        pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(-1)]},
    )
