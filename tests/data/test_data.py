"""Readers of every source layout, conversion to .beton files, and every kind of bad input."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.data import convert, load_card
from harness.data.beton import ALLOC, HEADER, Beton
from harness.data.conversion import data_dir, verify
from harness.data.fakes import write_cifar, write_folders
from harness.data.readers import open_source
from harness.registry import ConfigError
from support import ROOT, prepare_main

CIFAR10 = load_card("cifar10")
CIFAR100 = load_card("cifar100")
MINI = load_card("mini_imagenet")


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images as the rows CIFAR stores: the red plane, then green, then blue, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_batches(folder, sizes, bytes_keys, label_key="labels", names=CIFAR10.classes, seed=0):
    """Hand-written CIFAR-10 pickles with the given batch sizes; returns the images and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    all_images, all_labels = [], []
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(files, sizes):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, len(names), n)
        labels[: min(n, len(names))] = np.arange(min(n, len(names)))
        entry = {key("data"): cifar_rows(images), key(label_key): labels.tolist(), key("batch_label"): name}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        all_images.append(images)
        all_labels.append(labels)
    meta = {key("label_names"): [key(n) for n in names], key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return all_images, all_labels


# ---------------------------------------------------------------------------------------
# readers

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_pickles_are_read_whatever_their_batch_sizes_and_key_types(tmp_path, bytes_keys):
    images, labels = write_batches(tmp_path / "cifar-10-batches-py", [13, 3, 10, 1, 7, 9], bytes_keys)
    source = open_source(CIFAR10, tmp_path)
    assert source.kind == "cifar_pickle" and source.splits == ["train", "test"]
    assert np.array_equal(source.images("train", 32), np.concatenate(images[:5]))
    assert source.labels("train").tolist() == np.concatenate(labels[:5]).tolist()
    assert np.array_equal(source.images("test", 32), images[5])
    # the root may also be the archive folder itself
    assert len(open_source(CIFAR10, tmp_path / "cifar-10-batches-py").labels("train")) == 34


def test_cifar100_pickles_use_the_fine_labels(tmp_path):
    folder = write_cifar(tmp_path, 100, per_class=3, test_per_class=1, classes=CIFAR100.classes, bytes_keys=True)
    raw = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    source = open_source(CIFAR100, tmp_path)
    assert source.labels("train").tolist() == raw[b"fine_labels"]
    assert np.bincount(source.labels("train")).tolist() == [3] * 100
    assert np.array_equal(source.images("train", 32)[5].transpose(2, 0, 1).ravel(), raw[b"data"][5])


def test_image_folders_with_png_and_jpg_with_and_without_val(tmp_path):
    names = CIFAR10.classes
    write_folders(tmp_path / "CIFAR10", names, {"train": 4, "val": 2, "test": 2}, ext=[".png", ".jpg"])
    source = open_source(CIFAR10, tmp_path)
    assert source.kind == "image_folder" and source.splits == ["train", "val", "test"]
    assert source.labels("train").tolist() == np.repeat(np.arange(10), 4).tolist()
    train = source.images("train", 32)
    assert train.shape == (40, 32, 32, 3) and train.dtype == np.uint8
    from PIL import Image
    first = tmp_path / "CIFAR10" / "train" / "airplane"
    png, jpg = sorted(first.glob("*.png"))[0], sorted(first.glob("*.jpg"))[0]
    assert np.array_equal(train[0], np.asarray(Image.open(png)))  # png: exact
    assert np.abs(train[1].astype(int) - np.asarray(Image.open(jpg)).astype(int)).max() <= 1
    write_folders(tmp_path / "noval" / "CIFAR10", names, {"train": 2, "test": 1})
    assert open_source(CIFAR10, tmp_path / "noval").splits == ["train", "test"]


def test_mini_imagenet_folders_of_any_size_become_84x84(tmp_path):
    classes = MINI.classes
    write_folders(tmp_path / "miniImageNet", classes, {"train": 1, "test": 1}, size=84, ext=".jpg")
    from PIL import Image
    odd = tmp_path / "miniImageNet" / "train" / classes[3] / "big.jpg"
    Image.new("RGB", (120, 100), (200, 10, 10)).save(odd)
    source = open_source(MINI, tmp_path)
    labels = source.labels("train")
    assert len(labels) == 101 and np.bincount(labels)[3] == 2
    images = source.images("train", 84)
    assert images.shape == (101, 84, 84, 3)
    big = images[[i for i, (p, _) in enumerate(source.files["train"]) if p.name == "big.jpg"][0]]
    assert abs(int(big[..., 0].mean()) - 200) <= 3 and int(big[..., 1].mean()) <= 15


def test_class_folders_may_be_named_by_index(tmp_path):
    write_folders(tmp_path / "CIFAR10", [str(i) for i in range(10)], {"train": 2, "test": 1})
    source = open_source(CIFAR10, tmp_path)
    assert sorted(set(source.labels("train").tolist())) == list(range(10))
    assert all(str(label) == path.parent.name for path, label in source.files["train"])


# ---------------------------------------------------------------------------------------
# conversion

def test_conversion_writes_the_splits_skips_unchanged_inputs_and_redoes_changed_ones(tmp_path, capsys):
    images, labels = write_batches(tmp_path / "src" / "cifar-10-batches-py", [12, 9, 10, 11, 8, 20], False)
    main, out = prepare_main(), tmp_path / "data"
    assert main(["datasets/cifar10.yaml", "--root", str(tmp_path / "src"), "--out", str(out)]) == 0
    folder = data_dir(CIFAR10, out)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "test.beton", "train.beton"]
    x, y = Beton(folder / "train.beton").read()
    assert torch.equal(x, torch.from_numpy(np.concatenate(images[:5])).permute(0, 3, 1, 2))
    assert y.tolist() == np.concatenate(labels[:5]).tolist() == Beton(folder / "train.beton").labels.tolist()
    assert json.loads((folder / "manifest.json").read_text())["splits"] == {"train": 50, "test": 20}
    before = (folder / "train.beton").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["cifar10", "--root", str(tmp_path / "src"), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (folder / "train.beton").stat().st_mtime_ns == before
    write_batches(tmp_path / "src" / "cifar-10-batches-py", [12, 9, 10, 11, 8, 20], False, seed=1)
    assert main(["cifar10", "--root", str(tmp_path / "src"), "--out", str(out)]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert not torch.equal(Beton(folder / "train.beton").read()[0], x)
    assert not list(out.glob(".*partial*"))


def test_jpeg_storage_for_large_images_and_the_val_split(tmp_path):
    write_folders(tmp_path / "miniImageNet", MINI.classes, {"train": 2, "val": 1, "test": 1}, size=84)
    source = open_source(MINI, tmp_path)
    folder = convert(MINI, tmp_path, tmp_path / "data", log=lambda *_: None)
    manifest = verify(MINI, tmp_path / "data")
    assert manifest["settings"] == {"storage": "jpeg", "jpeg_quality": 90, "resolution": 84}
    assert manifest["splits"] == {"train": 200, "val": 100, "test": 100}
    x, y = Beton(folder / "val.beton").read()
    want = torch.from_numpy(source.images("val", 84)).permute(0, 3, 1, 2)
    assert x.shape == want.shape and y.tolist() == source.labels("val").tolist()
    error = (x.float() - want.float()).abs().mean().item()
    assert 0 < error < 4  # JPEG at quality 90: close, not equal
    header = np.fromfile(folder / "val.beton", dtype=HEADER, count=1)[0]
    stored = np.fromfile(folder / "val.beton", dtype=ALLOC, offset=int(header["alloc_table_ptr"]))["size"]
    assert len(stored) == 100 and stored.max() < 84 * 84 * 3 / 2  # compressed, sample by sample


def test_a_failed_conversion_leaves_the_previous_one_untouched(tmp_path, monkeypatch):
    write_cifar(tmp_path / "src", 10, per_class=3, test_per_class=1, classes=CIFAR10.classes)
    out = tmp_path / "data"
    convert(CIFAR10, tmp_path / "src", out, log=lambda *_: None)
    good = verify(CIFAR10, out)
    import harness.data.conversion as conv
    real_write = conv.write_beton

    def write_then_fail(path, *args, **kwargs):
        if path.name == "test.beton":
            raise KeyboardInterrupt  # as if killed while writing the second split
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(conv, "write_beton", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert(CIFAR10, tmp_path / "src", out, force=True, log=lambda *_: None)
    assert verify(CIFAR10, out) == good
    assert sorted(p.name for p in out.iterdir()) == ["cifar10"]  # no staging folder left


# ---------------------------------------------------------------------------------------
# bad input: one line naming the file and the fix, a non-zero exit, nothing written

def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_a_missing_root_fails_with_one_line_and_status_2(tmp_path):
    result = run_tool("datasets/cifar10.yaml", "--root", tmp_path / "nowhere", "--out", tmp_path / "data")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere: no such folder; pass --root" in lines[0]
    assert not (tmp_path / "data").exists()


def bad_input(tmp_path, card, match):
    """Conversion fails with a one-line ConfigError matching `match`; nothing is written."""
    main, out = prepare_main(), tmp_path / "data"
    with pytest.raises(ConfigError, match=match) as info:
        convert(card, tmp_path / "src", out, log=lambda *_: None)
    assert "\n" not in str(info.value)
    assert main([card.path, "--root", str(tmp_path / "src"), "--out", str(out)]) == 2
    assert not (out / card.name).exists() and not list(out.glob(".*partial*"))


def test_a_wrong_layout_says_what_was_expected(tmp_path):
    (tmp_path / "src" / "cifar10_images").mkdir(parents=True)
    bad_input(tmp_path, CIFAR10, r"src: no cifar10 source found; expected cifar-10-batches-py/ with "
                                 r"data_batch_1.*or CIFAR10/\{train,val,test\}/<class>/<image>")


def test_a_folder_layout_without_test_is_named(tmp_path):
    write_folders(tmp_path / "src" / "CIFAR10", CIFAR10.classes, {"train": 1})
    bad_input(tmp_path, CIFAR10, "CIFAR10: has train/ but no test/")


def test_a_truncated_pickle_is_named(tmp_path):
    folder = write_cifar(tmp_path / "src", 10, per_class=4, test_per_class=1, classes=CIFAR10.classes)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    bad_input(tmp_path, CIFAR10, r"data_batch_3: truncated or not a CIFAR pickle .*unpack the official archive again")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path / "src", 10, per_class=4, test_per_class=1, classes=CIFAR10.classes)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": os.system}))
    bad_input(tmp_path, CIFAR10, r"data_batch_2: truncated or not a CIFAR pickle "
                                 r"\(UnpicklingError: refusing posix.system\)")


def test_an_unreadable_image_is_named(tmp_path):
    write_folders(tmp_path / "src" / "CIFAR10", CIFAR10.classes, {"train": 2, "test": 1})
    broken = tmp_path / "src" / "CIFAR10" / "train" / "cat" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    bad_input(tmp_path, CIFAR10, r"cat/broken.png: unreadable image .*delete or replace it")


def test_class_count_mismatches_with_the_card_are_named(tmp_path):
    write_folders(tmp_path / "src" / "CIFAR10", CIFAR10.classes[:9], {"train": 1, "test": 1})
    bad_input(tmp_path, CIFAR10, r"CIFAR10/train: 9 class folders, card .*cifar10.yaml says 10")
    write_cifar(tmp_path / "src2", 100, per_class=1, test_per_class=1)
    (tmp_path / "src2" / "cifar-100-python").rename(tmp_path / "src2" / "cifar-10-batches-py")
    with pytest.raises(ConfigError, match=r"no cifar10 source found"):
        open_source(CIFAR10, tmp_path / "src2")
    write_batches(tmp_path / "src3" / "cifar-10-batches-py", [5] * 6, False, names=CIFAR100.classes[:12])
    with pytest.raises(ConfigError, match=r"batches.meta: 12 classes, card .*cifar10.yaml says 10"):
        open_source(CIFAR10, tmp_path / "src3")


def test_a_beton_written_from_other_inputs_is_refused(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        write_cifar(tmp_path / name, 10, per_class=3, test_per_class=1, classes=CIFAR10.classes, seed=seed)
        convert(CIFAR10, tmp_path / name, tmp_path / f"data_{name}", log=lambda *_: None)
    target = tmp_path / "data_a" / "cifar10" / "train.beton"
    target.write_bytes((tmp_path / "data_b" / "cifar10" / "train.beton").read_bytes())
    with pytest.raises(ConfigError, match=r"train.beton: not the file .*manifest.json describes \(written from "
                                          r"other inputs\); run python tools/prepare_data.py"):
        verify(CIFAR10, tmp_path / "data_a")
    with pytest.raises(ConfigError, match=r"cifar10: dataset 'cifar10' is not prepared"):
        verify(CIFAR10, tmp_path / "data_c")


def test_a_damaged_beton_is_named(tmp_path):
    write_cifar(tmp_path / "src", 10, per_class=2, test_per_class=1, classes=CIFAR10.classes)
    folder = convert(CIFAR10, tmp_path / "src", tmp_path / "data", log=lambda *_: None)
    blob = (folder / "train.beton").read_bytes()
    (tmp_path / "cut.beton").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ConfigError, match=r"cut.beton: truncated .beton .*run tools/prepare_data.py again"):
        Beton(tmp_path / "cut.beton").read()
    (tmp_path / "junk.beton").write_bytes(b"junk" * 1000)
    with pytest.raises(ConfigError, match=r"junk.beton: not a harness .beton"):
        Beton(tmp_path / "junk.beton").labels
