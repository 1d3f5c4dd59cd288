"""Stand-ins for real datasets, written in the real on-disk formats (tests and benchmarks).

    write_cifar(folder, 10, per_class=5000)                # cifar-10-batches-py/ pickles
    write_cifar(folder, 100, per_class=500, bytes_keys=True)
    write_folders(folder / "miniImageNet", classes, {"train": 50, "test": 10}, size=84)

The images are the procedural shapes of harness.data.synthetic (one shape per class modulo
10), resized to the size asked for, so a preview of them is worth looking at (below 16x16:
noise).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from harness.data.readers import class_folder
from harness.data.synthetic import make_images

CIFAR = {  # (folder, train files, test files, meta file, label key, names key)
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
         "labels", "label_names"),
    100: ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def fake_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: class shapes (label mod 10) drawn at 32x32, then resized;
    below 16x16 just noise (for counting tests with many images)."""
    if size < 16:
        return np.random.default_rng(seed).integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    images = make_images(np.asarray(labels) % 10, seed)
    if size == 32:
        return images
    import torch
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=size < 32)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def _dump(path: Path, entries: dict, bytes_keys: bool) -> None:
    if bytes_keys:
        entries = {k.encode(): v for k, v in entries.items()}
    path.write_bytes(pickle.dumps(entries, protocol=2))


def write_cifar(folder: str | Path, num_classes: int, per_class: int, test_per_class: int = 10,
                size: int = 32, bytes_keys: bool = False, classes: list | None = None, seed: int = 0) -> Path:
    """The official CIFAR python layout: batch pickles with 'data' rows of 3*size*size bytes
    (channel planes, row-major), labels, and the meta file with the class names."""
    name, train_files, test_files, meta, label_key, names_key = CIFAR[num_classes]
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for files, n, split_seed in ((train_files, per_class, seed), (test_files, test_per_class, seed + 1)):
        labels = rng.permutation(np.repeat(np.arange(num_classes), n))
        images = fake_images(labels, size, split_seed)
        rows = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
        for i, part in enumerate(np.array_split(np.arange(len(labels)), len(files))):
            entry = {"batch_label": f"batch {i + 1}", "data": rows[part],
                     label_key: labels[part].tolist(), "filenames": [f"img_{j}.png" for j in part]}
            if num_classes == 100:
                entry["coarse_labels"] = (labels[part] // 5).tolist()
            _dump(out / files[i], entry, bytes_keys)
    names = classes or [f"class_{c}" for c in range(num_classes)]
    _dump(out / meta, {names_key: [n.encode() if bytes_keys else n for n in names]}, bytes_keys)
    return out


def write_folders(folder: str | Path, classes: list, per_split: dict, size: int = 32,
                  ext: str = ".png", seed: int = 0) -> Path:
    """<folder>/<split>/<class>/<i><ext> for per_split = {'train': n, 'val': n, 'test': n};
    ext may be a list, used in turn."""
    from PIL import Image
    folder = Path(folder)
    exts = [ext] if isinstance(ext, str) else list(ext)
    for s, (split, n) in enumerate(per_split.items()):
        labels = np.repeat(np.arange(len(classes)), n)
        for i, (image, label) in enumerate(zip(fake_images(labels, size, seed + s), labels)):
            path = folder / split / class_folder(classes[label]) / f"{i:06d}{exts[i % len(exts)]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=95)  # quality: JPEG only
    return folder
