"""FFCV files: written once per dataset split, read by every imbalance profile of a grid.

Images are stored as raw uint8 pixels (small images) or JPEG (large ones); labels as ints.
Writing goes to a temporary name that is renamed into place, so a killed conversion never
leaves a .beton that looks finished. Reading (`Beton`) needs only numpy and torchvision, so
the memory loader runs where FFCV is not installed.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from harness.files import atomic_path
from harness.registry import ConfigError

# The .beton layout (ffcv/types.py, format version 2): a header, one descriptor per field,
# one metadata row per sample, the data pages, and an allocation table at the end.
VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                   ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
METADATA = np.dtype([("image", IMAGE_META), ("label", "<i8")], align=True)
FIELDS = [(2, "image"), (1, "label")]  # (FFCV type id, name): RGBImageField, IntField
JPEG, RAW = 0, 1


class _Arrays:
    """The indexed-dataset view FFCV's writer reads: (HWC uint8 image, int label)."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int]):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


@contextmanager
def keep_torch_threads():
    """Undo FFCV's habit of setting torch's thread count to its worker count."""
    import torch
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_beton(path: str | Path, images: Sequence[np.ndarray], labels: Sequence[int], *,
                jpeg_quality: int | None = None, max_resolution: int | None = None,
                num_workers: int = 1) -> Path:
    """Write images (HWC uint8) and labels to `path` atomically.

    jpeg_quality None writes raw pixels; a number writes JPEG at that quality.
    """
    with keep_torch_threads():  # importing FFCV sets them
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    path = Path(path)
    image_field = (RGBImageField(write_mode="raw", max_resolution=max_resolution)
                   if jpeg_quality is None else
                   RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality, max_resolution=max_resolution))
    with atomic_path(path) as tmp, keep_torch_threads():
        writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()}, num_workers=num_workers)
        writer.from_indexed_dataset(_Arrays(images, labels), chunksize=256)
    return path


class Beton:
    """One .beton file of the harness (image and label fields): its header and per-sample
    metadata are read and checked once, when it is opened.

        beton = Beton("data/cifar10/train.beton")     # ConfigError if missing, foreign or cut short
        beton.labels, beton.image_size, len(beton)
        images, labels = beton.read(indices)         # uint8 [N,3,H,W], int64 [N]
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header = _header(self.path)
        offset = HEADER.itemsize + len(FIELDS) * FIELD.itemsize
        self.metadata = np.fromfile(self.path, dtype=METADATA, count=len(self), offset=offset)

    def __len__(self) -> int:
        return int(self.header["num_samples"])

    @property
    def labels(self) -> np.ndarray:
        """The label of every sample, in file order (int64 [N]), without reading the images."""
        return self.metadata["label"].astype(np.int64)

    @property
    def image_size(self) -> int | None:
        """The side of the images when all are one square size, else None."""
        image = self.metadata["image"]
        sides = np.unique(np.concatenate([image["height"], image["width"]]))
        return int(sides[0]) if len(sides) == 1 else None

    def read(self, indices: np.ndarray | None = None):
        """Samples as (uint8 images [N,3,H,W], int64 labels [N]) torch tensors; `indices` selects
        them (default: all, in file order). Needs numpy and torchvision only, not FFCV."""
        import torch
        meta = self.metadata if indices is None else self.metadata[np.asarray(indices, dtype=np.int64)]
        labels = torch.from_numpy(meta["label"].astype(np.int64))
        if len(meta) == 0:
            return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), labels
        image = meta["image"]
        h, w = int(image["height"][0]), int(image["width"][0])
        if (image["height"] != h).any() or (image["width"] != w).any():
            raise ConfigError(f"{self.path}: images of different sizes; convert again with one --resolution")
        data = np.memmap(self.path, dtype=np.uint8, mode="r")
        ptrs = image["data_ptr"].astype(np.int64)
        if (image["mode"] == RAW).all():
            out = np.empty((len(meta), h, w, 3), dtype=np.uint8)
            flat = out.reshape(len(meta), -1)
            for i, p in enumerate(ptrs):
                flat[i] = data[p:p + h * w * 3]
            return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels
        return _decode_jpegs(self.path, data, ptrs, self.header), labels


def _header(path: Path) -> np.void:
    """The header of a harness .beton (image + label fields); ConfigError if it is not one."""
    redo = "delete it and run tools/prepare_data.py again"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; run tools/prepare_data.py for this dataset")
    size = path.stat().st_size
    if size < HEADER.itemsize + len(FIELDS) * FIELD.itemsize:
        raise ConfigError(f"{path}: not a readable .beton (only {size} bytes); {redo}")
    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    fields = np.fromfile(path, dtype=FIELD, count=len(FIELDS), offset=HEADER.itemsize)
    found = [(int(f["type_id"]), bytes(f["name"]).rstrip(b"\0").decode("ascii", "replace")) for f in fields]
    if int(header["version"]) != VERSION or int(header["num_fields"]) != len(FIELDS) or found != FIELDS:
        raise ConfigError(f"{path}: not a harness .beton (version {int(header['version'])}, "
                          f"fields {found}); {redo}")
    end = HEADER.itemsize + len(FIELDS) * FIELD.itemsize + int(header["num_samples"]) * METADATA.itemsize
    if int(header["alloc_table_ptr"]) < end or int(header["alloc_table_ptr"]) > size:
        raise ConfigError(f"{path}: truncated .beton ({size} bytes); {redo}")
    return header


def _decode_jpegs(path: Path, data: np.memmap, ptrs: np.ndarray, header: np.void):
    """Decode JPEG samples at `ptrs`; their sizes come from the allocation table."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    table = np.fromfile(path, dtype=ALLOC, offset=int(header["alloc_table_ptr"]))
    size_at = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    blobs = [torch.from_numpy(np.array(data[p:p + size_at[p]])) for p in ptrs.tolist()]
    images = []
    for start in range(0, len(blobs), 1024):
        images += decode_jpeg(blobs[start:start + 1024], mode=ImageReadMode.RGB)
    return torch.stack(images)
