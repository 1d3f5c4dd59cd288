"""A procedural, learnable, deterministic 10-class image dataset (32×32 RGB).

Each class is a shape (disc, ring, square, frame, cross, triangle, horizontal bars,
vertical bars, checkerboard, diagonal stripes) drawn at a random place, size, colour and
contrast over a noisy, coloured, gradient background with a distractor blob. Colour says
nothing about the class; pairs like disc/ring and square/frame need the shape. A small CNN
learns it in a few epochs but not perfectly, so a long-tailed training set hurts the tail.
"""
from __future__ import annotations

import numpy as np

CLASSES = ["disc", "ring", "square", "frame", "cross", "triangle",
           "hbars", "vbars", "checker", "diagonal"]
SIZE = 32


def _masks(kind: int, yy, xx, cy, cx, r, phase):
    """Boolean masks [N,H,W] of shape `kind` for N centres/radii (arrays of shape [N,1,1])."""
    dy, dx = yy - cy, xx - cx
    dist = np.sqrt(dy ** 2 + dx ** 2)
    box = np.maximum(np.abs(dy), np.abs(dx))
    inside = box <= r
    period = np.maximum(2, np.round(r / 2)).astype(int)
    if kind == 0:
        return dist <= r
    if kind == 1:
        return (dist <= r) & (dist >= r * 0.55)
    if kind == 2:
        return inside
    if kind == 3:
        return inside & (box >= r * 0.55)
    if kind == 4:
        return inside & ((np.abs(dy) <= r * 0.3) | (np.abs(dx) <= r * 0.3))
    if kind == 5:
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)
    if kind == 6:
        return inside & (((yy + phase) // period) % 2 == 0)
    if kind == 7:
        return inside & (((xx + phase) // period) % 2 == 0)
    if kind == 8:
        return inside & ((((yy + phase) // period) + ((xx + phase) // period)) % 2 == 0)
    return inside & (((yy + xx + phase) // period) % 2 == 0)


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images [N, 32, 32, 3] for the given labels, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    yy, xx = yy[None], xx[None]
    col = lambda: rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    shape = lambda *s: rng.uniform(*s, (n, 1, 1)).astype(np.float32)
    # background: a colour gradient plus pixel noise
    g0, g1 = col(), col()
    angle = shape(0, 2 * np.pi)
    t = ((np.cos(angle) * xx + np.sin(angle) * yy) / SIZE + 1) / 2
    img = g0 * (1 - t[..., None]) + g1 * t[..., None]
    # distractor: a soft blob somewhere
    by, bx, br = shape(0, SIZE), shape(0, SIZE), shape(3, 8)
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * br ** 2))[..., None]
    img = img * (1 - 0.6 * blob) + 0.6 * blob * col()
    # the class shape, in a colour that contrasts with the local background
    cy, cx, r = shape(10, 22), shape(10, 22), shape(6, 11)
    phase = rng.integers(0, 4, (n, 1, 1))
    mask = np.zeros((n, SIZE, SIZE), bool)
    for k in range(len(CLASSES)):
        sel = labels == k
        if sel.any():
            mask[sel] = _masks(k, yy, xx, cy[sel], cx[sel], r[sel], phase[sel])
    # foreground: a colour on the other side of the background's brightness
    bright = img.mean(axis=(1, 2, 3), keepdims=True) > 0.5
    fg = np.where(bright, col() * 0.35, 0.65 + col() * 0.35)
    contrast = shape(0.6, 1.0)[..., None]
    img = np.where(mask[..., None], img * (1 - contrast) + fg * contrast, img)
    img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced split: images [N,32,32,3] uint8 and labels [N] int64, classes interleaved."""
    labels = np.tile(np.arange(len(CLASSES)), n_per_class).astype(np.int64)
    return make_images(labels, seed), labels
