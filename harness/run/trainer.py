"""The one trainer: every loss, model, augmentation and launcher is a part it is handed.

    Trainer(cfg, run_dir).train()  ->  run_dir/{config.yaml, tb/, ckpt/last.pt, progress.json, result.json}
                                       (and ckpt/best.pt with a validation split)

It does not care how it was launched: a single CPU process, a SLURM task or a torchrun rank.
Only rank 0 writes (the Recorder). A checkpoint is written atomically at the end of every epoch
and when a stop is requested (preemption); starting the same run again resumes from it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness import dist
from harness.config import RunConfig
from harness.data.build import Data, build_data
from harness.losses import LOSSES, Loss
from harness.metrics import METRICS, summarize
from harness.models import build_model, loss_options, resolve_head
from harness.run import record
from harness.run.checkpoint import Checkpointer
from harness.run.optim import build_optimizer, lr_factor, peak_lr
from harness.run.record import Recorder
from harness.run.wrap import Precision, choose_precision, uses_deepspeed, wrap
from harness.rundir import RunDir
from harness.stages import fixed_backbone, stage_config, stage_data, stage_fit, stage_head, stage_hook, stage_model


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, ...); the message says what to change."""


class Preempted(Exception):
    """A stop was requested; a checkpoint was saved and the run can be resumed."""


class Trainer:
    """One run of one cell: set up from its config, then `train()`."""

    run_config: RunConfig        # the cell's config, as its folder stores it
    cfg: RunConfig               # what this run trains with (a second stage: see harness.stages)
    run_dir: RunDir
    env: dist.DistEnv            # rank, world size, device
    data: Data                   # loaders, class counts, augmentation, normalisation
    criterion: Loss
    model: torch.nn.Module       # the plain module: what checkpoints hold
    net: torch.nn.Module         # what the step calls: the model, DDP or DeepSpeed around it
    optimizer: torch.optim.Optimizer
    precision: Precision         # bf16 autocast, channels_last
    gen: torch.Generator         # this rank's augmentation stream
    after_step: Callable         # a second stage's hook after every step (maxnorm's projection), else nothing
    tau_search: dict | None      # tau_norm with tau search: the τ chosen on the validation split (stage_fit)
    fixed_features: dict         # a second stage on a fixed backbone: its features of each evaluation split, kept
    checkpoint: Checkpointer
    record: Recorder
    epoch: int                   # epochs finished
    step_in_epoch: int           # steps finished in the current epoch (a resume inside an epoch)
    epoch_loss: tuple            # (loss sum, steps) of those steps on this rank: the epoch's loss counts them
    history: list                # one row of metrics per finished epoch
    stop_requested: bool         # set from a signal handler: finish the step, save, stop

    def __init__(self, cfg: RunConfig, run_dir: str | Path, env: dist.DistEnv | None = None):
        self.run_config, self.cfg = cfg, stage_config(cfg)
        cfg = self.cfg
        self.run_dir = RunDir(run_dir)
        self.env = env or dist.init(cfg.dist.timeout_s)
        self.device = self.env.device
        dist.per_rank_batch(cfg.optim.batch_size, self.env.world_size)  # the global batch must split evenly
        torch.manual_seed(cfg.seed)
        self.data = build_data(cfg, self.device, self.env.rank, self.env.world_size)
        counts = torch.tensor(self.data.counts, dtype=torch.float32, device=self.device)
        self.criterion = LOSSES.build(cfg.loss.name, cfg.loss.params, class_counts=counts).to(self.device)
        self.criterion.views = self.data.augment.n_views  # the batch's rows: V views of each image, view-major
        head = resolve_head(cfg.model.head, type(self.criterion))
        model = build_model(cfg.model.name, self.data.card.num_classes, head, cfg.model.params,
                            **stage_head(self.run_config, loss_options(type(self.criterion)))).to(self.device)
        model = stage_model(self.run_config, self.run_dir.path, model)  # a second stage: the first stage's weights
        self.data = stage_data(self.run_config, self.run_dir, self.data, model, self.env)  # ldmlr: feature batches
        self.after_step = stage_hook(self.run_config, model)  # maxnorm: the projection of the classifier
        self.precision = choose_precision(cfg, self.device, uses_deepspeed(cfg, self.env))
        model = self.precision.prepare(model)
        self.optimizer = build_optimizer(model, cfg, self.env.world_size)
        self.steps_per_epoch = len(self.data.train)
        self.model, self.net = wrap(model, self.optimizer, cfg, self.env, self.steps_per_epoch * cfg.schedule.epochs)
        self.tau_search = stage_fit(self.run_config, self.model, self.data.val, self.features)  # tau_norm's τ on val
        self.fixed_features = {}
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + self.env.rank)
        self.epoch, self.step_in_epoch, self.history, self.epoch_loss = 0, 0, [], (0.0, 0)
        self.stop_requested = False
        self.checkpoint = Checkpointer(self.run_dir, self.env, uses_deepspeed(cfg, self.env))
        self.checkpoint.resume(self)
        self.record = Recorder(self.run_dir, self.env, cfg, self.data, resumed_at=self.epoch)

    # -- one step, one epoch, evaluation -----------------------------------------------------
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalised float inputs in the run's memory layout."""
        return self.precision.layout((x.float() - self.data.mean) / self.data.std)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = self.data.batch_augment(x, y, self.gen)
        with self.precision.autocast():
            logits, features = self.net(batch.x if self.data.features else self.inputs(batch.x))
        logits, features = logits.float(), features.float()
        loss = self.criterion(logits, batch.y, features)
        if batch.y2 is not None:  # mixup, cutmix: the partner's label with weight 1 - lam
            loss = batch.lam * loss + (1 - batch.lam) * self.criterion(logits, batch.y2, features)
        if self.checkpoint.deepspeed:  # its engine reduces the gradients over the ranks and steps the shards
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
        done_sum, done = self.epoch_loss if self.step_in_epoch else (0.0, 0)  # resumed inside the epoch
        loss_sum, steps, t0 = torch.tensor(done_sum, device=self.device), done, time.time()
        every, lr = self.cfg.log.print_every, peak_lr(self.cfg, self.env.world_size)
        bar = self.record.bar(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs} step",
                              self.step_in_epoch)
        for i, (x, y) in enumerate(self.data.train):
            if i < self.step_in_epoch:  # resuming inside an epoch: skip the batches done
                continue
            for group in self.optimizer.param_groups:
                group["lr"] = lr * lr_factor(self.cfg, self.epoch + i / self.steps_per_epoch)
            loss_sum += self.train_step(x, y)
            steps += 1
            self.step_in_epoch = i + 1
            self.after_step(self.model, self.step_in_epoch == self.steps_per_epoch)
            bar.update(self.step_in_epoch, lambda: f"loss {loss_sum.item() / steps:.4f}")
            if every and self.step_in_epoch % every == 0:  # every rank, at the same step
                self.check_finite(loss_sum)
            if self.step_in_epoch < self.steps_per_epoch and self.stop_agreed():  # at the end: after eval
                self.epoch_loss = (loss_sum.item(), steps)
                self.checkpoint.save(self)
                raise Preempted(f"stopped at epoch {self.epoch} step {self.step_in_epoch}")
        bar.close()
        loss = dist.all_reduce_sum(loss_sum) / (max(steps, 1) * self.env.world_size)  # over the ranks
        self.check_finite(loss)
        elapsed = time.time() - t0
        return {"loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": (steps - done) * self.cfg.optim.batch_size / max(elapsed, 1e-9), "time_s": elapsed}

    def check_finite(self, loss_sum: torch.Tensor) -> None:
        if not torch.isfinite(loss_sum):
            raise TrainingError(f"loss is {loss_sum.item()} at epoch {self.epoch + 1} step "
                                f"{self.step_in_epoch}; lower optim.lr or check loss.params")

    @torch.no_grad()
    def evaluate(self, loader=None) -> dict:
        """harness.metrics.summarize on the balanced test set (or `loader`'s split), over all ranks.
        A multi-expert model's metrics also hold each expert's own under "experts" (top-1, many,
        medium, few of its logits alone); the others are the ensemble's (criterion.adjust_logits)."""
        self.net.eval()
        c, k = self.data.card.num_classes, getattr(self.model, "num_experts", 0)
        confusion = torch.zeros((1 + k) * c * c, device=self.device)  # the prediction's, then each expert's
        for x, y in self.eval_batches(loader or self.data.test):
            with self.precision.autocast():
                logits, _ = self.net(x)
            preds = self.criterion.adjust_logits(logits.float()).argmax(1).unsqueeze(0)
            if k:  # expert logits [B, K, C]
                preds = torch.cat([preds, logits.argmax(2).T])
            cells = (torch.arange(1 + k, device=self.device).unsqueeze(1) * c + y) * c + preds
            confusion += torch.bincount(cells.flatten(), minlength=(1 + k) * c * c)
        dist.all_reduce_sum(confusion)
        metrics, *experts = (summarize(m.view(c, c).tolist(), self.data.counts) for m in confusion.view(1 + k, -1))
        if experts:
            metrics["experts"] = [{m: e[m] for m in METRICS} for e in experts]
        return metrics

    def eval_batches(self, loader):
        """The model's inputs and labels of `loader`'s batches. A second stage on a fixed backbone
        (frozen with its BatchNorm in eval mode: crt, linear, maxnorm, ldmlr) gets the backbone's
        features instead, computed at the first evaluation and kept, since they cannot change: the
        frozen module passes them through (stages.Frozen), and ldmlr's 400 epochs do not run the
        backbone over the test set 400 times."""
        if not fixed_backbone(self.model):
            return ((self.inputs(x), y) for x, y in loader)
        if id(loader) not in self.fixed_features:
            self.fixed_features[id(loader)] = [(self.features(x), y) for x, y in loader]
        return self.fixed_features[id(loader)]

    @torch.no_grad()
    def test_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits of uint8 images in eval mode, on this rank alone (criterion.fit_test_time)."""
        self.model.eval()
        with self.precision.autocast():
            return self.model(self.inputs(x))[0].float()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of uint8 images in eval mode, on this rank alone (stage_fit)."""
        self.model.eval()
        with self.precision.autocast():
            return self.model.backbone(self.inputs(x)).float()

    def stop_agreed(self) -> bool:
        """Whether any rank was asked to stop; all ranks agree, so they stop at the same step."""
        if not self.env.distributed:
            return self.stop_requested
        flag = torch.tensor(float(self.stop_requested), device=self.device)
        return dist.all_reduce_sum(flag).item() > 0

    # -- the outer loop --------------------------------------------------------------------
    def run_epoch(self) -> dict | None:
        """One epoch: train, evaluate (every log.eval_every epochs and after the last), record,
        checkpoint. Returns the evaluation's metrics, None after an epoch without one."""
        stats = self.train_epoch()
        epoch = self.epoch + 1
        every = self.cfg.log.eval_every
        evaluates = epoch == self.cfg.schedule.epochs or (every > 0 and epoch % every == 0)
        metrics = self.evaluate() if evaluates else None
        row = {"epoch": epoch, **stats, **{k: metrics[k] if metrics else None for k in METRICS}}
        if metrics and "experts" in metrics:  # a multi-expert model: each expert's top-1, many, medium, few
            row["experts"] = metrics["experts"]
        best = False
        if self.data.val is not None and metrics:  # model selection on a validation split: its best epoch is kept
            row["val_top1"] = self.evaluate(self.data.val)["top1"]
            best = row["val_top1"] > max((r.get("val_top1", -1.0) for r in self.history), default=-1.0)
        self.history.append(row)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.record.epoch(row, metrics, self.history)
        self.checkpoint.save(self, best=best)
        return metrics

    def train(self) -> dict:
        epochs = self.cfg.schedule.epochs
        self.record.start(self.run_config, bool(self.epoch or self.step_in_epoch), self.epoch, self.device)
        t_start, metrics = time.time(), None
        if self.tau_search:
            chosen = self.tau_search["tau"]
            self.record.log(f"tau search on the {self.tau_search['split']} split: tau {chosen:g} "
                            f"(val top-1 {self.tau_search['val_top1'][format(chosen, 'g')]:.2f})")
        while self.epoch < epochs:
            metrics = self.run_epoch()
            if self.stop_agreed() and self.epoch < epochs:
                raise Preempted(f"stopped after epoch {self.epoch}")
        fitted = self.criterion.fit_test_time(self.test_logits, self.data.test.images, self.cfg.seed)
        if fitted:  # transductive (SADE's aggregation, off unless the loss asks): saved, then evaluated
            self.record.log(fitted)
            # every rank fitted on the whole test set, each with its own BN statistics: all take rank 0's
            self.criterion.load_state_dict(dist.broadcast_object(
                {k: v.cpu() for k, v in self.criterion.state_dict().items()}))
            self.checkpoint.save(self)
            metrics = self.evaluate()
        # a run killed between its last checkpoint and its result evaluates the saved model again
        result = record.result(self.run_dir, self.run_config, self.data, self.history, metrics or self.evaluate(),
                               self.epoch, self.env.world_size, time.time() - t_start, self.tau_search)
        self.record.finish(result)
        dist.barrier()
        return result
