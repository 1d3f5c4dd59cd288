"""The FFCV training loader: FFCV's Loader over a list of indices, each DDP rank reading a disjoint
share, with `standard`'s random-resized-crop done while decoding large images.

Importing this module imports FFCV (which resets torch's thread count: kept here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numba import njit

from harness.data.beton import Beton, keep_torch_threads
from harness.data.loaders import epoch_order

with keep_torch_threads():  # importing FFCV sets torch's thread count to its own
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage
    from ffcv.traversal_order import Random


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


@njit(nogil=True)
def _mix(z):
    """splitmix64's finaliser: a well-spread 64-bit hash of z (uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True)
def _uniform(key, k):
    """The k-th uniform number in [0, 1) of the stream `key`."""
    return np.float64(_mix(key + np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)) * 2.0 ** -53


@njit(nogil=True)
def crop_box(key, height, width, scale, ratio):
    """(top, left, box height, box width, mirror) of one sample: the same draws as the batched
    `random_resized_crop` of harness.data.augment, from the stream `key`."""
    height, width = float(height), float(width)
    area = (_uniform(key, 0) * (scale[1] - scale[0]) + scale[0]) * height * width
    log_r = _uniform(key, 1) * (np.log(ratio[1]) - np.log(ratio[0])) + np.log(ratio[0])
    bw = min(max(np.round(np.sqrt(area * np.exp(log_r))), 1.0), width)
    bh = min(max(np.round(np.sqrt(area / np.exp(log_r))), 1.0), height)
    left = np.floor(_uniform(key, 2) * (width - bw + 1))
    top = np.floor(_uniform(key, 3) * (height - bh + 1))
    return int(top), int(left), int(bh), int(bw), _uniform(key, 4) < 0.5


@njit(nogil=True)
def mirror_in_place(image):
    """Flip an HWC image left to right."""
    w = image.shape[1]
    for r in range(image.shape[0]):
        for c in range(w // 2):
            for ch in range(image.shape[2]):
                a = image[r, c, ch]
                image[r, c, ch] = image[r, w - 1 - c, ch]
                image[r, w - 1 - c, ch] = a


_COMPILED: list = []
"""The decoders' compiled ctypes calls, kept for the life of the process: numba's finaliser of a
collected one raises (printed as 'Exception ignored ... KeyError'); at exit it is skipped."""


class CropFlipDecoder(ResizedCropRGBImageDecoder):
    """The `standard` augmentation of large images (random-resized-crop and flip) done while
    decoding, in FFCV's parallel, GIL-free worker threads instead of batched on the main thread.

    FFCV's own RandomResizedCropRGBImageDecoder draws from numba's unseeded per-thread
    generators; here every draw is a hash of (seed, the sample, the first and last samples of
    its batch), so a run repeats exactly and a sample gets new draws each epoch as its batch
    changes. The draws follow the batched version's formulas; the resize is OpenCV's."""

    def __init__(self, size: int, scale: tuple, ratio: tuple, seed: int):
        super().__init__((size, size))
        self.scale, self.ratio, self.seed = np.array(scale, float), np.array(ratio, float), seed

    get_crop_generator = None  # the boxes come from crop_box

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read, my_range = self.memory_read, Compiler.get_iterator()
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        _COMPILED.append((imdecode_c, resize_crop_c))
        scale, ratio, seed = self.scale, self.ratio, np.uint64(self.seed)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            n = len(batch_indices)
            batch_key = _mix(_mix(seed ^ np.uint64(batch_indices[0])) ^ np.uint64(batch_indices[n - 1]))
            for dst_ix in my_range(n):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    image = temp_storage[dst_ix]
                    imdecode_c(image_data, image, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = image.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                top, left, bh, bw, flip = crop_box(_mix(batch_key ^ np.uint64(source_ix)), height, width, scale, ratio)
                resize_crop_c(image, top, top + bh, left, left + bw, destination[dst_ix])
                if flip:
                    mirror_in_place(destination[dst_ix])
            return destination[:n]

        decode.is_parallel = True
        return decode


def ffcv_loader(path: str | Path, batch_size: int, *, indices: np.ndarray | None = None,
                shuffle: bool, seed: int = 0, num_workers: int = 1, drop_last: bool = False,
                rank: int = 0, world: int = 1, image_pipeline: list | None = None) -> RankLoader:
    """An FFCV Loader yielding (uint8 NCHW images, int64 labels) as CPU tensors; RANDOM
    order when shuffling (QUASI_RANDOM cannot be shared out over ranks)."""
    Beton(path)  # a one-line error for a missing or broken file, before FFCV reads it
    image = (image_pipeline or [SimpleRGBImageDecoder()]) + [ToTensor(), ToTorchImage(channels_last=False)]
    return RankLoader(
        str(path), rank=rank, world=world, batch_size=batch_size, num_workers=num_workers,
        order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
        indices=None if indices is None else np.asarray(indices),
        drop_last=drop_last, seed=seed, os_cache=True,
        pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(-1)]},
    )


class FFCVTrainLoader:
    """FFCV pipelines over the imbalance indices: RANDOM order, one disjoint share per rank.
    With `crop` (a `standard` augmentation part), images of `crop_size` are random-resized-cropped
    and flipped while decoding, in FFCV's worker threads."""

    def __init__(self, path: str | Path, indices: np.ndarray, batch_size: int, *, seed: int,
                 num_workers: int, rank: int = 0, world: int = 1, device="cpu",
                 crop=None, crop_size: int | None = None):
        self.device = torch.device(device)
        pipeline = None if crop is None else [CropFlipDecoder(crop_size, crop.scale, crop.ratio, seed)]
        with keep_torch_threads():
            self.loader = ffcv_loader(path, batch_size, indices=indices, shuffle=True, seed=seed,
                                      num_workers=num_workers, drop_last=True, rank=rank, world=world,
                                      image_pipeline=pipeline)

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        pin = self.device.type == "cuda"
        with keep_torch_threads():
            batches = iter(self.loader)
        for x, y in batches:
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin).long()
