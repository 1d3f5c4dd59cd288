"""The one trainer: every loss, model, augmentation and launcher is a part it is handed.

    Trainer(cfg, run_dir).train()  ->  run_dir/{config.yaml, tb/, ckpt/last.pt, result.json}

It does not care how it was launched: a single CPU process, a SLURM task or a torchrun rank.
Only rank 0 writes. A checkpoint is written atomically at the end of every epoch and when a
stop is requested (preemption); starting the same run again resumes from it.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from harness import deepspeed_engine, dist, tblog
from harness.config import RunConfig, to_dict
from harness.data import atomic_write_text, build_data
from harness.losses import LOSSES
from harness.models import build_model, resolve_head
from harness.progress import Progress
from harness.registry import ConfigError
from harness.stages import stage_config, stage_model

RESULT = "result.json"
CHECKPOINT = "ckpt/last.pt"
PROGRESS = "progress.json"


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, ...); the message says what to change."""


class Preempted(Exception):
    """A stop was requested; a checkpoint was saved and the run can be resumed."""


def code_version() -> str:
    """The git commit the code ran with (plus '-dirty' for uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lr_factor(cfg: RunConfig, t: float) -> float:
    """The lr multiplier at fractional epoch t: linear warm-up, then step or cosine decay."""
    s = cfg.schedule
    if t < s.warmup_epochs:
        return (t + 1e-8) / s.warmup_epochs if s.warmup_epochs else 1.0
    if s.decay == "cosine":
        span = max(s.epochs - s.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - s.warmup_epochs) / span)))
    if s.decay == "step":
        marks = [m * s.epochs if m < 1 else m for m in s.milestones]
        return s.gamma ** sum(t >= m for m in marks)
    return 1.0


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, env: dist.DistEnv | None = None):
        self.run_config = cfg  # the cell's config, as its folder stores it
        cfg = stage_config(cfg)  # what this run trains with: a second stage trains a new classifier
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env = env or dist.init(cfg.dist.timeout_s)
        self.device = self.env.device
        dist.per_rank_batch(cfg.optim.batch_size, self.env.world_size)  # the global batch must split evenly
        torch.manual_seed(cfg.seed)
        self.data = build_data(cfg, self.device, self.env.rank, self.env.world_size)
        counts = torch.tensor(self.data.counts, dtype=torch.float32, device=self.device)
        self.criterion = LOSSES.build(cfg.loss.name, cfg.loss.params, class_counts=counts).to(self.device)
        head = resolve_head(cfg.model.head, type(self.criterion))
        model = build_model(cfg.model.name, self.data.card.num_classes, head).to(self.device)
        model = stage_model(self.run_config, self.run_dir, model)  # a second stage: the first stage's weights
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda and cfg.model.channels_last  # CUDA only; the CPU keeps NCHW
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.bf16 = cfg.dist.precision == "bf16" or (cfg.dist.precision == "auto" and self.cuda)
        self.deepspeed = self.env.distributed and cfg.dist.engine == "deepspeed"  # one process needs no engine
        self.model = model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self._peak_lr(), momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
        self.net = self._wrap(model)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + self.env.rank)
        self.steps_per_epoch = len(self.data.train)
        self.epoch, self.step_in_epoch, self.history = 0, 0, []
        self.stop_requested = False  # set from a signal handler: finish the step, save, stop
        self.resume()
        self.writer = None
        if self.env.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.epoch + 1 if self.epoch else None)
            if cfg.log.images and not (self.epoch or self.step_in_epoch):
                source = self.data.train if hasattr(self.data.train, "images") else self.data.test
                tblog.log_samples(self.writer, source.images, source.labels, self.data.augment,
                                  self.device, cfg.seed, self.data.synthetic_counts)

    # -- set-up ----------------------------------------------------------------------------
    def _peak_lr(self) -> float:
        o = self.cfg.optim
        return o.lr * (self.env.world_size if o.scale_lr else 1)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as the training step calls it: plain, DDP or DeepSpeed; compiled on CUDA."""
        if self.env.distributed and self.cfg.dist.sync_bn:
            if not self.cuda:
                raise ConfigError("dist.sync_bn: SyncBatchNorm runs on GPUs only; set dist.sync_bn: false "
                                  "on the CPU")
            model = self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # keeps the parameters
        if self.deepspeed:
            model = deepspeed_engine.wrap(model, self.optimizer, self.cfg, self.env.world_size)
        elif self.env.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None)
        if self.cfg.model.compile and self.cuda:
            if self.deepspeed:
                model.compile()  # DeepSpeed's engine compiles its module in place
            else:
                model = torch.compile(model)
        return model

    # -- one step, one epoch, evaluation -----------------------------------------------------
    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.data.mean) / self.data.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        """bf16 autocast (CUDA, or the CPU when asked for), under DDP and DeepSpeed alike."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = self.data.batch_augment(x, y, self.gen)
        with self._autocast():
            logits, features = self.net(self._inputs(batch.x))
        logits, features = logits.float(), features.float()
        loss = self.criterion(logits, batch.y, features)
        if batch.y2 is not None:
            loss = batch.lam * loss + (1 - batch.lam) * self.criterion(logits, batch.y2, features)
        if self.deepspeed:  # its engine reduces the gradients over the ranks and steps the shards
            self.net.backward(loss)
            self.net.step()
        else:  # DDP reduces the gradients during backward
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def train_epoch(self) -> dict:
        self.net.train()
        self.criterion.set_epoch(self.epoch, self.cfg.schedule.epochs)
        self.data.train.set_epoch(self.epoch)
        loss_sum, steps, t0 = torch.zeros((), device=self.device), 0, time.time()
        every = self.cfg.log.print_every
        bar = Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs} step",
                       every, self.log, self.step_in_epoch, enabled=self.env.is_main)
        for i, (x, y) in enumerate(self.data.train):
            if i < self.step_in_epoch:  # resuming inside an epoch: skip the batches done
                continue
            for group in self.optimizer.param_groups:
                group["lr"] = self._peak_lr() * lr_factor(self.cfg, self.epoch + i / self.steps_per_epoch)
            loss_sum += self.train_step(x, y)
            steps += 1
            self.step_in_epoch = i + 1
            bar.update(self.step_in_epoch, lambda: f"loss {loss_sum.item() / steps:.4f}")
            if every and self.step_in_epoch % every == 0:  # every rank, at the same step
                self._check_finite(loss_sum)
            if self.step_in_epoch < self.steps_per_epoch and self.stop_agreed():  # at the end: after eval
                self.save_checkpoint()
                raise Preempted(f"stopped at epoch {self.epoch} step {self.step_in_epoch}")
        bar.close()
        loss = dist.all_reduce_sum(loss_sum) / (max(steps, 1) * self.env.world_size)  # over the ranks
        self._check_finite(loss)
        elapsed = time.time() - t0
        return {"loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": steps * self.cfg.optim.batch_size / max(elapsed, 1e-9), "time_s": elapsed}

    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        if not torch.isfinite(loss_sum):
            raise TrainingError(f"loss is {loss_sum.item()} at epoch {self.epoch + 1} step "
                                f"{self.step_in_epoch}; lower optim.lr or check loss.params")

    @torch.no_grad()
    def evaluate(self, loader=None) -> dict:
        """Top-1, per-class and many/medium/few-shot accuracy (%) on the balanced test set (or
        `loader`'s split), and the confusion matrix (counts; true class down, predicted across)."""
        self.net.eval()
        c = self.data.card.num_classes
        confusion = torch.zeros(c * c, device=self.device)
        for x, y in loader or self.data.test:
            with self._autocast():
                logits, _ = self.net(self._inputs(x))
            pred = self.criterion.adjust_logits(logits.float()).argmax(1)
            confusion += torch.bincount(y * c + pred, minlength=c * c)
        dist.all_reduce_sum(confusion)
        confusion = confusion.view(c, c)
        correct, total = confusion.diagonal(), confusion.sum(1)
        per_class = (100 * correct / total.clamp(min=1)).tolist()
        out = {"top1": 100 * correct.sum().item() / max(total.sum().item(), 1), "per_class": per_class,
               "confusion": confusion.long().tolist()}
        for group in ("many", "medium", "few"):
            accs = [a for a, g in zip(per_class, self.data.groups) if g == group]
            out[group] = sum(accs) / len(accs) if accs else None
        return out

    # -- the outer loop --------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        if self.env.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.run_config), sort_keys=False))
            self.log(f"training {cfg.loss.name} on {self.data.card.name} "
                     f"(IF {cfg.data.imbalance_factor:g}, {len(self.data.indices)} images, "
                     f"counts {self.data.counts[0]}..{self.data.counts[-1]}) for {cfg.schedule.epochs} epochs"
                     + (f", resuming at epoch {self.epoch + 1}" if self.epoch or self.step_in_epoch else ""))
        t_start, metrics = time.time(), None
        while self.epoch < cfg.schedule.epochs:
            stats = self.train_epoch()
            metrics = self.evaluate()
            row = {"epoch": self.epoch + 1, **stats,
                   **{k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}}
            if self.data.val is not None:  # model selection on a validation split
                row["val_top1"] = self.evaluate(self.data.val)["top1"]
            self.history.append(row)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.log_epoch(row, metrics)
            self.save_checkpoint()
            self.save_progress()
            if self.stop_agreed() and self.epoch < cfg.schedule.epochs:
                raise Preempted(f"stopped after epoch {self.epoch}")
        # a run killed between its last checkpoint and its result evaluates the saved model again
        result = self.result(metrics or self.evaluate(), time.time() - t_start)
        if self.env.is_main:
            atomic_write_text(self.run_dir / RESULT, json.dumps(result, indent=2))
            self.writer.close()
            tblog.write_hparams(self.run_dir)
        dist.barrier()
        return result

    def result(self, last: dict, wall_s: float) -> dict:
        select = "val_top1" if self.data.val is not None else "top1"  # the best epoch, chosen on eval_split
        best = max(self.history, key=lambda r: r[select], default={"epoch": 0, **last})  # 0 epochs: tau_norm
        keys = ("top1", "many", "medium", "few")
        return {
            "signature": self.run_dir.name,
            "status": "finished",
            "config": to_dict(self.run_config),
            "code_version": code_version(),
            "epochs": self.epoch,
            "world_size": self.env.world_size,
            "eval_split": self.data.eval_split,
            "class_counts": self.data.counts,
            "synthetic_counts": self.data.synthetic_counts,
            "train_images": int(len(self.data.indices)),
            "final": {k: last[k] for k in keys},
            "best": {"epoch": best["epoch"], **{k: best[k] for k in keys}},
            "per_class": last["per_class"],
            "history": self.history,
            "wall_s": wall_s,
        }

    # -- logging, checkpoints --------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.env.is_main:
            print(f"[{self.run_dir.name}] {message}", flush=True)

    def log_epoch(self, row: dict, metrics: dict) -> None:
        def fmt(v):
            return "  -  " if v is None else f"{v:5.1f}"
        self.log(f"epoch {row['epoch']}/{self.cfg.schedule.epochs} loss {row['loss']:.4f} "
                 f"top1 {fmt(row['top1'])} many {fmt(row['many'])} medium {fmt(row['medium'])} "
                 f"few {fmt(row['few'])} ({row['images_per_s']:.0f} img/s, {row['time_s']:.1f}s)")
        if self.writer:
            tblog.log_epoch(self.writer, row, metrics, self.data.card.classes, self.data.counts,
                            self.cfg.schedule.epochs, figures=self.cfg.log.images)

    def state_dict(self) -> dict:
        """What a resume needs, independent of the world size and the engine; every rank calls it
        (DeepSpeed's shards and the ranks' generators are gathered)."""
        if self.deepspeed:
            model, optimizer = deepspeed_engine.full_state(self.model, self.optimizer)
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        return {"model": model, "optimizer": optimizer,
                "criterion": self.criterion.state_dict(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "history": self.history,
                "generators": dist.all_gather_object(self.gen.get_state()), "world_size": self.env.world_size}

    def stop_agreed(self) -> bool:
        """Whether any rank was asked to stop; all ranks agree, so they stop at the same step."""
        if not self.env.distributed:
            return self.stop_requested
        flag = torch.tensor(float(self.stop_requested), device=self.device)
        return dist.all_reduce_sum(flag).item() > 0

    def save_progress(self) -> None:
        """progress.json: epochs done and top-1 so far (read by `tools/sweep.py --status`)."""
        if self.env.is_main:
            atomic_write_text(self.run_dir / PROGRESS, json.dumps({
                "epoch": self.epoch, "epochs": self.cfg.schedule.epochs, "top1": self.history[-1]["top1"],
                "best_top1": max(r["top1"] for r in self.history)}))

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.env.is_main:
            atomic_save(state, self.run_dir / CHECKPOINT)
        dist.barrier()

    def resume(self) -> None:
        """Every rank loads the checkpoint rank 0 found, if any; one saved at any world size will do."""
        path = self.run_dir / CHECKPOINT
        if not dist.broadcast_object(path.is_file()):
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        if self.deepspeed:
            deepspeed_engine.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.criterion.load_state_dict(state["criterion"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.history = state["history"]
        generators = state.get("generators", [])
        if len(generators) == self.env.world_size:  # the same ranks again: each takes up its own stream
            self.gen.set_state(generators[self.env.rank])


def train(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train one cell in this process (the job function every launcher calls)."""
    trainer = Trainer(cfg, run_dir)
    try:
        return trainer.train()
    finally:
        sys.stdout.flush()
