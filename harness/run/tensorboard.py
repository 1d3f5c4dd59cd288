"""TensorBoard for every run and every sweep; only rank 0 calls these.

Per run, in runs/<grid>/<signature>/tb/:
    train/loss, train/lr, train/images_per_s          scalars per epoch
    test/top1, test/many, test/medium, test/few       balanced test set, per epoch
    test/expert_<k>/top1                              each expert's own top-1 (multi-expert models)
    per_class/<k>_<name>                              per-class accuracy, per epoch
    figures/per_class_vs_count, figures/confusion     figures, FIGURES times per run and at the end
    augment/original, augment/augmented               samples of the augmentation in use (step 0)
    generated/samples                                 generated tail images, when the run uses them

Per sweep, the HParams dashboard: each finished run also gets a session in
runs/<grid>/<signature>/tb/hparams/ (hparams = the cell's grid axes from cell.json, metrics =
final/* and best/* top-1, many, medium, few, from result.json). The session run holds only
those scalars, so TensorBoard infers the grid's HParams experiment from the sessions alone
(no grid-level file that concurrent runs would fight over): `tensorboard --logdir runs/<grid>`
compares the whole grid, and each cell appears as soon as it finishes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from harness.config import get_dotted
from harness.files import temp_path
from harness.grid import axis_name
from harness.metrics import METRICS, shot_group
from harness.rundir import RunDir

FIGURES = 10  # figures are drawn about this many times per run (and always at the last epoch)
SAMPLES = 32  # images per sample grid
DEFAULT_HPARAMS = ("loss.name", "data.dataset", "data.imbalance_factor", "aug.name", "seed")


def figure_epoch(epoch: int, epochs: int) -> bool:
    """Whether figures are drawn after this (1-based) epoch."""
    return epoch == epochs or epoch % max(1, epochs // FIGURES) == 0


def log_epoch(writer, row: dict, metrics: dict, class_names: list, counts: list, epochs: int,
              figures: bool = True) -> None:
    """Scalars of one epoch, and the figures on the epochs chosen by figure_epoch; `metrics` None:
    an epoch without evaluation (log.eval_every), its training scalars only."""
    step = row["epoch"]
    writer.add_scalar("train/loss", row["loss"], step)
    writer.add_scalar("train/lr", row["lr"], step)
    writer.add_scalar("train/images_per_s", row["images_per_s"], step)
    for key in METRICS:
        if row[key] is not None:
            writer.add_scalar(f"test/{key}", row[key], step)
    for k, expert in enumerate(row.get("experts") or []):  # a multi-expert model
        writer.add_scalar(f"test/expert_{k}/top1", expert["top1"], step)
    for c, acc in enumerate(metrics["per_class"] if metrics else []):
        writer.add_scalar(f"per_class/{c:03d}_{class_names[c]}", acc, step)
    if metrics and figures and figure_epoch(step, epochs):
        writer.add_figure("figures/per_class_vs_count",
                          per_class_figure(metrics["per_class"], counts, f"epoch {step}"), step)
        if metrics.get("confusion") is not None:
            writer.add_figure("figures/confusion",
                              confusion_figure(metrics["confusion"], class_names, f"epoch {step}"), step)
    writer.flush()


def per_class_figure(per_class: list, counts: list, title: str = ""):
    """Per-class test accuracy against the class's training count (log scale), by shot group."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=100)
    ax = fig.add_subplot()
    counts_a, acc = np.asarray(counts, float), np.asarray(per_class, float)
    groups = np.array([shot_group(c) for c in counts])
    for group, color in (("many", "tab:blue"), ("medium", "tab:orange"), ("few", "tab:red")):
        sel = groups == group
        if sel.any():
            ax.scatter(counts_a[sel], acc[sel], s=18, color=color, label=f"{group} ({sel.sum()})")
    for edge in (20, 100):
        ax.axvline(edge, color="0.7", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"per-class accuracy vs training count {title}".strip(), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(confusion, class_names: list, title: str = ""):
    """The row-normalised confusion matrix (true class down, predicted class across), in %."""
    from matplotlib.figure import Figure
    m = np.asarray(confusion, float)
    m = 100 * m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(m)
    size = min(4 + n / 10, 12)
    fig = Figure(figsize=(size, size * 0.85), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if n <= 20:
        ax.set_xticks(range(n), [str(c) for c in class_names], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip(), fontsize=9)
    fig.tight_layout()
    return fig


def sample_batch(images: torch.Tensor, labels: torch.Tensor, n: int = SAMPLES, seed: int = 0):
    """`n` images picked at random (fixed seed) from a uint8 image set and their labels."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(labels), generator=g)[:n].to(labels.device)
    return images[pick], labels[pick]


def log_samples(writer, images: torch.Tensor, labels: torch.Tensor, augment, device, seed: int = 0,
                generated=None) -> None:
    """Sample images before and after the run's augmentation, and the generated ones it trains on.

    The augmentation gets a generator of its own, so logging never changes the training run.
    """
    x, y = sample_batch(images, labels, seed=seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    writer.add_images("augment/original", x.cpu(), 0, dataformats="NCHW")
    augmented = augment(x.clone(), y.clone(), gen).x
    writer.add_images("augment/augmented", augmented.clamp(0, 255).to(torch.uint8).cpu(), 0,
                      dataformats="NCHW")
    if generated is not None and sum(generated.counts):  # harness.data.generated.Generated
        writer.add_images("generated/samples", generated.samples(SAMPLES)[0], 0, dataformats="NCHW")
    writer.flush()


# ---------------------------------------------------------------------------------------
# HParams: one session per finished run

def hparam_names(keys: list) -> dict:
    """Dotted axis keys -> dashboard names: the short axis name unless two axes share it."""
    short = [axis_name(k) for k in keys]
    return {k: s if short.count(s) == 1 else k for k, s in zip(keys, short)}


def hparam_value(value):
    """A value the HParams plugin can hold: numbers, strings and booleans as they are, else JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def run_hparams(run_dir: RunDir, result: dict) -> dict:
    """The run's hparams: its grid axes (cell.json), or a few config fields for a lone run."""
    axes = run_dir.read_cell().get("axes")
    if not axes:
        axes = {k: get_dotted(result["config"], k) for k in DEFAULT_HPARAMS}
    names = hparam_names(list(axes))
    return {names[k]: hparam_value(v) for k, v in axes.items()}


def run_metrics(result: dict) -> dict:
    """final/<m> and best/<m> for m in top1, many, medium, few (absent groups left out)."""
    return {f"{which}/{m}": float(result[which][m]) for which in ("final", "best") for m in METRICS
            if result.get(which, {}).get(m) is not None}


def write_hparams(run_dir: str | Path, result: dict | None = None) -> Path | None:
    """Write (or rewrite) the run's HParams session from its result (default: its result.json);
    None when it has none."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries
    run_dir = RunDir(run_dir)
    result = result or run_dir.read_result()
    if not result:
        return None
    hparams, metrics = run_hparams(run_dir, result), run_metrics(result)
    _, start, end = hparams_summaries(hparams, metrics)
    folder = run_dir.hparams
    tmp = temp_path(folder)  # a whole folder: written aside, then swapped in
    for stale in [tmp, *folder.parent.glob(f".{folder.name}.*.tmp")]:  # also a killed writer's
        shutil.rmtree(stale, ignore_errors=True)
    with SummaryWriter(str(tmp)) as writer:
        writer.file_writer.add_summary(start)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, result.get("epochs", 0))
        writer.file_writer.add_summary(end)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def has_hparams(run_dir: str | Path) -> bool:
    return any(RunDir(run_dir).hparams.glob("events.out.tfevents.*"))
