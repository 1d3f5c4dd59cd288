"""The loaders: disjoint per-epoch rank shares (memory and FFCV), whole-set evaluation, and
build_data end to end. Ranks are plain loaders built for rank 0..W-1, no processes needed."""
import numpy as np
import pytest
import torch

from harness.config import RunConfig, from_dict
from harness.data import augment as A
from harness.data import build_data, load_card
from harness.data.augment import build_augmentation
from harness.data.beton import write_beton
from harness.data.fakes import write_folders
from harness.data.ffcv_loader import FFCVTrainLoader
from harness.data.imbalance import long_tail
from harness.data.loaders import MemoryLoader, epoch_order
from harness.registry import ConfigError
from support import prepare_main


def lt_indices(n_per_class=30, classes=5, factor=10.0):
    labels = np.repeat(np.arange(classes), n_per_class)
    return long_tail(labels, classes, "exp", factor).indices


def collect(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_memory_loader_shares_are_disjoint_per_epoch_and_cover_the_set(world):
    ids = torch.from_numpy(lt_indices())  # the label of each sample is its index in the file
    n, batch = len(ids), 4
    images = ids.view(-1, 1, 1, 1).expand(n, 3, 2, 2).to(torch.uint8)
    orders = {}
    for epoch in (0, 1):
        shares = []
        for rank in range(world):
            loader = MemoryLoader(images, ids, batch, shuffle=True, seed=7, rank=rank, world=world, drop_last=True)
            batches = collect(loader, epoch)
            assert len(batches) == len(loader) == (n // world) // batch
            assert all(torch.equal(x[:, 0, 0, 0], y.to(torch.uint8)) for x, y in batches)
            shares.append(ids[loader.indices()].tolist())
        flat = sum(shares, [])
        assert len(set(flat)) == len(flat) == n - n % world  # disjoint, all but the remainder
        assert {len(s) for s in shares} == {n // world}
        orders[epoch] = shares
        again = MemoryLoader(images, ids, batch, shuffle=True, seed=7, rank=1, world=world, drop_last=True)
        again.set_epoch(epoch)
        assert ids[again.indices()].tolist() == shares[1]  # per-epoch deterministic
    assert orders[0] != orders[1]


def test_evaluation_covers_every_image_exactly_once_over_the_ranks():
    labels = torch.arange(203)
    images = torch.zeros(203, 3, 2, 2, dtype=torch.uint8)
    seen = []
    for rank in range(3):
        loader = MemoryLoader(images, labels, 16, shuffle=False, rank=rank, world=3)
        got = torch.cat([y for _, y in loader])
        assert len(loader) == -(-len(got) // 16)
        seen += got.tolist()
    assert sorted(seen) == list(range(203))


@pytest.fixture(scope="module")
def id_beton(tmp_path_factory):
    """A .beton whose label is each sample's index, with distinct pixels per sample."""
    n = 90
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
    return write_beton(tmp_path_factory.mktemp("ids") / "ids.beton", images, np.arange(n))


def test_ffcv_shares_are_disjoint_and_read_what_the_memory_loader_reads(id_beton):
    indices = lt_indices(n_per_class=18)  # long-tailed: 18, 10, 5, 3, 1 of 5 classes ... into 0..89
    world, batch, seed = 2, 4, 3
    threads = torch.get_num_threads()
    share = len(indices) // world
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            ffcv = FFCVTrainLoader(id_beton, indices, batch, seed=seed, num_workers=1, rank=rank, world=world)
            got = torch.cat([y for _, y in collect(ffcv, epoch)]).tolist()
            assert len(ffcv) == share // batch and len(got) == share // batch * batch
            assert got == epoch_order(indices, seed, epoch, rank, world)[: len(got)].tolist()
            memory = MemoryLoader(torch.zeros(len(indices), 3, 1, 1), torch.from_numpy(indices), batch,
                                  shuffle=True, seed=seed, rank=rank, world=world, drop_last=True)
            assert torch.cat([y for _, y in collect(memory, epoch)]).tolist() == got
            seen += got
        assert len(set(seen)) == len(seen) and set(seen) <= set(indices.tolist())
    assert torch.get_num_threads() == threads  # FFCV sets them to its worker count; the loader undoes it
    one = FFCVTrainLoader(id_beton, indices, batch * world, seed=seed, num_workers=1)
    whole = [y.tolist() for _, y in collect(one, 1)]
    ranks = [epoch_order(indices, seed, 1, rank, world) for rank in range(world)]
    for i, global_batch in enumerate(whole):  # one rank's batch = the union of W ranks' batches
        assert sorted(global_batch) == sorted(sum((r[i * batch:(i + 1) * batch].tolist() for r in ranks), []))


def config(card, root, **data):
    return from_dict(RunConfig, {"seed": 1, "data": {"dataset": str(card), "root": str(root), "num_workers": 1,
                                                     "imbalance_factor": 10, **data},
                                 "optim": {"batch_size": 32}})


def test_both_loaders_give_the_trainer_the_same_batches(tmp_path, tiny_card):
    memory = build_data(config(tiny_card, tmp_path, loader="memory"), torch.device("cpu"))
    ffcv = build_data(config(tiny_card, tmp_path, loader="ffcv"), torch.device("cpu"))
    assert memory.counts == ffcv.counts == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    assert len(memory.train) == len(ffcv.train) == 240 // 32
    for epoch in (0, 1):
        a, b = collect(memory.train, epoch), collect(ffcv.train, epoch)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == torch.uint8 and xa.shape == (32, 3, 32, 32) and ya.dtype == torch.int64
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in memory.test) == 200 and memory.eval_split == "test" and memory.val is None
    batch = memory.augment(a[0][0], a[0][1], torch.Generator().manual_seed(0))
    assert batch.x.shape == (32, 3, 32, 32) and batch.x.dtype == torch.uint8


def test_ranks_of_build_data_split_the_long_tailed_set(tmp_path, tiny_card):
    seen = []
    for rank in (0, 1):
        data = build_data(config(tiny_card, tmp_path, loader="memory"), torch.device("cpu"), rank, 2)
        assert data.train.batch_size == 16 and len(data.train) == 120 // 16
        data.train.set_epoch(3)
        seen.append(set(data.train.indices().tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 240


def test_the_validation_split_is_carved_from_train(tmp_path, tiny_card):
    data = build_data(config(tiny_card, tmp_path, loader="memory", val="split", val_fraction=0.2),
                      torch.device("cpu"))
    assert data.eval_split == "split" and data.counts[0] == 48
    assert torch.bincount(data.val.labels).tolist() == [12] * 10
    with pytest.raises(ConfigError, match="has no val split .*set data.val to split or test"):
        build_data(config(tiny_card, tmp_path, loader="memory", val="val"), torch.device("cpu"))


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset 'cifar10' is not prepared .*tools/prepare_data.py "
                                          r".*cifar10.yaml --root <source folder>"):
        build_data(from_dict(RunConfig, {"data": {"dataset": "cifar10", "root": str(tmp_path)}}),
                   torch.device("cpu"))


def test_the_ffcv_decoder_crop_is_a_random_resized_crop_and_flip_that_repeats(tmp_path):
    """Columns and rows numbered in the pixels: every output row runs monotonically over a span
    of the source, mirrored for about half the images; the same seed and epoch repeat exactly."""
    n = 200
    ramp = np.zeros((n, 84, 84, 3), np.uint8)
    ramp[..., 0] = np.arange(84) * 3  # column index
    ramp[..., 1] = (np.arange(84) * 3)[:, None]  # row index
    path = write_beton(tmp_path / "ramp.beton", ramp, np.zeros(n, dtype=np.int64))
    standard = build_augmentation("standard").split_decoder_crop(84)[0]

    def epoch(seed, e):
        loader = FFCVTrainLoader(path, np.arange(n), 50, seed=seed, num_workers=2, crop=standard, crop_size=84)
        return torch.cat([x for x, _ in collect(loader, e)])

    x = epoch(0, 0)
    assert x.shape == (n, 3, 84, 84) and torch.equal(x, epoch(0, 0))
    assert not torch.equal(x, epoch(0, 1)) and not torch.equal(x, epoch(1, 0))
    cols, rows = x[:, 0].int(), x[:, 1].int()
    rising = (cols[:, :, 1:] >= cols[:, :, :-1]).flatten(1).all(1)
    falling = (cols[:, :, 1:] <= cols[:, :, :-1]).flatten(1).all(1)
    assert (rising | falling).all() and (rows[:, 1:] >= rows[:, :-1]).all()  # rows are never mirrored
    assert 0.3 < falling.float().mean() < 0.7
    span = (cols.amax((1, 2)) - cols.amin((1, 2))).float()
    assert span.min() < 0.5 * 249 and span.max() > 0.9 * 249  # boxes of many sizes


def test_on_large_images_the_ffcv_loader_crops_and_the_trainer_does_the_rest(tmp_path):
    mini = load_card("mini_imagenet")
    write_folders(tmp_path / "miniImageNet", mini.classes, {"train": 3, "test": 1}, size=84, ext=".jpg")
    assert prepare_main()(["mini_imagenet", "--root", str(tmp_path), "--out", str(tmp_path)]) == 0
    cfg = config("mini_imagenet", tmp_path, loader="ffcv", imbalance="none")
    cfg.aug.name = "standard+cutout"
    data = build_data(cfg, torch.device("cpu"))
    assert [type(p) for p in data.batch_augment.parts] == [A.Cutout]
    assert [type(p) for p in data.augment.parts] == [A.Standard, A.Cutout]  # what the samples show
    x = collect(data.train, 0)[0][0]
    assert x.shape == (32, 3, 84, 84) and torch.equal(x, collect(build_data(cfg, torch.device("cpu")).train, 0)[0][0])
    cfg.data.loader = "memory"
    assert [type(p) for p in build_data(cfg, torch.device("cpu")).batch_augment.parts] == [A.Standard, A.Cutout]
