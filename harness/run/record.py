"""What a run tells the world, from rank 0 only: console lines, TensorBoard, progress.json and
the result.

    record = Recorder(run_dir, env, cfg, data, resumed_at=epoch)
    record.start(run_config, resuming)           # config.yaml (if the sweep did not write it), samples
    record.epoch(row, metrics, history)          # a console line, TensorBoard, progress.json
    record.finish(result)                        # result.json, then the run's HParams session

The result format (`result()`) is defined here, once: `tools/report.py`, `--status` and the
HParams dashboard read what it writes.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from harness import dist
from harness.config import RunConfig, to_dict
from harness.console import Progress
from harness.files import code_info
from harness.metrics import METRICS
from harness.run import tensorboard
from harness.rundir import RunDir


def code_version() -> str:
    """The git commit the code ran with (plus '-dirty' for uncommitted changes); for a job run
    from a sweep's code snapshot, the commit recorded when the snapshot was taken."""
    snapshot = code_info()
    if snapshot:
        return snapshot.get("git_commit") or "unknown"
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Recorder:
    """Console, TensorBoard, progress.json and result.json of one run; silent on ranks other than 0."""

    def __init__(self, run_dir: RunDir, env: dist.DistEnv, cfg: RunConfig, data, resumed_at: int = 0):
        self.run_dir, self.cfg, self.data, self.main = run_dir, cfg, data, env.is_main
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter
            run_dir.path.mkdir(parents=True, exist_ok=True)
            # TensorBoard hides the events of an earlier attempt from the step this one starts at
            # (0: a run started again from scratch), so no step of a tag is shown twice
            self.writer = SummaryWriter(str(run_dir.tensorboard), purge_step=resumed_at + 1 if resumed_at else 0)

    def log(self, message: str) -> None:
        if self.main:
            print(f"[{self.run_dir.name}] {message}", flush=True)

    def start(self, run_config: RunConfig, resuming: bool, resume_epoch: int, device) -> None:
        """The run's config (unless its sweep wrote it), a first line, and sample images of a new run."""
        if not self.main:
            return
        if not self.run_dir.has_config():
            self.run_dir.write_config(run_config)
        cfg, data = self.cfg, self.data
        self.log(f"training {cfg.loss.name} on {data.card.name} (IF {cfg.data.imbalance_factor:g}, "
                 f"{len(data.indices)} images, counts {data.counts[0]}..{data.counts[-1]}) for "
                 f"{cfg.schedule.epochs} epochs" + (f", resuming at epoch {resume_epoch + 1}" if resuming else ""))
        if cfg.log.images and not resuming:
            source = data.sample_source()
            tensorboard.log_samples(self.writer, source.images, source.labels, data.augment, device, cfg.seed,
                                    data.generated)

    def bar(self, total: int, desc: str, initial: int) -> Progress:
        """The step bar of one epoch (a line every log.print_every steps in logs)."""
        return Progress(total, desc, self.cfg.log.print_every, self.log, initial, enabled=self.main)

    def epoch(self, row: dict, metrics: dict, history: list) -> None:
        def fmt(v):
            return "  -  " if v is None else f"{v:5.1f}"
        if not self.main:
            return
        self.log(f"epoch {row['epoch']}/{self.cfg.schedule.epochs} loss {row['loss']:.4f} "
                 + " ".join(f"{m} {fmt(row[m])}" for m in METRICS)
                 + f" ({row['images_per_s']:.0f} img/s, {row['time_s']:.1f}s)")
        tensorboard.log_epoch(self.writer, row, metrics, self.data.card.classes, self.data.counts,
                              self.cfg.schedule.epochs, figures=self.cfg.log.images)
        evaluated = [r["top1"] for r in history if r["top1"] is not None]  # log.eval_every
        self.run_dir.write_progress({"epoch": row["epoch"], "epochs": self.cfg.schedule.epochs,
                                     "top1": evaluated[-1] if evaluated else None,
                                     "best_top1": max(evaluated, default=None)})

    def finish(self, result: dict) -> None:
        if not self.main:
            return
        self.writer.close()
        tensorboard.write_hparams(self.run_dir.path, result)  # before result.json: a finished run has both
        self.run_dir.write_result(result)


def result(run_dir: RunDir, run_config: RunConfig, data, history: list, last: dict, epochs: int,
           world_size: int, wall_s: float, tau_search: dict | None = None) -> dict:
    """result.json: the final and the best epoch's metrics, per-class accuracy, the history, and
    what the run was (config, code version, data). The best epoch is chosen on data.eval_split.
    A multi-expert model's final metrics and history rows also hold each expert's ("experts").
    tau_search: tau_norm's τ chosen on the validation split, {"tau", "split", "val_top1": {τ: %}}
    (harness.stages.stage_fit), else None."""
    select = "val_top1" if data.val is not None else "top1"
    rows = [r for r in history if r.get(select) is not None]  # the epochs evaluated (log.eval_every)
    best = max(rows, key=lambda r: r[select], default={"epoch": 0, **last})  # 0 epochs: tau_norm
    return {
        "signature": run_dir.name,
        "status": "finished",
        "config": to_dict(run_config),
        "code_version": code_version(),
        "code_snapshot": code_info().get("hash"),  # runs/.code/<hash>/ (harness.sweep.snapshot); None: a working tree
        "epochs": epochs,
        "world_size": world_size,
        "eval_split": data.eval_split,
        "class_counts": data.counts,
        "generated_counts": data.generated.counts if data.generated else None,
        "generated_features": data.generated_features,
        "tau_search": tau_search,
        "train_images": int(len(data.indices)),
        "final": {k: last[k] for k in METRICS},
        "best": {"epoch": best["epoch"], **{k: best[k] for k in METRICS}},
        "experts": last.get("experts"),  # a multi-expert model: each expert's final metrics (else None)
        "per_class": last["per_class"],
        "history": history,
        "wall_s": wall_s,
    }
