"""FFCV files: written once per dataset split, read by every imbalance profile of a grid.

Images are stored as raw uint8 pixels (small images) or JPEG (large ones); labels as ints.
Writing goes to a temporary name that is renamed into place, so a killed conversion never
leaves a .beton that looks finished. Reading a whole file (`read_beton`) needs only numpy
and torchvision, so the memory loader runs where FFCV is not installed.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image_field = (RGBImageField(write_mode="raw", max_resolution=max_resolution)
                   if jpeg_quality is None else
                   RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality, max_resolution=max_resolution))
    try:
        with keep_torch_threads():
            writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()},
                                   num_workers=num_workers)
            writer.from_indexed_dataset(_Arrays(images, labels), chunksize=256)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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


def check_beton(path: str | Path) -> None:
    """Raise ConfigError with one line if `path` is missing or not a readable .beton."""
    _header(Path(path))


def beton_length(path: str | Path) -> int:
    return int(_header(Path(path))["num_samples"])


def _metadata(path: Path, header: np.void) -> np.ndarray:
    offset = HEADER.itemsize + len(FIELDS) * FIELD.itemsize
    return np.fromfile(path, dtype=METADATA, count=int(header["num_samples"]), offset=offset)


def beton_labels(path: str | Path) -> np.ndarray:
    """The labels of every sample, in file order (int64 [N]), without reading the images."""
    path = Path(path)
    return _metadata(path, _header(path))["label"].astype(np.int64)


def beton_image_size(path: str | Path) -> int | None:
    """The side of the images of a .beton when all are one square size, else None."""
    path = Path(path)
    image = _metadata(path, _header(path))["image"]
    sides = np.unique(np.concatenate([image["height"], image["width"]]))
    return int(sides[0]) if len(sides) == 1 else None


def read_beton(path: str | Path, indices: np.ndarray | None = None):
    """Samples of a .beton as (uint8 images [N,3,H,W], int64 labels [N]) torch tensors.

    `indices` selects samples (default: all, in file order). Needs numpy and torchvision only.
    """
    import torch
    path = Path(path)
    header = _header(path)
    meta = _metadata(path, header)
    if indices is not None:
        meta = meta[np.asarray(indices, dtype=np.int64)]
    labels = torch.from_numpy(meta["label"].astype(np.int64))
    if len(meta) == 0:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), labels
    image = meta["image"]
    h, w = int(image["height"][0]), int(image["width"][0])
    if (image["height"] != h).any() or (image["width"] != w).any():
        raise ConfigError(f"{path}: images of different sizes; convert again with one --resolution")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    ptrs = image["data_ptr"].astype(np.int64)
    if (image["mode"] == RAW).all():
        out = np.empty((len(meta), h, w, 3), dtype=np.uint8)
        flat = out.reshape(len(meta), -1)
        for i, p in enumerate(ptrs):
            flat[i] = data[p:p + h * w * 3]
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels
    return _decode_jpegs(path, data, ptrs, header), labels


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
