"""A whole epoch of the harness against a hand-written loop doing the same work, on the same data.

    harness  Trainer.run_epoch(): the memory loader, `standard` augmentation, the step (bf16
             autocast where it pays on the CPU, channels_last: dist.precision auto; eager, as
             the bare loop, where model.compile auto would compile a 200-epoch run), evaluation
             on the balanced test set, TensorBoard scalars, progress.json and the checkpoint
    bare     the same work written out as one loop: a permutation, index_select batches, the
             same augmentation kernel, normalise, forward, cross-entropy, backward, SGD with the
             same lr schedule, a confusion matrix on the test set, the same TensorBoard scalars,
             torch.save of model and optimizer

Both start from the same weights and train on the same CIFAR-10-LT-shaped set (the official CIFAR
python layout written by harness.data.fakes, converted by the harness, IF 100: 12406 images; the
balanced test set of 10000), in one process, alternating epoch by epoch (H B B H H B ...), so the
machine's noise falls on both alike. Each phase is timed (load, augment, forward/backward,
optimizer, eval, checkpoint, logging; `other` is the rest of the epoch), so the next bottleneck
is visible. Target: bare epoch time / harness epoch time >= 0.95.

Prints the table, writes bench/results/epoch.json.

    python bench/epoch.py [--epochs 3] [--per-class 5000] [--test-per-class 1000] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from harness.config import RunConfig, from_dict  # noqa: E402
from harness.data import convert, load_card  # noqa: E402
from harness.data.augment import random_crop  # noqa: E402
from harness.data.fakes import write_cifar  # noqa: E402
from harness.files import atomic_path, atomic_write_json  # noqa: E402
from harness.run.optim import lr_factor  # noqa: E402
from harness.run.trainer import Trainer  # noqa: E402

PHASES = ("load", "augment", "forward_backward", "optimizer", "eval", "checkpoint", "logging", "other")


class Clock:
    """Seconds per phase of one epoch."""

    def __init__(self):
        self.s = defaultdict(float)

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[phase] += time.perf_counter() - t0
        return wrapper


class TimedLoader:
    """A training loader whose batches' fetch time counts as `load`."""

    def __init__(self, base, clock: Clock):
        self.base, self.clock = base, clock

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        it = iter(self.base)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.clock.s["load"] += time.perf_counter() - t0
            yield batch


def instrument(trainer: Trainer, clock: Clock) -> None:
    """Time the harness's phases by wrapping its collaborators (the wrappers cost microseconds)."""
    trainer.data.train = TimedLoader(trainer.data.train, clock)
    trainer.data.batch_augment = clock.timed("augment", trainer.data.batch_augment)
    trainer.optimizer.step = clock.timed("optimizer", trainer.optimizer.step)
    trainer.train_step = clock.timed("step", trainer.train_step)
    trainer.evaluate = clock.timed("eval", trainer.evaluate)
    trainer.checkpoint.save = clock.timed("checkpoint", trainer.checkpoint.save)
    trainer.record.epoch = clock.timed("logging", trainer.record.epoch)


class Bare:
    """The hand-written loop: the same model, data, augmentation, precision and schedule."""

    def __init__(self, trainer: Trainer, model: torch.nn.Module, folder: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.cfg, self.data, self.precision = trainer.cfg, trainer.data, trainer.precision
        self.model = model
        o = self.cfg.optim
        self.opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.x, self.y = trainer.data.train.images, trainer.data.train.labels  # before instrument()
        self.gen = torch.Generator().manual_seed(1)
        self.folder, self.writer, self.epoch = folder, SummaryWriter(str(folder / "tb")), 0
        self.classes = trainer.data.card.classes

    def run_epoch(self, clock: Clock) -> None:
        cfg, b, n = self.cfg, self.cfg.optim.batch_size, len(self.y)
        steps = n // b
        mean, std = self.data.mean, self.data.std
        self.model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=self.gen)
        loss_sum = torch.zeros(())
        clock.s["load"] += time.perf_counter() - t0
        for i in range(steps):
            t = time.perf_counter()
            idx = perm[i * b:(i + 1) * b]
            x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)
            t1 = time.perf_counter()
            x = random_crop(x, 4, self.gen, flip=True)
            t2 = time.perf_counter()
            for group in self.opt.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(cfg, self.epoch + i / steps)
            x = self.precision.layout((x.float() - mean) / std)
            with self.precision.autocast():
                logits, _ = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            loss_sum += loss.detach()
            t3 = time.perf_counter()
            self.opt.step()
            t4 = time.perf_counter()
            clock.s["load"] += t1 - t
            clock.s["augment"] += t2 - t1
            clock.s["forward_backward"] += t3 - t2
            clock.s["optimizer"] += t4 - t3
        t = time.perf_counter()
        self.model.eval()
        c = len(self.classes)
        confusion = torch.zeros(c * c)
        with torch.no_grad():
            test = self.data.test
            for start in range(0, len(test.labels), 512):
                x, y = test.images[start:start + 512], test.labels[start:start + 512]
                with self.precision.autocast():
                    logits, _ = self.model(self.precision.layout((x.float() - mean) / std))
                confusion += torch.bincount(y * c + logits.float().argmax(1), minlength=c * c)
        confusion = confusion.view(c, c)
        per_class = (100 * confusion.diagonal() / confusion.sum(1).clamp(min=1)).tolist()
        top1 = 100 * confusion.diagonal().sum().item() / confusion.sum().item()
        clock.s["eval"] += time.perf_counter() - t
        t = time.perf_counter()
        self.epoch += 1
        w = self.writer
        w.add_scalar("train/loss", loss_sum.item() / steps, self.epoch)
        w.add_scalar("train/lr", self.opt.param_groups[0]["lr"], self.epoch)
        w.add_scalar("test/top1", top1, self.epoch)
        for k, acc in enumerate(per_class):
            w.add_scalar(f"per_class/{k:03d}_{self.classes[k]}", acc, self.epoch)
        w.flush()
        clock.s["logging"] += time.perf_counter() - t
        t = time.perf_counter()
        with atomic_path(self.folder / "ckpt" / "last.pt") as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch}, tmp)
        clock.s["checkpoint"] += time.perf_counter() - t


def make_data(folder: Path, per_class: int, test_per_class: int) -> Path:
    """CIFAR-10 in its official python layout (procedural images), converted by the harness."""
    card = yaml.safe_load((ROOT / "datasets" / "cifar10.yaml").read_text())
    card["name"] = "cifar10bench"
    path = folder / "cifar10bench.yaml"
    path.write_text(yaml.safe_dump(card))
    write_cifar(folder / "source", 10, per_class=per_class, test_per_class=test_per_class,
                classes=card["classes"])
    threads = torch.get_num_threads()
    convert(load_card(str(path)), folder / "source", folder / "data", log=lambda *_: None)
    torch.set_num_threads(threads)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per contender (after one untimed each)")
    p.add_argument("--per-class", type=int, default=5000, help="training images per class before IF 100")
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "epoch.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="lt-epoch-"))
    try:
        card = make_data(folder, args.per_class, args.test_per_class)
        cfg = from_dict(RunConfig, {
            "data": {"dataset": str(card), "root": str(folder / "data"), "loader": "memory", "imbalance_factor": 100},
            "model": {"name": "resnet32", "compile": False},  # eager, as the bare loop: the same work
            "aug": {"name": "standard"},
            "schedule": {"epochs": 200, "warmup_epochs": 5},
            "log": {"print_every": 0, "images": False}, "dist": {"precision": args.precision}})
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = Trainer(cfg, folder / "run")
        bare = Bare(trainer, copy.deepcopy(trainer.model), folder / "bare")
        trainer.record.log = lambda message: None  # its console line is the same print either way
        harness_clock = Clock()
        instrument(trainer, harness_clock)
        images = len(trainer.data.train.base.labels)
        times = {"harness": [], "bare": []}
        phases = {"harness": defaultdict(list), "bare": defaultdict(list)}
        order = ["harness", "bare"]
        for e in range(args.epochs + 1):
            for who in (order if e % 2 == 0 else order[::-1]):
                clock = harness_clock if who == "harness" else Clock()
                clock.s.clear()
                t0 = time.perf_counter()
                if who == "harness":
                    trainer.run_epoch()
                else:
                    bare.run_epoch(clock)
                total = time.perf_counter() - t0
                s = dict(clock.s)
                if who == "harness":  # the step's own time, less what it spent augmenting and stepping
                    s["forward_backward"] = s.pop("step", 0.0) - s.get("augment", 0.0) - s.get("optimizer", 0.0)
                s["other"] = total - sum(s.get(k, 0.0) for k in PHASES if k != "other")
                if e:  # the first epoch of each warms caches and kernels
                    times[who].append(total)
                    for k in PHASES:
                        phases[who][k].append(s.get(k, 0.0))
        med = {w: statistics.median(t) for w, t in times.items()}
        ratio = med["bare"] / med["harness"]
        print(f"one epoch of {images} images (ResNet-32, batch 128, {trainer.precision}), "
              f"median of {args.epochs} alternating epochs, {args.threads} threads")
        print(f"{'phase':<18}{'harness s':>10}{'bare s':>10}")
        for k in PHASES:
            print(f"{k:<18}{statistics.median(phases['harness'][k]):>10.2f}{statistics.median(phases['bare'][k]):>10.2f}")
        print(f"{'epoch':<18}{med['harness']:>10.2f}{med['bare']:>10.2f}")
        print(f"bare / harness = {ratio:.3f} (target >= 0.95); harness {images / med['harness']:.0f} img/s, "
              f"bare {images / med['bare']:.0f} img/s")
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "load_average": os.getloadavg()},
            "config": vars(args), "train_images": images, "precision": str(trainer.precision),
            "epoch_s": {w: t for w, t in times.items()}, "median_epoch_s": med, "ratio": ratio, "target": 0.95,
            "phases_median_s": {w: {k: statistics.median(v) for k, v in ph.items()} for w, ph in phases.items()},
            "images_per_s": {w: images / m for w, m in med.items()},
        }
        atomic_write_json(args.out, result, indent=2)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
