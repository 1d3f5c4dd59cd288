"""The long-tail protocol: the standard CIFAR-LT counts through the real readers, the exact
LDAM-DRW subset, the other profiles, the groups and the validation split."""
import numpy as np
import pytest
import torch

from harness.config import RunConfig, from_dict
from harness.data import build_data, convert, load_card
from harness.data.conversion import dry_run, parse_imbalance
from harness.data.fakes import write_cifar
from harness.data.imbalance import carve_val, class_counts, long_tail, subset_indices
from harness.data.readers import open_source
from harness.metrics import shot_group
from harness.registry import ConfigError
from support import prepare_main

CIFAR10 = load_card("cifar10")
CIFAR100 = load_card("cifar100")
STANDARD = {  # LDAM-DRW's CIFAR-LT training-set sizes at IF 10, 50, 100, 200
    10: [20431, 13996, 12406, 11203],
    100: [19573, 12608, 10847, 9502],
}


@pytest.fixture(scope="module")
def full_cifar10(tmp_path_factory):
    """Official-layout CIFAR-10 pickles with all 50,000 training labels (2x2 images, str keys)."""
    return write_cifar(tmp_path_factory.mktemp("c10"), 10, per_class=5000, size=2, classes=CIFAR10.classes).parent


def total(text: str) -> int:
    last = text.strip().splitlines()[-1]
    assert last.startswith("total "), text
    return int(last.split()[1])


def test_the_standard_cifar10_lt_counts_come_out_of_the_tool(full_cifar10, capsys):
    main = prepare_main()
    for factor, want in zip((10, 50, 100, 200), STANDARD[10]):
        assert main(["datasets/cifar10.yaml", "--root", str(full_cifar10), "--imbalance", f"exp:{factor}",
                     "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert total(text) == want, text
    assert main(["cifar10", "--root", str(full_cifar10), "--imbalance", "exp:100", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "cifar_pickle" in text and "(train 50000, test 100)" in text
    per_class = [int(line.split()[2]) for line in text.splitlines()[3:13]]
    assert per_class == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_the_standard_cifar100_lt_counts_come_out_of_bytes_key_pickles(tmp_path):
    write_cifar(tmp_path, 100, per_class=500, size=2, classes=CIFAR100.classes, bytes_keys=True)
    got = [total(dry_run(CIFAR100, tmp_path, f"exp:{f}")) for f in (10, 50, 100, 200)]
    assert got == STANDARD[100]
    text = dry_run(CIFAR100, tmp_path, "exp:100")
    assert "many 35, medium 35, few 30 classes" in text  # the LDAM-DRW paper's split of CIFAR-100-LT


@pytest.mark.slow
def test_the_standard_subset_survives_conversion_into_training(full_cifar10, tmp_path):
    """The same 12,406 images through the converted file and build_data, both loaders."""
    convert(CIFAR10, full_cifar10, tmp_path, resolution=2, log=lambda *_: None)
    want = long_tail(open_source(CIFAR10, full_cifar10).labels("train"), 10, "exp", 100.0).indices
    for loader in ("memory", "ffcv"):
        cfg = from_dict(RunConfig, {"data": {"dataset": "cifar10", "root": str(tmp_path), "loader": loader,
                                             "num_workers": 1}})
        data = build_data(cfg, torch.device("cpu"))
        assert len(data.indices) == 12406 and np.array_equal(data.indices, want)
        assert data.counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        assert len(data.train) == 12406 // 128
        assert data.groups == ["many"] * 8 + ["medium"] * 2


def ldam_drw_reference(targets: list, img_num_per_cls: list) -> np.ndarray:
    """LDAM-DRW's IMBALANCECIFAR10.gen_imbalanced_data, reduced to the indices it keeps."""
    np.random.seed(0)
    targets_np = np.array(targets, dtype=np.int64)
    keep = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        keep.append(idx[:the_img_num])
    return np.sort(np.concatenate(keep))


def ldam_drw_counts(img_max: int, cls_num: int, imb_factor: float) -> list:
    """LDAM-DRW's get_img_num_per_cls('exp', 1 / IF)."""
    return [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]


@pytest.mark.parametrize("factor", [10, 100, 200])
def test_the_subset_is_exactly_ldam_drws(factor):
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 500))
    split = long_tail(labels, 10, "exp", float(factor))
    assert split.counts == ldam_drw_counts(500, 10, 1 / factor)
    assert np.array_equal(split.indices, ldam_drw_reference(labels.tolist(), split.counts))
    assert np.array_equal(long_tail(labels, 10, "exp", float(factor)).indices, split.indices)  # deterministic


def test_step_and_none_profiles_and_the_shot_groups():
    labels = np.repeat(np.arange(10), 500)
    assert class_counts("step", labels, 10, 10.0) == [500] * 5 + [50] * 5
    assert class_counts("step", labels, 10, 100.0, {"mu": 0.2}) == [500] * 8 + [5] * 2
    assert class_counts("none", labels, 10, 1.0) == [500] * 10
    step = long_tail(labels, 10, "step", 10.0)
    assert np.bincount(labels[step.indices]).tolist() == step.counts
    assert [shot_group(n) for n in (101, 100, 20, 19)] == ["many", "medium", "medium", "few"]
    with pytest.raises(ConfigError, match="unknown imbalance profile 'zipf'; known: exp, none, step"):
        parse_imbalance("zipf:10")
    with pytest.raises(ConfigError, match="imbalance profile 'exp' has no parameter mu"):
        parse_imbalance("exp:10:mu=0.5")


def test_the_validation_split_is_balanced_disjoint_and_fixed():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))
    split = long_tail(labels, 10, "exp", 10.0, val_fraction=0.1)
    assert np.bincount(labels[split.val]).tolist() == [20] * 10
    assert not set(split.val) & set(split.indices)
    assert split.counts[0] == 180 and split.counts[-1] == 18
    assert np.array_equal(carve_val(labels, 10, 0.1), split.val)
    assert np.array_equal(subset_indices(labels, [3] * 10), subset_indices(labels, [3] * 10))
    with pytest.raises(ConfigError, match="data.val_fraction' must be between 0 and 1"):
        from_dict(RunConfig, {"data": {"val_fraction": 1.5}})
