"""The augmentation axis: every part random per sample, reproducible from the generator, the
operations against torchvision's, the mixing parts' labels and weights, and the preview."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from harness.data import AUGMENTATIONS, load_card, prepare
from harness.data import augment as A
from harness.data.augment import build_augmentation, check_augmentation
from harness.data.fakes import fake_images, write_folders
from harness.registry import ConfigError
from support import prepare_main

PER_SAMPLE = ["standard", "autoaugment", "randaugment", "cutout", "standard+randaugment+cutout"]


def images(n=64, size=32, seed=0):
    """Distinct shape images, uint8 [n, 3, size, size]."""
    return torch.from_numpy(fake_images(np.arange(n), size, seed)).permute(0, 3, 1, 2).contiguous()


def run(name, x, seed=0, params=None):
    return build_augmentation(name, params)(x.clone(), torch.arange(len(x)), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PER_SAMPLE)
@pytest.mark.parametrize("size", [32, 84])
def test_each_sample_draws_its_own_randomness_reproducibly(name, size):
    same = images(1, size).expand(48, -1, -1, -1).contiguous()  # one image, 48 times
    out = run(name, same).x
    assert out.shape == same.shape and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) >= 12  # not one draw for the whole batch
    assert torch.equal(run(name, same, seed=0).x, out)
    assert not torch.equal(run(name, same, seed=1).x, out)


def test_standard_on_32px_is_a_padded_crop_and_a_flip_of_half():
    x = images(64)
    out = run("standard", x).x
    padded = F.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i].flip(2), w) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 16 <= flips <= 48


def test_standard_on_larger_images_is_a_random_resized_crop():
    x = images(16, 84)
    out = run("standard", x).x
    assert not torch.equal(out, x) and out.shape == x.shape
    whole = run("standard", x, params={"standard": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]}}).x  # full box
    for i in range(16):
        assert torch.equal(whole[i], x[i]) or torch.equal(whole[i], x[i].flip(2))


def test_the_cpu_and_gpu_paths_of_the_crops_agree():
    """The CPU runs numba loops over the batch; the GPU (and a CPU without numba) one gather or
    one grid_sample. The padded crop is a copy: equal. The resized crop: within one level."""
    shift, resize = A._cpu_kernels()
    x, g = images(64, 84), torch.Generator().manual_seed(5)
    area = torch.rand(64, generator=g) * 0.9 + 0.1
    bw = (area.sqrt() * 84).round()
    bh = (area.sqrt() * 84 * (0.8 + 0.2 * torch.rand(64, generator=g))).round()
    left, top = (torch.rand(64, generator=g) * (85 - bw)).floor(), (torch.rand(64, generator=g) * (85 - bh)).floor()
    mirror = torch.rand(64, generator=g) < 0.5
    loops = torch.empty_like(x)
    resize(x.numpy(), *(v.long().numpy() for v in (top, left, bh, bw)), mirror.numpy(), loops.numpy())
    batched = A.resample_all(x, top, left, bh, bw, mirror)
    assert (loops.int() - batched.int()).abs().max() <= 1
    for i in range(8):
        t, l, hh, ww = (int(v[i]) for v in (top, left, bh, bw))
        want = F.interpolate(x[i:i + 1, :, t:t + hh, l:l + ww].float(), size=(84, 84), mode="bilinear",
                             align_corners=False)[0]
        want = want.flip(-1) if mirror[i] else want
        assert (loops[i].int() - want.round().int()).abs().max() <= 1

    small = images(64, 32)
    dy, dx = (torch.randint(-4, 5, (64,), generator=g) for _ in range(2))
    copied = torch.empty_like(small)
    shift(small.numpy(), dy.numpy(), dx.numpy(), mirror.numpy(), copied.numpy())
    assert torch.equal(copied, A.shift_all(small, 4, dy, dx, mirror))


def test_ffcv_crops_large_images_while_decoding_the_rest_runs_batched():
    standard_first = build_augmentation("standard+cutout")
    crop, rest = standard_first.split_decoder_crop(84)
    assert isinstance(crop, A.Standard) and [type(p) for p in rest.parts] == [A.Cutout]
    assert standard_first.split_decoder_crop(32) == (None, standard_first)  # the padded crop stays batched
    later = build_augmentation("cutout+standard")
    assert later.split_decoder_crop(84) == (None, later)


def test_cutout_zeroes_one_square_per_sample():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = run("cutout", x, params={"cutout": {"size": 8}}).x
    holes = (out == 0).all(1)  # [64, 32, 32]
    assert ((out == 0) | (out == 200)).all()
    for hole in holes:
        rows, cols = hole.any(1).nonzero().squeeze(1), hole.any(0).nonzero().squeeze(1)
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        assert hole.sum() == len(rows) * len(cols)  # one rectangle (a square clipped at the border)
    assert (holes.sum((1, 2)) == 64).sum() >= 20  # most are whole 8x8 squares
    assert run("cutout", x).x.eq(0).all(1).sum((1, 2)).max() == 256  # default: half the side


def test_mixup_mixes_each_sample_with_its_partner_by_lam():
    x = images(32)
    batch = run("mixup", x, params={"mixup": {"alpha": 0.4}})
    partner = batch.y2
    assert sorted(partner.tolist()) == list(range(32)) and not torch.equal(partner, batch.y)
    want = (batch.lam * x.float() + (1 - batch.lam) * x[partner].float()).round()
    assert 0 < batch.lam < 1 and (batch.x.float() - want).abs().max() <= 1


def test_cutmix_pastes_one_partner_box_covering_one_minus_lam():
    x = torch.arange(32, dtype=torch.uint8).view(32, 1, 1, 1).expand(32, 3, 32, 32).contiguous()
    batch = run("cutmix", x)
    assert 0 < batch.lam < 1
    for i in range(32):
        partner = int(batch.y2[i])
        if partner == i:
            continue
        from_partner = (batch.x[i, 0] == partner).float().mean().item()
        assert from_partner == pytest.approx(1 - batch.lam)
        assert ((batch.x[i, 0] == partner) | (batch.x[i, 0] == i)).all()
    tops = {int((batch.x[i, 0] != i).any(1).nonzero()[0]) for i in range(32) if batch.y2[i] != i}
    assert len(tops) > 1  # the box is placed per sample


@pytest.mark.parametrize("name, reference, tolerance", [
    ("Equalize", lambda im, m: TF.equalize(im), 0),
    ("Posterize", lambda im, m: TF.posterize(im, int(m)), 0),
    ("Solarize", lambda im, m: TF.solarize(im, m), 0),
    ("Invert", lambda im, m: TF.invert(im), 0),
    ("AutoContrast", lambda im, m: TF.autocontrast(im), 1),
    ("Brightness", lambda im, m: TF.adjust_brightness(im, 1 + m), 1),
    ("Color", lambda im, m: TF.adjust_saturation(im, 1 + m), 2),
    ("Contrast", lambda im, m: TF.adjust_contrast(im, 1 + m), 2),
    ("Sharpness", lambda im, m: TF.adjust_sharpness(im, 1 + m), 1),
])
def test_the_batched_operations_match_torchvision_per_image(name, reference, tolerance):
    op, bins, signed = A.magnitudes(10, 32)[name]
    x = images(10)
    mags = torch.stack([bins[i] * (-1 if signed and i % 2 else 1) for i in range(10)])
    out = op(x, mags)
    for i in range(10):
        want = reference(x[i], float(mags[i]))
        assert (out[i].int() - want.int()).abs().max() <= tolerance, (name, i)


def test_translations_shift_by_whole_pixels_and_zero_magnitudes_change_nothing():
    x = images(4)
    shifted = A.op_translate_x(x, torch.tensor([3.0, -2.0, 0.0, 5.0]))
    for i, t in enumerate((3, -2, 0, 5)):
        want = torch.zeros_like(x[i])
        if t >= 0:
            want[..., t:] = x[i][..., :32 - t]
        else:
            want[..., :t] = x[i][..., -t:]
        assert torch.equal(shifted[i], want)
    zero = torch.zeros(4)
    for op in (A.op_shear_x, A.op_shear_y, A.op_rotate, A.op_translate_y):
        assert torch.equal(op(x, zero), x)


def test_names_and_parameters_are_checked_before_a_run():
    check_augmentation("standard+randaugment+cutout", {"cutout": {"size": 8}})
    assert {"none", "standard", "autoaugment", "randaugment", "cutout", "mixup", "cutmix"} <= set(AUGMENTATIONS)
    for name, params, match in [
        ("standard+nope", {}, "unknown augmentation 'nope'"),
        ("mixup+cutmix", {}, "mixes twice"),
        ("standard", {"cutout": {"size": 8}}, "'cutout', which is not a part of 'standard'"),
        ("randaugment", {"randaugment": {"magnitude": 40}}, "magnitude must be in 0..30"),
        ("autoaugment", {"autoaugment": {"policy": "mnist"}}, "policy must be auto, cifar10"),
        ("cutout", {"cutout": {"sides": 3}}, "augmentation 'cutout' has no parameter sides"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_augmentation(name, params)


def test_the_preview_grid_shows_originals_and_augmented_copies(tmp_path, tiny_card, capsys):
    card = load_card(tiny_card)
    folder = prepare(card, tmp_path)
    png = tmp_path / "grid.png"
    assert prepare_main()([str(tiny_card), "--out", str(tmp_path), "--preview", "standard+cutout",
                           "--png", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    grid = np.array(Image.open(png))
    assert grid.shape == (8 * 100, 8 * 100, 3)  # 8 rows x 8 columns of 96 px tiles (x3) with gaps
    from harness.data.beton import Beton
    first = Beton(folder / "train.beton").read([int(np.flatnonzero(Beton(folder / "train.beton").labels == 0)[0])])[0]
    tile = torch.from_numpy(grid[2:98, 2:98]).permute(2, 0, 1)
    assert torch.equal(tile, first[0].repeat_interleave(3, 1).repeat_interleave(3, 2))
    assert not np.array_equal(grid[2:98, 2:98], grid[2:98, 102:198])


def test_the_preview_reads_an_image_folder_source(tmp_path):
    mini = load_card("mini_imagenet")
    write_folders(tmp_path / "miniImageNet", mini.classes, {"train": 1, "test": 1}, size=84, ext=".jpg")
    png = tmp_path / "mini.png"
    assert prepare_main()(["mini_imagenet", "--root", str(tmp_path), "--preview", "randaugment",
                           "--png", str(png)]) == 0
    assert np.asarray(Image.open(png)).shape == (8 * 88, 8 * 88, 3)
