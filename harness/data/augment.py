"""Augmentations applied to whole batches on the training device, random per sample.

An augmentation is a callable `(x uint8 [B,3,H,W], y, generator) -> Batch`. Names compose
with '+': 'standard+cutout' runs standard, then cutout. Every sample draws its own crop,
flip, operations and magnitudes from the generator. Mixing augmentations (mixup, cutmix)
pair each sample with a random partner and return the partner's label and the mixing
weight, one per batch as in the papers; the trainer mixes the two losses.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness.registry import ConfigError, Registry

AUGMENTATIONS: Registry = Registry("augmentation")


@dataclass
class Batch:
    """Images after augmentation, the labels, and for mixing augmentations a second label."""
    x: torch.Tensor
    y: torch.Tensor
    y2: torch.Tensor | None = None
    lam: float = 1.0


# ---------------------------------------------------------------------------------------
# random numbers from the trainer's generator, on the images' device

def _uniform(n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device).to(device)


def _randint(high: int, n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.randint(high, (n,), generator=g, device=g.device).to(device)


def _beta(alpha: float, g: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), reproducible from the generator."""
    seed = int(torch.randint(2 ** 62, (1,), generator=g, device=g.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------
# geometry

def random_crop(x: torch.Tensor, pad: int, g: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Zero-pad by `pad` and take a random crop of the original size, per sample; with `flip`,
    a random half of the crops are mirrored in the same pass."""
    b = x.shape[0]
    dy = (_uniform(b, g, x.device) * (2 * pad + 1)).long() - pad  # the crop's offset
    dx = (_uniform(b, g, x.device) * (2 * pad + 1)).long() - pad
    mirror = _uniform(b, g, x.device) < 0.5 if flip else torch.zeros(b, dtype=torch.bool, device=x.device)
    out = _on_cpu(0, x, dy, dx, mirror)
    return shift_all(x, pad, dy, dx, mirror) if out is None else out


def shift_all(x, pad, dy, dx, mirror) -> torch.Tensor:
    """The padded crops in one gather over the batch (on GPUs, and CPUs without numba)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(mirror[:, None], w - 1 - cols, cols)
    rows = torch.arange(h, device=x.device)[None, :] + (dy + pad)[:, None]
    idx = (rows[:, :, None] * (w + 2 * pad) + (cols + (dx + pad)[:, None])[:, None, :])
    return padded.view(b, c, -1).gather(2, idx.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), flip: bool = False) -> torch.Tensor:
    """Per sample, a box of random area and aspect ratio resized back to the full size
    (bilinear); with `flip`, a random half of them mirrored in the same pass."""
    b, _, h, w = x.shape
    area = (_uniform(b, g, x.device) * (scale[1] - scale[0]) + scale[0]) * h * w
    log_r = _uniform(b, g, x.device) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    bw = (area * log_r.exp()).sqrt().round().clamp(1, w)  # box size in whole pixels
    bh = (area / log_r.exp()).sqrt().round().clamp(1, h)
    left = (_uniform(b, g, x.device) * (w - bw + 1)).floor()
    top = (_uniform(b, g, x.device) * (h - bh + 1)).floor()
    mirror = _uniform(b, g, x.device) < 0.5 if flip else torch.zeros(b, dtype=torch.bool, device=x.device)
    out = _on_cpu(1, x, *(v.long() for v in (top, left, bh, bw)), mirror)
    return resample_all(x, top, left, bh, bw, mirror) if out is None else out


def _on_cpu(which: int, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor | None:
    """Kernel `which` of `_cpu_kernels` over the batch, into a new tensor; None off the CPU or
    without numba."""
    kernels = _cpu_kernels() if x.device.type == "cpu" else None
    if kernels is None:
        return None
    out = torch.empty_like(x)
    kernels[which](x.contiguous().numpy(), *(a.numpy() for a in args), out.numpy())
    return out


@functools.cache
def _cpu_kernels():
    """(shift, resize): the CPU's padded crop and resized crop as numba loops over the batch in
    parallel (bilinear as F.interpolate with align_corners=False; boxes never exceed the output,
    so no antialiasing), or None without numba (then torch's `shift_all` and `resample_all`)."""
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, nogil=True, cache=True)
    def shift(x, dy, dx, mirror, out):
        b, c, h, w = x.shape
        for i in prange(b):
            for ch in range(c):
                for oy in range(h):
                    sy, o = oy + dy[i], out[i, ch, oy]
                    for ox in range(w):
                        sx = (w - 1 - ox if mirror[i] else ox) + dx[i]
                        o[ox] = x[i, ch, sy, sx] if 0 <= sy < h and 0 <= sx < w else 0

    @njit(parallel=True, nogil=True, fastmath=True, cache=True)
    def resize(x, top, left, bh, bw, mirror, out):
        b, c, h, w = x.shape
        for i in prange(b):
            x0, x1 = np.empty(w, np.int64), np.empty(w, np.int64)
            lx = np.empty(w, np.float32)
            for ox in range(w):  # source columns and weights, shared by every row and channel
                f = max((ox + 0.5) * bw[i] / w - 0.5, 0.0)
                j = int(f)
                col = w - 1 - ox if mirror[i] else ox
                x0[col], x1[col], lx[col] = left[i] + j, left[i] + min(j + 1, bw[i] - 1), f - j
            rows = np.empty((bh[i], w), np.float32)
            for ch in range(c):
                for r in range(bh[i]):  # each row of the box resampled across once...
                    src = x[i, ch, top[i] + r]
                    for ox in range(w):
                        rows[r, ox] = src[x0[ox]] + (np.float32(src[x1[ox]]) - src[x0[ox]]) * lx[ox]
                for oy in range(h):  # ...then blended down
                    f = max((oy + 0.5) * bh[i] / h - 0.5, 0.0)
                    j = int(f)
                    a, d, ly = rows[j], rows[min(j + 1, bh[i] - 1)], np.float32(f - j)
                    o = out[i, ch, oy]
                    for ox in range(w):
                        o[ox] = np.uint8(a[ox] + (d[ox] - a[ox]) * ly + np.float32(0.5))
    return shift, resize


def _clamp_to_box(pos: torch.Tensor, start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised positions [b, n] kept within the centres of the box's first and last pixels."""
    lo = ((2 * start + 1) / size - 1)[:, None]
    hi = ((2 * (start + length) - 1) / size - 1)[:, None]
    return torch.minimum(torch.maximum(pos, lo), hi)


def resample_all(x, top, left, bh, bw, mirror) -> torch.Tensor:
    """The boxes resized in one grid_sample over the batch (on GPUs, and CPUs without numba)."""
    b, _, h, w = x.shape
    xs = (torch.arange(w, device=x.device) * 2 + 1) / w - 1  # output pixel centres in [-1, 1]
    ys = (torch.arange(h, device=x.device) * 2 + 1) / h - 1
    sx = torch.where(mirror, -bw / w, bw / w)
    gx = _clamp_to_box(((2 * left + bw) / w - 1)[:, None] + sx[:, None] * xs, left, bw, w)
    gy = _clamp_to_box(((2 * top + bh) / h - 1)[:, None] + (bh / h)[:, None] * ys, top, bh, h)
    grid = torch.stack([gx.view(b, 1, w).expand(b, h, w), gy.view(b, h, 1).expand(b, h, w)], -1)
    out = F.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.add_(0.5).to(torch.uint8)  # in 0..255 already: round half up


# ---------------------------------------------------------------------------------------
# the operations of AutoAugment and RandAugment, batched: x uint8 [b,3,H,W], m float [b]

def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * a + (1 - factor) * b, per sample, back to uint8."""
    f = factor.view(-1, 1, 1, 1)
    return _to_uint8(f * a + (1 - f) * b)


def _affine(x: torch.Tensor, a, b_, c, d, tx, ty) -> torch.Tensor:
    """Nearest-neighbour affine about the centre, per sample: [a b; c d] and (tx, ty) in pixels."""
    h, w = x.shape[-2:]
    theta = torch.stack([torch.stack([a, b_ * h / w, -2 * tx / w], 1),
                         torch.stack([c * w / h, d, -2 * ty / h], 1)], 1)
    grid = F.affine_grid(theta.to(torch.float32), list(x.shape), align_corners=False)
    return _to_uint8(F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False))


def op_identity(x, m):
    return x


def op_shear_x(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, one, m, zero, one, zero, zero)


def op_shear_y(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, one, zero, m, one, zero, zero)


def op_translate_x(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, one, zero, zero, one, m, zero)


def op_translate_y(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, one, zero, zero, one, zero, m)


def op_rotate(x, m):
    r = torch.deg2rad(m)
    zero = torch.zeros_like(m)
    return _affine(x, r.cos(), -r.sin(), r.sin(), r.cos(), zero, zero)


def op_brightness(x, m):
    return _blend(x.float(), torch.zeros_like(x, dtype=torch.float32), 1 + m)


def op_color(x, m):
    x = x.float()
    return _blend(x, _gray(x).expand_as(x), 1 + m)


def op_contrast(x, m):
    x = x.float()
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), 1 + m)


def op_sharpness(x, m):
    """Blend with a 3x3 smoothed copy (the border pixels kept), as PIL does."""
    xf = x.float()
    kernel = torch.ones(3, 1, 3, 3, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = _to_uint8(F.conv2d(xf, kernel / 13, groups=3)).float()
    out = xf.clone()
    out[:, :, 1:-1, 1:-1] = smooth
    return _blend(xf, out, 1 + m)


def op_posterize(x, m):
    """Keep the top `m` bits of every channel."""
    mask = (256 - 2 ** (8 - m.round().long())).to(torch.uint8)
    return x & mask.view(-1, 1, 1, 1)


def op_solarize(x, m):
    """Invert the pixels at or above threshold m."""
    return torch.where(x.float() >= m.view(-1, 1, 1, 1), 255 - x, x)


def op_autocontrast(x, m):
    """Stretch each channel to 0..255."""
    lo = x.amin(dim=(2, 3), keepdim=True).float()
    hi = x.amax(dim=(2, 3), keepdim=True).float()
    scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return _to_uint8((x.float() - lo) * scale)


def op_equalize(x, m):
    """Histogram equalisation of each channel (PIL's ImageOps.equalize)."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - (hist > 0).flip(1).long().argmax(1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, flat).to(torch.uint8).reshape(b, c, h, w)


def op_invert(x, m):
    return 255 - x


def magnitudes(num_bins: int, size: int) -> dict:
    """Per operation: (its function, magnitude of each bin, whether the sign is random)."""
    def lin(hi: float) -> torch.Tensor:
        return torch.linspace(0.0, hi, num_bins)

    none = torch.zeros(num_bins)
    return {
        "Identity": (op_identity, none, False),
        "ShearX": (op_shear_x, lin(0.3), True),
        "ShearY": (op_shear_y, lin(0.3), True),
        "TranslateX": (op_translate_x, lin(150.0 / 331.0 * size), True),
        "TranslateY": (op_translate_y, lin(150.0 / 331.0 * size), True),
        "Rotate": (op_rotate, lin(30.0), True),
        "Brightness": (op_brightness, lin(0.9), True),
        "Color": (op_color, lin(0.9), True),
        "Contrast": (op_contrast, lin(0.9), True),
        "Sharpness": (op_sharpness, lin(0.9), True),
        "Posterize": (op_posterize, 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round(), False),
        "Solarize": (op_solarize, torch.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (op_autocontrast, none, False),
        "Equalize": (op_equalize, none, False),
        "Invert": (op_invert, none, False),
    }


def apply_ops(x: torch.Tensor, names: list[str], which: torch.Tensor, mags: torch.Tensor,
              signed: torch.Tensor, table: dict, g: torch.Generator) -> torch.Tensor:
    """Sample i gets operation names[which[i]] at magnitude mags[i] (which < 0: nothing)."""
    flip = _uniform(len(x), g, x.device) < 0.5
    mags = torch.where(signed & flip, -mags, mags)
    out = x.clone()
    for k, name in enumerate(names):
        idx = (which == k).nonzero().squeeze(1)
        if len(idx):
            out.index_copy_(0, idx, table[name][0](x.index_select(0, idx), mags.index_select(0, idx)))
    return out


# ---------------------------------------------------------------------------------------
# the registered augmentations

@AUGMENTATIONS.register("none")
class NoAug:
    """Images as they are."""

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        return batch


@AUGMENTATIONS.register("standard")
class Standard:
    """Up to 32x32: pad-4 random crop and horizontal flip (the CIFAR recipe); larger images:
    random-resized-crop (area fraction `scale`, aspect `ratio`) and flip (the ImageNet recipe)."""

    def __init__(self, pad: int = 4, scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3), small: int = 32):
        self.pad, self.scale, self.ratio, self.small = pad, tuple(scale), tuple(ratio), small

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        x = batch.x
        if x.shape[-1] <= self.small:
            batch.x = random_crop(x, self.pad, g, flip=True)
        else:
            batch.x = random_resized_crop(x, g, self.scale, self.ratio, flip=True)
        return batch


@AUGMENTATIONS.register("autoaugment")
class AutoAugment:
    """AutoAugment's learned policy: per sample one of 25 sub-policies of two operations.
    policy: cifar10, imagenet, svhn, or auto (cifar10 up to 32x32, imagenet above)."""

    def __init__(self, policy: str = "auto"):
        if policy not in ("auto", "cifar10", "imagenet", "svhn"):
            raise ConfigError(f"autoaugment policy must be auto, cifar10, imagenet or svhn, got {policy!r}")
        self.policy = policy
        self._tables: dict = {}

    def _table(self, size: int, device):
        """(operation names, op index [25, 2], probability [25, 2], magnitude [25, 2], signed [25, 2])."""
        if (size, device) not in self._tables:
            import torchvision.transforms as T
            name = self.policy if self.policy != "auto" else ("cifar10" if size <= 32 else "imagenet")
            policies = T.AutoAugment(T.AutoAugmentPolicy(name)).policies
            table = magnitudes(10, size)
            names = sorted({op for sub in policies for op, _, _ in sub})

            def cell(f) -> torch.Tensor:
                return torch.tensor([[f(op) for op in sub] for sub in policies], device=device)

            ops = cell(lambda op: names.index(op[0]))
            prob = cell(lambda op: float(op[1]))
            mag = cell(lambda op: float(table[op[0]][1][op[2]]) if op[2] is not None else 0.0)
            signed = cell(lambda op: table[op[0]][2])
            self._tables[(size, device)] = (names, ops, prob, mag, signed, table)
        return self._tables[(size, device)]

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        x = batch.x
        names, ops, prob, mag, signed, table = self._table(x.shape[-1], x.device)
        sub = _randint(len(ops), len(x), g, x.device)
        for j in range(2):
            which = torch.where(_uniform(len(x), g, x.device) < prob[sub, j], ops[sub, j], -1)
            x = apply_ops(x, names, which, mag[sub, j], signed[sub, j], table, g)
        batch.x = x
        return batch


@AUGMENTATIONS.register("randaugment")
class RandAugment:
    """RandAugment: per sample `num_ops` operations drawn uniformly, at bin `magnitude` of
    `num_bins`, each with a random sign."""
    OPS = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
           "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31):
        if not 0 <= magnitude < num_bins:
            raise ConfigError(f"randaugment magnitude must be in 0..{num_bins - 1}, got {magnitude}")
        self.num_ops, self.magnitude, self.num_bins = num_ops, magnitude, num_bins

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        x = batch.x
        table = magnitudes(self.num_bins, x.shape[-1])
        mag = torch.tensor([float(table[n][1][self.magnitude]) for n in self.OPS], device=x.device)
        signed = torch.tensor([table[n][2] for n in self.OPS], device=x.device)
        for _ in range(self.num_ops):
            which = _randint(len(self.OPS), len(x), g, x.device)
            x = apply_ops(x, self.OPS, which, mag[which], signed[which], table, g)
        batch.x = x
        return batch


@AUGMENTATIONS.register("cutout")
class Cutout:
    """Per sample, zero a `size` x `size` square at a random centre (clipped at the border);
    size defaults to half the image side (16 px on CIFAR)."""

    def __init__(self, size: int | None = None):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"cutout size must be a whole number of pixels >= 1 (unset: half the side), got {size!r}")
        self.size = size

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        x = batch.x
        b, _, h, w = x.shape
        size = self.size or h // 2
        top = (_uniform(b, g, x.device) * h).long()[:, None, None] - size // 2
        left = (_uniform(b, g, x.device) * w).long()[:, None, None] - size // 2
        rows = torch.arange(h, device=x.device)[None, :, None]
        cols = torch.arange(w, device=x.device)[None, None, :]
        hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        batch.x = x.masked_fill(hole[:, None], 0)
        return batch


@AUGMENTATIONS.register("mixup")
class Mixup:
    """Mixup: x = lam * x + (1 - lam) * x[partner], lam ~ Beta(alpha, alpha) per batch."""
    mixes = True

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        lam = _beta(self.alpha, g)
        partner = torch.randperm(len(batch.x), generator=g, device=g.device).to(batch.x.device)
        x = batch.x.float()
        mixed = lam * x + (1 - lam) * x.index_select(0, partner)
        return Batch(_to_uint8(mixed), batch.y, batch.y.index_select(0, partner), lam)


@AUGMENTATIONS.register("cutmix")
class CutMix:
    """CutMix: per sample, a box from a random partner pasted at a random place; the box
    covers 1 - lam of the image with lam ~ Beta(alpha, alpha) per batch."""
    mixes = True

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        x = batch.x
        b, _, h, w = x.shape
        side = math.sqrt(1 - _beta(self.alpha, g))
        bh, bw = int(h * side), int(w * side)
        top = (_uniform(b, g, x.device) * (h - bh + 1)).long()[:, None, None]
        left = (_uniform(b, g, x.device) * (w - bw + 1)).long()[:, None, None]
        rows = torch.arange(h, device=x.device)[None, :, None]
        cols = torch.arange(w, device=x.device)[None, None, :]
        box = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        partner = torch.randperm(b, generator=g, device=g.device).to(x.device)
        x = torch.where(box[:, None], x.index_select(0, partner), x)
        return Batch(x, batch.y, batch.y.index_select(0, partner), 1 - bh * bw / (h * w))


# ---------------------------------------------------------------------------------------
# SimAugment: the contrastive view of MoCo v2 / SimCLR that PaCo and GPaCo use on CIFAR

def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[b,3,h,w] RGB in [0, 1] -> HSV in [0, 1] (torchvision's _rgb2hsv)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    same = maxc == minc
    span = maxc - minc
    ones = torch.ones_like(maxc)
    s = span / torch.where(same, ones, maxc)
    span = torch.where(same, ones, span)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return torch.stack([torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[b,3,h,w] HSV in [0, 1] -> RGB in [0, 1] (torchvision's _hsv2rgb)."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    sector = i[:, None] == torch.arange(6, device=x.device).view(1, 6, 1, 1)  # [b,6,h,w]
    table = torch.stack([torch.stack(c, 1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return (sector[:, None] * table).sum(2)  # [b,3,h,w]


def op_hue(x, m):
    """Shift the hue by m (a fraction of the colour circle, in [-0.5, 0.5]), per sample."""
    hsv = rgb_to_hsv(x.float() / 255)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + m.view(-1, 1, 1), 1.0)
    return _to_uint8(hsv_to_rgb(hsv) * 255)


def op_grayscale(x, m):
    return _to_uint8(_gray(x.float()).expand_as(x).clone())


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur of standard deviation sigma[i] for sample i (edges replicated)."""
    b, c, h, w = x.shape
    r = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.float()[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [b*c, 2r+1]
    y = F.pad(x.float().reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return _to_uint8(y.view(b, c, h, w))


@AUGMENTATIONS.register("simaugment")
class SimAugment:
    """The contrastive view of GPaCo on long-tailed CIFAR: random-resized-crop (scale 0.2..1) and
    flip, colour jitter (brightness, contrast, saturation ±0.4, hue ±0.1, in a random order per
    sample) with probability 0.8, grayscale with probability 0.2, and a Gaussian blur of σ in
    [0.1, 2] with probability 0.2 (dvlab-research/Parametric-Contrastive-Learning,
    GPaCo/LT/paco_cifar.py `augmentation_aug_cifar`; PaCo's `sim_cifar` blurs with p 0.5: blur_p).
    With `pad`, the crop is a padded crop of the full size instead (SADE's test-time views,
    Vanint/SADE-AgnosticLT test_training_cifar.py `train_trsfm`)."""

    JITTER = {"Brightness": op_brightness, "Contrast": op_contrast, "Color": op_color, "Hue": op_hue}

    def __init__(self, scale: tuple = (0.2, 1.0), ratio: tuple = (3 / 4, 4 / 3), pad: int | None = None,
                 jitter: tuple = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, gray_p: float = 0.2,
                 blur_p: float = 0.2, sigma: tuple = (0.1, 2.0)):
        for name, v in (("jitter_p", jitter_p), ("gray_p", gray_p), ("blur_p", blur_p)):
            if not 0 <= v <= 1:
                raise ConfigError(f"simaugment {name} must be in [0, 1], got {v}")
        if len(jitter) != 4 or not 0 <= jitter[3] <= 0.5 or min(jitter) < 0:
            raise ConfigError(f"simaugment jitter is (brightness, contrast, saturation, hue) >= 0, hue <= 0.5, "
                              f"got {jitter}")
        if not 0 < sigma[0] <= sigma[1]:
            raise ConfigError(f"simaugment sigma is (low, high) with 0 < low <= high, got {sigma}")
        self.scale, self.ratio, self.pad = tuple(scale), tuple(ratio), pad
        self.jitter, self.sigma = tuple(jitter), tuple(sigma)
        self.jitter_p, self.gray_p, self.blur_p = jitter_p, gray_p, blur_p

    def __call__(self, batch: Batch, g: torch.Generator) -> Batch:
        if self.pad is None:
            x = random_resized_crop(batch.x, g, self.scale, self.ratio, flip=True)
        else:
            x = random_crop(batch.x, self.pad, g, flip=True)
        batch.x = self.colours(x, g)
        return batch

    def colours(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Colour jitter, grayscale and blur, each on its random share of the batch."""
        b, dev = len(x), x.device
        jitter = _uniform(b, g, dev) < self.jitter_p
        mags = (_uniform(4 * b, g, dev).view(b, 4) * 2 - 1) * torch.tensor(self.jitter, device=dev)
        order = _uniform(4 * b, g, dev).view(b, 4).argsort(1)  # ColorJitter's random order, per sample
        for slot in range(4):
            which = torch.where(jitter, order[:, slot], -1)
            out = x.clone()
            for k, op in enumerate(self.JITTER.values()):
                idx = (which == k).nonzero().squeeze(1)
                if len(idx):
                    out.index_copy_(0, idx, op(x.index_select(0, idx), mags[idx, k]))
            x = out
        gray = (_uniform(b, g, dev) < self.gray_p).nonzero().squeeze(1)
        if len(gray):
            x = x.index_copy(0, gray, op_grayscale(x.index_select(0, gray), None))
        sigma = _uniform(b, g, dev) * (self.sigma[1] - self.sigma[0]) + self.sigma[0]
        blur = (_uniform(b, g, dev) < self.blur_p).nonzero().squeeze(1)
        if len(blur):
            x = x.index_copy(0, blur, gaussian_blur(x.index_select(0, blur), sigma[blur]))
        return x


# ---------------------------------------------------------------------------------------

class Compose:
    n_views = 1

    def __init__(self, parts: list):
        self.parts = parts

    def split_decoder_crop(self, size: int) -> tuple[Standard | None, "Compose"]:
        """(the leading `standard` part, the rest) when that part random-resized-crops images
        of this size, which the FFCV loader then does while decoding; else (None, self)."""
        first = self.parts[0] if self.parts else None
        if isinstance(first, Standard) and size > first.small:
            return first, Compose(self.parts[1:])
        return None, self

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Batch:
        batch = Batch(x, y)
        for part in self.parts:
            batch = part(batch, g)
        return batch


class Views:
    """Several augmented views of every image, for the contrastive losses: 'a+b,c' is a view by
    'a+b' and a view by 'c'; 'a,a' is two independent draws of 'a' (SupContrast's TwoCropTransform).
    The batch holds the views one after the other (view-major: row v·B + i is view v of image i) and
    the labels repeated per view, so any loss sees V·B samples; the trainer tells the loss V
    (Loss.views). A part's parameters (aug.params) apply to it in every view that has it."""

    def __init__(self, views: list[Compose]):
        self.views = views

    @property
    def n_views(self) -> int:
        return len(self.views)

    def split_decoder_crop(self, size: int) -> tuple[None, "Views"]:
        return None, self  # every view starts from the decoded image

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> Batch:
        out = [view(x, y, g).x for view in self.views]
        return Batch(torch.cat(out), y.repeat(len(out)))


def count_views(name: str) -> int:
    """How many views the augmentation `name` gives each image: 'a,b' -> 2."""
    return len(_views(name))


def _views(name: str) -> list[list[str]]:
    """'standard+cutout,simaugment' -> [['standard', 'cutout'], ['simaugment']]."""
    return [[p.strip() for p in view.split("+") if p.strip()] for view in name.split(",")]


def check_augmentation(name: str, params: dict) -> None:
    """Every part is registered, every parameter belongs to one of the parts, at most one mixes,
    and nothing mixes when there are several views."""
    views = _views(name)
    if not all(views):
        raise ConfigError(f"'{name}': an empty augmentation (or view)")
    parts = [p for view in views for p in view]
    for part in parts:
        AUGMENTATIONS.get(part)
    for key in params:
        if key not in parts:
            raise ConfigError(f"aug.params has '{key}', which is not a part of '{name}'")
    for part in parts:
        AUGMENTATIONS.build(part, params.get(part, {}))  # names and values checked before any run
    mixing = [p for p in parts if getattr(AUGMENTATIONS.get(p), "mixes", False)]
    if len(mixing) > 1 or (mixing and len(views) > 1):
        raise ConfigError(f"'{name}' mixes twice or mixes several views ({' and '.join(mixing)}); "
                          f"use one mixing part and one view")


def build_augmentation(name: str, params: dict | None = None) -> Compose | Views:
    """'standard+cutout' with params {'cutout': {'size': 8}} -> one callable; 'a,b' -> two views."""
    params = params or {}
    check_augmentation(name, params)
    views = [Compose([AUGMENTATIONS.build(p, params.get(p, {})) for p in view]) for view in _views(name)]
    return views[0] if len(views) == 1 else Views(views)
