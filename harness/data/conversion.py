"""One-time conversion of a dataset into <root>/<name>/{train,val,test}.beton, with a manifest.

The manifest records the card, a hash of the inputs (source files and conversion settings)
and, per written file, its size, mtime and sha256. Conversion skips work whose inputs are
unchanged, stages everything in a temporary folder and swaps it in with the manifest last,
so a killed conversion leaves nothing that looks finished. Before training, `verify`
refuses a .beton that is not the one the manifest describes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.data.beton import write_beton
from harness.data.cards import Card
from harness.data.readers import open_source
from harness.files import atomic_write_text, file_lock
from harness.registry import ConfigError

MANIFEST = "manifest.json"


@dataclass
class Settings:
    """How a source becomes .beton files."""
    storage: str
    jpeg_quality: int
    resolution: int


def data_dir(card: Card, root: str | Path) -> Path:
    return Path(root) / card.name


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def card_key(card: Card) -> str:
    """What a prepared folder must agree with: the dataset and its classes."""
    return _sha(json.dumps([card.name, card.num_classes, list(card.classes)]))


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def prepared(card: Card, root: str | Path, inputs: str) -> bool:
    """True when the manifest matches this card and these inputs and its files are there."""
    manifest = read_manifest(data_dir(card, root))
    return (manifest is not None and manifest.get("card") == card_key(card) and manifest.get("inputs") == inputs
            and all((data_dir(card, root) / f).is_file() for f in manifest.get("files", {})))


def verify(card: Card, root: str | Path) -> dict:
    """The manifest of a prepared dataset, after checking each .beton is the one it describes."""
    folder = data_dir(card, root)
    redo = f"run python tools/prepare_data.py {card.path} --root <source folder> --out {root}"
    manifest = read_manifest(folder)
    if manifest is None:
        raise ConfigError(f"{folder}: dataset '{card.name}' is not prepared (no {MANIFEST}); {redo}")
    if manifest.get("card") != card_key(card):
        raise ConfigError(f"{folder}: prepared for other classes than card {card.path}; {redo}")
    for name, want in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing; {redo}")
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (want["size"], want["mtime_ns"]):
            continue
        if stat.st_size != want["size"] or file_sha(path) != want["sha256"]:
            raise ConfigError(f"{path}: not the file {folder / MANIFEST} describes (written from other "
                              f"inputs); {redo}")
    return manifest


def write_splits(card: Card, root: str | Path, splits: dict, inputs: str, settings: Settings,
                 describe: str = "", workers: int = 1) -> Path:
    """Write each split's (images HWC, labels) to <root>/<name>/<split>.beton, then the manifest."""
    folder = data_dir(card, root)
    stage = Path(root) / f".{card.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        files = {}
        for split, (images, labels) in splits.items():
            path = write_beton(stage / f"{split}.beton", images, labels, num_workers=workers,
                               jpeg_quality=settings.jpeg_quality if settings.storage == "jpeg" else None)
            files[path.name] = path
        folder.mkdir(parents=True, exist_ok=True)
        old = read_manifest(folder) or {}
        (folder / MANIFEST).unlink(missing_ok=True)
        for name, path in files.items():
            os.replace(path, folder / name)
        for name in set(old.get("files", {})) - set(files):
            (folder / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = {
        "dataset": card.name, "card": card_key(card), "inputs": inputs, "source": describe,
        "settings": asdict(settings), "splits": {s: int(len(lab)) for s, (_, lab) in splits.items()},
        "files": {name: _file_entry(folder / name) for name in files},
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return folder


def _file_entry(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha(path)}


def prepare(card: Card, root: str | Path) -> Path:
    """The prepared folder of a dataset: checked, or generated here for generated datasets."""
    folder = data_dir(card, root)
    if card.source.get("kind") == "synthetic":
        settings = Settings("raw", card.jpeg_quality, card.resolution)
        inputs = _sha(json.dumps([card.source, asdict(settings)], sort_keys=True))
        with file_lock(Path(root) / f".{card.name}.lock"):  # ranks and jobs may start together
            if not prepared(card, root, inputs):
                from harness.data.synthetic import make_split
                seed = int(card.source.get("seed", 0))
                splits = {"train": make_split(card.source["train_per_class"], seed),
                          "test": make_split(card.source["test_per_class"], seed + 1)}
                write_splits(card, root, splits, inputs, settings, "generated (harness.data.synthetic)")
    verify(card, root)
    return folder


def convert(card: Card, source_root: str | Path, out_root: str | Path, *, storage: str | None = None,
            jpeg_quality: int | None = None, resolution: int | None = None, workers: int = 2,
            force: bool = False, log=print) -> Path:
    """Read the source in one of the card's layouts and write the .beton files, unless the
    prepared folder already comes from the same inputs."""
    source = open_source(card, source_root)
    settings = Settings(storage or card.storage, jpeg_quality or card.jpeg_quality, resolution or card.resolution)
    if settings.storage not in ("raw", "jpeg"):
        raise ConfigError(f"storage must be raw or jpeg, got {settings.storage!r}")
    log(f"{card.name}: reading {source.describe()}")
    inputs = _sha(json.dumps([source.fingerprint(), asdict(settings)], sort_keys=True))
    folder = data_dir(card, out_root)
    if not force and prepared(card, out_root, inputs):
        log(f"{card.name}: {folder} is up to date (inputs {inputs}); nothing to do")
        return folder
    splits = {}
    for split in source.splits:
        labels = source.labels(split)
        if split == "train":
            check_train_labels(card, labels, source.describe())
        splits[split] = (source.images(split, settings.resolution, workers, progress=True), labels)
    log(f"{card.name}: writing {', '.join(f'{s} ({len(l)})' for s, (_, l) in splits.items())} "
        f"as {settings.storage} {settings.resolution}x{settings.resolution}")
    write_splits(card, out_root, splits, inputs, settings, source.describe(), workers)
    log(f"{card.name}: wrote {folder}")
    return folder


def check_train_labels(card: Card, labels: np.ndarray, where: str) -> None:
    """Every class of the card must have training images."""
    counts = np.bincount(labels, minlength=card.num_classes)
    empty = [card.classes[c] for c in np.flatnonzero(counts == 0)]
    if empty or len(counts) != card.num_classes:
        raise ConfigError(f"{where}: training labels cover {int((counts > 0).sum())} classes, card "
                          f"{card.path} says {card.num_classes} (none of {', '.join(empty[:3])}); "
                          f"use the card of this dataset")



def parse_imbalance(text: str) -> tuple[str, float, dict]:
    """'exp:100' -> ('exp', 100.0, {}); 'step:10:mu=0.3' -> ('step', 10.0, {'mu': 0.3}); 'none'."""
    import yaml

    from harness.data.imbalance import PROFILES
    profile, *rest = text.split(":")
    try:
        factor = float(rest[0]) if rest else 1.0
        params = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in rest[1:])}
    except ValueError:
        raise ConfigError(f"--imbalance {text!r}: write PROFILE[:FACTOR[:key=value...]], e.g. exp:100") from None
    PROFILES.check_params(profile, params, ("n_max", "num_classes", "factor"))
    if factor < 1:
        raise ConfigError(f"--imbalance {text!r}: the factor must be >= 1")
    return profile, factor, params


def dry_run(card: Card, source_root: str | Path, imbalance: str = "none", val_fraction: float = 0.0) -> str:
    """The per-class training counts an imbalance profile keeps from the source, as a table;
    the labels go through the same `long_tail` as training. Writes nothing."""
    from harness.data.imbalance import long_tail
    from harness.metrics import shot_group
    profile, factor, params = parse_imbalance(imbalance)
    source = open_source(card, source_root)
    labels = source.labels("train")
    check_train_labels(card, labels, source.describe())
    split = long_tail(labels, card.num_classes, profile, factor, params, val_fraction)
    sizes = ", ".join(f"{s} {len(source.labels(s))}" for s in source.splits)
    lines = [f"{card.name}: {source.describe()} ({sizes})",
             f"imbalance {imbalance}" + (f", validation split {val_fraction:g} of train ("
                                         f"{len(split.val)} images)" if split.val is not None else ""),
             f"{'class':>5}  {'name':<16} {'images':>6}  group"]
    groups = [shot_group(n) for n in split.counts]
    for c, (n, group) in enumerate(zip(split.counts, groups)):
        lines.append(f"{c:>5}  {card.classes[c]:<16} {n:>6}  {group}")
    summary = ", ".join(f"{g} {groups.count(g)}" for g in ("many", "medium", "few"))
    lines.append(f"total {len(split.indices)} training images ({summary} classes)")
    return "\n".join(lines)
