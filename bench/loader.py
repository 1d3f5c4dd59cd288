"""Training-set images per second of four loaders, side by side in one process:

    (a) torchvision dataset + DataLoader, PIL transforms in worker processes (the baseline)
    (b) the harness's FFCV loader over a raw-pixel .beton
    (c) the harness's FFCV loader over a JPEG .beton
    (d) the harness's memory loader (the set as one uint8 tensor, no workers)

Each yields augmented uint8 batches of 128 (crop + flip: pad-4 crop at 32x32, random-resized
crop at 84x84; (a) in its workers with torchvision's PIL transforms, (b)-(d) with the
harness's `standard` augmentation as the trainer runs it: batched on the main thread, except
that at 84x84 FFCV crops and flips while decoding, in its worker threads) on the CPU, with the
same number of workers. Data:
CIFAR-10-LT-shaped (IF 100, 12,406 images, 32x32; torchvision's CIFAR10 class for (a)) and
mini-ImageNet-LT-shaped (100 classes, IF 100 from 500, 10,847 images, 84x84; ImageFolder of
JPEG files for (a)). One warm-up epoch each, then `--rounds` timed epochs taken in turn; the
best epoch counts. Prints the ratios to (a) and writes bench/results/loader.json.

    python bench/loader.py [--workers 2] [--rounds 3] [--out bench/results/loader.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Idle OpenMP threads sleep instead of spinning: FFCV's loader thread runs torch ops with its
# own thread team, and on a busy 2-core machine spinning teams starve each other (epochs of
# FFCV with 2 workers then take 10-30x longer, at random). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.data.augment import build_augmentation  # noqa: E402
from harness.data.beton import Beton, write_beton  # noqa: E402
from harness.data.fakes import fake_images  # noqa: E402
from harness.data.ffcv_loader import FFCVTrainLoader  # noqa: E402
from harness.data.imbalance import exp_counts  # noqa: E402
from harness.data.loaders import MemoryLoader  # noqa: E402
from harness.files import atomic_write_text  # noqa: E402

BATCH = 128
SHAPES = {  # name: (classes, n_max, image side)
    "cifar10_lt": (10, 5000, 32),
    "mini_imagenet_lt": (100, 500, 84),
}


def long_tailed(classes: int, n_max: int, size: int, seed: int = 0):
    """uint8 HWC images and labels with the LDAM-DRW exp profile at IF 100."""
    counts = exp_counts(n_max, classes, 100.0)
    labels = np.repeat(np.arange(classes), counts)
    return fake_images(labels, size, seed), labels


def baseline(images: np.ndarray, labels: np.ndarray, folder: Path, workers: int):
    """(a): torchvision's dataset classes and PIL transforms in DataLoader workers."""
    import torchvision
    import torchvision.transforms as T
    size = images.shape[1]
    if size <= 32:
        transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.PILToTensor()])
        dataset = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)  # its __getitem__,
        dataset.data, dataset.targets = images, labels.tolist()           # without the md5-checked download
        dataset.transform, dataset.target_transform = transform, None
    else:
        from PIL import Image
        for i, (image, label) in enumerate(zip(images, labels)):  # the same images as JPEG files
            out = folder / "images" / f"{label:03d}" / f"{i:05d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out, quality=90)
        transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
        dataset = torchvision.datasets.ImageFolder(str(folder / "images"), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=True)


class Augmented:
    """A harness loader followed by the batched `standard` augmentation (less the crop the FFCV
    loader does while decoding), as the trainer runs it."""

    def __init__(self, loader, augment):
        self.loader, self.augment = loader, augment
        self.gen, self.epoch, self.augment_s = torch.Generator().manual_seed(0), 0, 0.0

    def __iter__(self):
        self.loader.set_epoch(self.epoch)
        self.epoch, self.augment_s = self.epoch + 1, 0.0
        for x, y in self.loader:
            start = time.perf_counter()
            x = self.augment(x, y, self.gen).x
            self.augment_s += time.perf_counter() - start
            yield x, y


def contenders(name: str, folder: Path, workers: int) -> dict:
    classes, n_max, size = SHAPES[name]
    images, labels = long_tailed(classes, n_max, size)
    raw = write_beton(folder / "raw.beton", images, labels, num_workers=workers)
    jpeg = write_beton(folder / "jpeg.beton", images, labels, jpeg_quality=90, num_workers=workers)
    everything = np.arange(len(labels))
    x, y = Beton(raw).read()
    augment = build_augmentation("standard")
    crop, rest = augment.split_decoder_crop(size)  # as build_data does for the FFCV loader

    def ffcv(path):
        return Augmented(FFCVTrainLoader(path, everything, BATCH, seed=0, num_workers=workers,
                                         crop=crop, crop_size=size), rest)
    return {
        "dataloader": baseline(images, labels, folder, workers),
        "ffcv_raw": ffcv(raw),
        "ffcv_jpeg": ffcv(jpeg),
        "memory": Augmented(MemoryLoader(x, y, BATCH, shuffle=True, seed=0, drop_last=True), augment),
    }


def epoch(loader) -> tuple[int, float]:
    """Images and seconds for one pass, touching every batch as a training step would."""
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        seen += len(y)
        assert x.dtype == torch.uint8 and x.shape[0] == len(y)
    return seen, time.perf_counter() - start


def measure(name: str, workers: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        loaders = contenders(name, Path(tmp), workers)
        for loader in loaders.values():
            epoch(loader)  # warm-up: worker start, FFCV's JIT compilation, page cache
        times, augment = {k: [] for k in loaders}, {k: [] for k in loaders}
        for _ in range(rounds):
            for key, loader in loaders.items():
                seen, seconds = epoch(loader)
                times[key].append(seconds)
                augment[key].append(getattr(loader, "augment_s", 0.0))
    classes, n_max, size = SHAPES[name]
    rate = {k: seen / min(t) for k, t in times.items()}
    return {
        "images": seen, "size": size, "classes": classes,
        "images_per_s": {k: round(v, 1) for k, v in rate.items()},
        "epoch_s": {k: [round(s, 3) for s in t] for k, t in times.items()},
        "augment_share_of_best_epoch": {k: round(augment[k][int(np.argmin(t))] / min(t), 2)
                                        for k, t in times.items() if k != "dataloader"},
        "ratio_to_dataloader": {k: round(v / rate["dataloader"], 2) for k, v in rate.items()},
        "memory_over_ffcv_raw": round(rate["memory"] / rate["ffcv_raw"], 2),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes and FFCV threads")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per contender, taken in turn")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = {}
    for name in SHAPES:
        results[name] = r = measure(name, args.workers, args.rounds)
        print(f"{name}: {r['images']} images {r['size']}x{r['size']}")
        for key, rate in r["images_per_s"].items():
            print(f"  {key:<11} {rate:>9.0f} img/s   x{r['ratio_to_dataloader'][key]:.2f} of dataloader")
        print(f"  memory / ffcv_raw: x{r['memory_over_ffcv_raw']:.2f}; share of the epoch in the batched "
              f"augmentation (main thread): {r['augment_share_of_best_epoch']}")
    report = {
        "command": " ".join(["python bench/loader.py", *argv]),
        "workers": args.workers, "torch_threads": args.threads, "batch_size": BATCH, "rounds": args.rounds,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": ("CPU only; load_average_before_after says how busy the machine was (on a shared "
                 "2-core machine the numbers are noisy); images/s of the best timed epoch after one "
                 "warm-up epoch. (b)-(d) run the batched augmentation in the main thread with --threads "
                 "torch threads, except the 84x84 crop and flip of (b) and (c), which FFCV does while "
                 "decoding in its worker threads; (a) runs PIL transforms in its worker processes"),
        "targets": {"ffcv_over_dataloader": 3.0, "memory_over_ffcv": 1.0},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
