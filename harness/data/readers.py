"""Readers for the source layouts a dataset card lists: CIFAR python pickles and image folders.

    open_source(card, root) -> Source      # the first of the card's layouts found under root
    source.splits                           # ['train', 'test'] or ['train', 'val', 'test']
    source.labels('train')                  # int64 [N], cheap for folders (no decoding)
    source.images('train', resolution)      # uint8 [N, R, R, 3], in the order of the labels
                                            # (indices=...: only those)
    source.fingerprint()                    # a hash of every input file's bytes

Bad input (a missing root, a wrong layout, a truncated pickle, an unreadable image, classes
that do not match the card) raises ConfigError with one line naming the file and the fix.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness.registry import ConfigError, Registry

READERS: Registry = Registry("source layout")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
SPLITS = ("train", "val", "test")


def fit(image, resolution: int) -> np.ndarray:
    """A PIL image as uint8 [R, R, 3]: RGB, shorter side resized to R, centre-cropped."""
    from PIL import Image
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8)


def hash_files(root: Path, files: list[Path]) -> str:
    """sha256 over the files' paths (relative to root) and bytes."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Source:
    """A dataset on disk in one layout; subclasses read the splits."""
    kind = ""
    keys: tuple = ()
    """What the card's layout entry must give."""

    def __init__(self, folder: Path, spec: dict, card):
        self.folder, self.spec, self.card = folder, spec, card

    @property
    def splits(self) -> list[str]:
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        raise NotImplementedError

    def images(self, split: str, resolution: int, workers: int = 4, progress: bool = False,
               indices: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} at {self.folder}"


# ---------------------------------------------------------------------------------------
# CIFAR python pickles: cifar-10-batches-py/ and cifar-100-python/, as the archives unpack

class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays, and refuses anything else (no code runs)."""
    ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self.ALLOWED) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def load_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (the files have str or bytes keys)."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing; unpack the official archive again")
    try:
        with open(path, "rb") as f:
            raw = _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:  # pickle raises many kinds on a damaged file
        raise ConfigError(f"{path}: truncated or not a CIFAR pickle ({type(e).__name__}: {e}); "
                          f"unpack the official archive again") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a {type(raw).__name__}, not a CIFAR batch dict; "
                          f"unpack the official archive again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@READERS.register("cifar_pickle")
class CifarPickles(Source):
    """The official CIFAR python archive unpacked: train and test batch files, a meta file."""
    kind = "cifar_pickle"
    keys = ("folder", "train", "test", "meta", "labels", "names")

    @staticmethod
    def locate(root: Path, spec: dict) -> Path | None:
        for folder in (root / spec["folder"], root):
            if all((folder / name).is_file() for name in spec["train"]):
                return folder
        return None

    @staticmethod
    def expected(spec: dict) -> str:
        return f"{spec['folder']}/ with {', '.join(spec['train'] + spec['test'])}"

    def __init__(self, folder: Path, spec: dict, card):
        super().__init__(folder, spec, card)
        self._cache: dict = {}
        self._check_names()

    @property
    def splits(self) -> list[str]:
        return ["train", "test"]

    def _files(self) -> list[Path]:
        names = self.spec["train"] + self.spec["test"] + [self.spec["meta"]]
        return [self.folder / n for n in names if (self.folder / n).is_file()]

    def _check_names(self) -> None:
        """The meta file's class names must be the card's."""
        path = self.folder / self.spec["meta"]
        if not path.is_file():
            return
        names = [_text(n) for n in load_pickle(path).get(self.spec["names"], [])]
        if names and len(names) != self.card.num_classes:
            raise ConfigError(f"{path}: {len(names)} classes, card {self.card.path} says "
                              f"{self.card.num_classes}; use the card of this dataset")
        if names and names != list(self.card.classes):
            raise ConfigError(f"{path}: class names {names[:3]}... differ from card {self.card.path} "
                              f"({self.card.classes[:3]}...); use the card of this dataset")

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images [N, S, S, 3], int64 labels [N]) of all batch files of a split."""
        if split not in self._cache:
            parts = [self._batch(self.folder / name) for name in self.spec[split]]
            self._cache[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return self._cache[split]

    def _batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = load_pickle(path)
        key = self.spec["labels"]
        if "data" not in raw or key not in raw:
            raise ConfigError(f"{path}: no '{'data' if 'data' not in raw else key}' entry (keys: "
                              f"{', '.join(sorted(raw))}); is this the right dataset's archive?")
        data = np.asarray(raw["data"], dtype=np.uint8)
        labels = np.asarray(raw[key], dtype=np.int64)
        side = int(round((data.shape[-1] / 3) ** 0.5)) if data.ndim == 2 else 0
        if data.ndim != 2 or 3 * side * side != data.shape[1] or len(labels) != len(data):
            raise ConfigError(f"{path}: data {data.shape} and {len(labels)} labels are not N rows of "
                              f"3xSxS pixels; unpack the official archive again")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.card.num_classes):
            raise ConfigError(f"{path}: label {labels.max()} outside the card's {self.card.num_classes} "
                              f"classes; use the card of this dataset")
        return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), labels

    def labels(self, split: str) -> np.ndarray:
        return self._split(split)[1]

    def images(self, split: str, resolution: int, workers: int = 4, progress: bool = False,
               indices: np.ndarray | None = None) -> np.ndarray:
        images = self._split(split)[0]
        images = images if indices is None else images[indices]
        if images.shape[1] == resolution:
            return images
        from PIL import Image
        return np.stack([fit(Image.fromarray(im), resolution) for im in images])

    def fingerprint(self) -> str:
        return hash_files(self.folder, self._files())


# ---------------------------------------------------------------------------------------
# image folders: <NAME>/{train,val,test}/<class>/<image>, png or jpg, any size

@READERS.register("image_folder")
class ImageFolders(Source):
    """One folder per split, one folder per class inside, images of any size inside those."""
    kind = "image_folder"
    keys = ("folders",)

    @staticmethod
    def locate(root: Path, spec: dict) -> Path | None:
        for folder in [root / f for f in spec["folders"]] + [root]:
            if (folder / "train").is_dir():
                return folder
        return None

    @staticmethod
    def expected(spec: dict) -> str:
        return f"{spec['folders'][0]}/{{train,val,test}}/<class>/<image>"

    def __init__(self, folder: Path, spec: dict, card):
        super().__init__(folder, spec, card)
        for name in card.classes:
            class_folder(name, card.path)
        if not (folder / "test").is_dir():
            raise ConfigError(f"{folder}: has train/ but no test/; the layout is "
                              f"{self.expected(spec)} (val/ is optional)")
        self.class_of = self._class_index(folder / "train")
        self.files = {s: self._list(folder / s) for s in SPLITS if (folder / s).is_dir()}

    def _class_index(self, train: Path) -> dict[str, int]:
        """Class folder name -> class index: the card's class names, or 0..C-1."""
        names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        card = self.card
        if len(names) != card.num_classes:
            raise ConfigError(f"{train}: {len(names)} class folders, card {card.path} says "
                              f"{card.num_classes}; use the card of this dataset")
        if set(names) == set(card.classes):
            return {n: card.classes.index(n) for n in names}
        if set(names) == {str(i) for i in range(card.num_classes)}:
            return {n: int(n) for n in names}
        unknown = sorted(set(names) - set(card.classes))
        raise ConfigError(f"{train}: class folders {', '.join(unknown[:3])} are not classes of card "
                          f"{card.path}; name the folders as the card's classes (or 0..{card.num_classes - 1})")

    def _list(self, split_dir: Path) -> list[tuple[Path, int]]:
        """(image path, label) for every image of a split, class by class, sorted by name."""
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if found != sorted(self.class_of):
            missing = sorted(set(self.class_of) - set(found)) or sorted(set(found) - set(self.class_of))
            raise ConfigError(f"{split_dir}: class folders differ from train/ ({', '.join(missing[:3])}); "
                              f"every split needs the same class folders")
        out = []
        for name in sorted(self.class_of, key=self.class_of.get):
            images = sorted(p for p in (split_dir / name).iterdir()
                            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not images and split_dir.name == "train":
                raise ConfigError(f"{split_dir / name}: no images (png/jpg); every class needs training images")
            out += [(p, self.class_of[name]) for p in images]
        return out

    @property
    def splits(self) -> list[str]:
        return list(self.files)

    def labels(self, split: str) -> np.ndarray:
        return np.array([label for _, label in self.files[split]], dtype=np.int64)

    def images(self, split: str, resolution: int, workers: int = 4, progress: bool = False,
               indices: np.ndarray | None = None) -> np.ndarray:
        from tqdm import tqdm
        paths = [p for p, _ in self.files[split]]
        paths = paths if indices is None else [paths[i] for i in indices]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            done = pool.map(lambda p: read_image(p, resolution), paths)
            images = list(tqdm(done, total=len(paths), desc=f"read {split}", unit="img", disable=not progress))
        return np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)

    def fingerprint(self) -> str:
        return hash_files(self.folder, [p for files in self.files.values() for p, _ in files])


def class_folder(name, card_path: str = "") -> str:
    """A class name as the folder it is read from (or written to, harness.data.fakes): any text,
    spaces and unicode included, but not '', '.', '..', a slash, NUL or another control
    character, so a class folder is always one folder inside its split."""
    text = str(name)
    if text in ("", ".", "..") or "/" in text or "\\" in text or any(ord(c) < 32 for c in text):
        raise ConfigError(f"{card_path or 'card'}: class name {text!r} cannot be a folder name; rename the class")
    return text


def read_image(path: Path, resolution: int) -> np.ndarray:
    """One image file as uint8 [R, R, 3]; ConfigError naming the file if it cannot be read."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            return fit(image, resolution)
    except Exception as e:  # PIL raises many kinds on a damaged file
        raise ConfigError(f"{path}: unreadable image ({type(e).__name__}: {e}); "
                          f"delete or replace it, then run tools/prepare_data.py again") from None


# ---------------------------------------------------------------------------------------

def open_source(card, root: str | Path) -> Source:
    """The first of the card's layouts found at `root` (or in the folder it names)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder; pass --root the folder that holds "
                          f"{_expected(card)}")
    for spec in card.layouts:
        reader = _reader(card, spec)
        folder = reader.locate(root, spec)
        if folder is not None:
            return reader(folder, spec, card)
    raise ConfigError(f"{root}: no {card.name} source found; expected {_expected(card)}")


def _reader(card, spec: dict) -> type[Source]:
    """The reader of one of the card's layouts, after checking the entry gives what it needs."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"{card.path}: each layout needs a kind ({', '.join(READERS.names())})")
    reader = READERS.get(spec["kind"])
    missing = [k for k in reader.keys if k not in spec]
    if missing:
        raise ConfigError(f"{card.path}: layout {spec['kind']} needs {', '.join(missing)}")
    return reader


def _expected(card) -> str:
    if not card.layouts:
        return f"a layout, but card {card.path} lists none"
    return " or ".join(_reader(card, s).expected(s) for s in card.layouts)
