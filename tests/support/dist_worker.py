"""One rank of a multi-process test: `python tests/support/dist_worker.py <mode> <run_dir> [args]`.

Rank, world size and rendezvous come from the environment (RANK/WORLD_SIZE/MASTER_ADDR/...),
exactly as `harness.dist.init` reads them under torchrun. LT_DEFAULT_DTYPE=float64 builds the
model in float64.

    steps <run_dir> <n> <out_dir>   n training steps with batch norm frozen, then a checkpoint;
                                    out_dir gets the initial weights, the state a fresh trainer
                                    resumes from that checkpoint, and each rank's data shares
    job <run_dir>                   the real job function, TrainJob(run_dir)(); with LT_FAIL_RANK
                                    and LT_FAIL_STEP set, that rank raises at that step
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from harness.run.trainer import Trainer  # noqa: E402
from harness.rundir import RunDir
from harness.sweep.job import TrainJob  # noqa: E402


def freeze_batch_norm(net: torch.nn.Module) -> None:
    """Train mode, but batch norm normalises with its stored statistics: no batch dependence."""
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def shares(trainer: Trainer) -> dict:
    """The positions each loader hands this rank: training (epochs 0 and 1) and test."""
    train = trainer.data.train
    out = {"train": [], "test": trainer.data.test.indices().tolist()}
    for epoch in (0, 1):
        train.set_epoch(epoch)
        out["train"].append(train.indices().tolist())
    train.set_epoch(0)
    return out


def run_steps(run_dir: str | Path, steps: int, out_dir: str | Path) -> None:
    """`steps` steps, then a checkpoint (every rank joins), then a fresh trainer that resumes from it."""
    out_dir = Path(out_dir)
    cfg = RunDir(run_dir).read_config()
    trainer = Trainer(cfg, run_dir)
    if trainer.env.is_main:
        torch.save(trainer.model.state_dict(), out_dir / "init.pt")
    freeze_batch_norm(trainer.net)
    for i, (x, y) in enumerate(trainer.data.train):
        if i == steps:
            break
        trainer.train_step(x, y)
    trainer.step_in_epoch = steps
    trainer.checkpoint.save(trainer)
    fresh = Trainer(cfg, run_dir)
    reloaded = fresh.checkpoint.state_dict(fresh)
    torch.save(shares(trainer), out_dir / f"shares{trainer.env.rank}.pt")
    if trainer.env.is_main:
        torch.save(reloaded, out_dir / "reloaded.pt")


def run_job(run_dir: str) -> None:
    fail_rank, fail_step = os.environ.get("LT_FAIL_RANK"), int(os.environ.get("LT_FAIL_STEP", 0))
    if fail_rank is not None and os.environ["RANK"] == fail_rank:
        step = Trainer.train_step

        def failing_step(self, x, y):
            if self.step_in_epoch + 1 == fail_step:
                raise RuntimeError(f"injected failure on rank {fail_rank} at step {fail_step}")
            return step(self, x, y)

        Trainer.train_step = failing_step
    TrainJob(run_dir)()


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.set_default_dtype(getattr(torch, os.environ.get("LT_DEFAULT_DTYPE", "float32")))
    mode, *args = sys.argv[1:]
    if mode == "steps":
        run_steps(args[0], int(args[1]), args[2])
    else:
        run_job(args[0])
