"""SimAugment's colour operations against torchvision's, and several views of a batch."""
import pytest
import torch
import torchvision.transforms.functional as TF

from harness.data import augment as A
from harness.registry import ConfigError


def images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_hsv_round_trip_and_hue_match_torchvision():
    x = images().float() / 255
    assert torch.allclose(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5)
    u8 = images(seed=1)
    shifts = torch.tensor([-0.1, -0.05, 0.0, 0.03, 0.1, 0.5])
    ours = A.op_hue(u8, shifts)
    for i, h in enumerate(shifts.tolist()):
        theirs = TF.adjust_hue(u8[i], h)  # uint8 in, uint8 out
        assert (ours[i].int() - theirs.int()).abs().max() <= 1, h


def test_grayscale_and_blur():
    x = images(seed=2)
    gray = A.op_grayscale(x, None)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    want = TF.rgb_to_grayscale(x.float(), num_output_channels=1)[:, 0]
    assert (gray[:, 0].float() - want).abs().max() <= 0.5 + 1e-4
    flat = torch.full((2, 3, 9, 9), 77, dtype=torch.uint8)
    assert torch.equal(A.gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)  # a blur keeps flat images
    dot = torch.zeros(1, 3, 15, 15, dtype=torch.uint8)
    dot[..., 7, 7] = 255
    wide, narrow = A.gaussian_blur(dot, torch.tensor([2.0])), A.gaussian_blur(dot, torch.tensor([0.5]))
    assert wide[0, 0, 7, 7] < narrow[0, 0, 7, 7] and wide[0, 0, 7, 10] > narrow[0, 0, 7, 10]
    weights = torch.exp(-torch.arange(-6, 7.0) ** 2 / 8)
    assert float(wide[0, 0, 7, 7]) == pytest.approx(255 * float((weights / weights.sum()).max()) ** 2, abs=1)


def test_simaugment_repeats_with_the_seed_and_changes_the_images():
    x = images(32, 32, seed=3)
    aug = A.build_augmentation("simaugment")
    a = aug(x, torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(5)).x
    b = aug(x, torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(5)).x
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8 and not torch.equal(a, x)
    none = A.build_augmentation("simaugment", {"simaugment": {"jitter_p": 0, "gray_p": 0, "blur_p": 0,
                                                              "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}})
    out = none(x, torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(0)).x
    flipped = torch.stack([o if torch.equal(o, i) else o.flip(-1) for o, i in zip(out, x)])
    assert torch.equal(flipped, x)  # scale 1 and nothing else: each image as it was, or mirrored


def test_views_stack_the_views_and_repeat_the_labels():
    x, y = images(4, 32, seed=4), torch.tensor([0, 1, 2, 3])
    views = A.build_augmentation("standard+cutout,simaugment")
    batch = views(x, y, torch.Generator().manual_seed(0))
    assert isinstance(views, A.Views) and batch.x.shape == (8, 3, 32, 32) and batch.y.tolist() == [0, 1, 2, 3] * 2
    assert views.split_decoder_crop(84) == (None, views)
    with pytest.raises(ConfigError, match="mixes several views"):
        A.build_augmentation("standard+mixup,simaugment")
    with pytest.raises(ConfigError, match="empty augmentation"):
        A.build_augmentation("standard,")
    with pytest.raises(ConfigError, match="simaugment gray_p"):
        A.build_augmentation("simaugment", {"simaugment": {"gray_p": 2}})


def test_a_repeated_name_is_two_independent_draws_of_one_augmentation():
    """'a,a' is SupContrast's TwoCropTransform: two draws of the same augmentation, not one copied."""
    x, y = images(8, 32, seed=5), torch.arange(8)
    views = A.build_augmentation("simaugment,simaugment")
    batch = views(x, y, torch.Generator().manual_seed(1))
    first, second = batch.x[:8], batch.x[8:]
    assert views.n_views == A.count_views("simaugment,simaugment") == 2
    assert A.build_augmentation("standard").n_views == 1
    assert batch.y.tolist() == list(range(8)) * 2
    assert all(not torch.equal(a, b) for a, b in zip(first, second))
    again = views(x, y, torch.Generator().manual_seed(1)).x
    assert torch.equal(again, batch.x)  # reproducible from the generator
    assert A.count_views("standard+autoaugment+cutout,simaugment,simaugment") == 3


def view_run(folder, card, loader, epochs=1):
    """A tiny two-view GPaCo run (ResNet-8, batch 64) with the given loader: its grid cell."""
    from harness.data import load_card, prepare
    from harness.grid import load_grid
    from support import write_grid
    prepare(load_card(str(card)), folder / "data")
    grid = write_grid(folder, card, folder / "data", grid="loss.name: [gpaco]", epochs=epochs)
    (cell,) = load_grid(grid, ["aug.name=standard,simaugment", f"data.loader={loader}", "log.images=false",
                               "dist.precision=fp32"]).cells
    return cell


def history(result):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "time_s")} for row in result["history"]]


@pytest.mark.slow
def test_views_train_alike_from_the_memory_and_the_ffcv_loader(tmp_path, tiny_card):
    """Both loaders hand the trainer the same batches; the views are drawn on the device from the
    trainer's generator, so one epoch of a two-view run is the same from either."""
    from harness.run.trainer import Trainer
    results = {}
    for loader in ("memory", "ffcv"):
        cell = view_run(tmp_path / loader, tiny_card, loader)
        trainer = Trainer(cell.config, tmp_path / loader / "run")
        assert trainer.criterion.views == 2
        results[loader] = trainer.train()
    assert history(results["memory"]) == history(results["ffcv"])


@pytest.mark.slow
def test_a_two_view_run_stopped_inside_an_epoch_resumes_to_the_same_history(tmp_path, tiny_card):
    from harness.run.trainer import Preempted, Trainer
    cell = view_run(tmp_path, tiny_card, "memory", epochs=2)
    whole = Trainer(cell.config, tmp_path / "whole").train()
    stopped = Trainer(cell.config, tmp_path / "stopped")
    stopped.stop_requested = True  # stop after the first step
    with pytest.raises(Preempted, match="stopped at epoch 0 step 1"):
        stopped.train()
    resumed = Trainer(cell.config, tmp_path / "stopped").train()
    assert history(resumed) == history(whole) and resumed["final"] == whole["final"]


def test_a_loss_that_tells_views_apart_needs_them_before_anything_runs():
    from harness.config import RunConfig, from_dict
    from harness.grid.validate import validate

    def cfg(loss, aug):
        return from_dict(RunConfig, {"data": {"dataset": "cifar10", "root": "/nonexistent"}, "loss": {"name": loss},
                                     "aug": {"name": aug}})
    for loss, aug in (("bcl", "standard"), ("paco", "standard")):
        with pytest.raises(ConfigError, match="view"):
            validate(cfg(loss, aug))
    validate(cfg("bcl", "standard+autoaugment+cutout,simaugment,simaugment"))
    validate(cfg("paco", "standard+autoaugment+cutout,simaugment"))
