"""Launchers: the same job runs in this process (debug), as local processes (local) or as
SLURM array tasks (slurm); the trainer does not know which.

A job is a picklable `TrainJob(run_dir)`: it reads the cell's config from its folder, trains,
and records its state there. SIGUSR2/SIGTERM ask it to stop after the current step with a
checkpoint. Under SLURM, SIGUSR2 (the warning before the time limit or a preemption) then
requeues the job, which resumes from that checkpoint; SIGTERM (scancel) just stops it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import submitit

from harness.state import RESULT, mark_running, read_config, read_state, update_state

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


def job_id() -> str | None:
    """The scheduler's id for this job (array jobs: <array>_<task>), if any."""
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return os.environ.get("SLURM_JOB_ID")


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def under_slurm() -> bool:
    """Whether this process is a task of a SLURM job that submitit launched."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


class TrainJob(submitit.helpers.Checkpointable):
    """Train the cell whose folder is `run_dir`; resumable, so requeueing is just running again."""

    def __init__(self, run_dir: str | Path, max_requeues: int | None = None):
        self.run_dir = str(run_dir)
        self.max_requeues = max_requeues
        self.stop_signal: str | None = None
        self.trainer = None

    def __call__(self) -> dict:
        from harness.engine import Preempted, Trainer

        if read_state(self.run_dir)["state"] == "finished":  # a requeue that raced the end
            return self._summary(json.loads((Path(self.run_dir) / RESULT).read_text()))
        threads = os.environ.get("LT_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        main = rank() == 0
        if main:
            mark_running(self.run_dir, job_id())
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            self.trainer = Trainer(read_config(self.run_dir), self.run_dir)
            self.trainer.stop_requested = self.stop_signal is not None
            result = self.trainer.train()
        except Preempted as e:
            self._preempted(e, main)
            raise
        except BaseException as e:
            # every rank records its failure; the first one is the cause (a rank that raises fails
            # before its peers notice it is gone), so a later one leaves it in place
            if read_state(self.run_dir)["state"] != "failed":
                message = f"{type(e).__name__}: {e}".splitlines()[0]
                update_state(self.run_dir, state="failed", error=message if main else f"rank {rank()}: {message}",
                             traceback=traceback.format_exc()[-4000:])
            raise
        finally:
            self.trainer = None
            for s, handler in previous.items():
                signal.signal(s, handler)
        if main:
            update_state(self.run_dir, state="finished", error=None)
        return self._summary(result)

    @staticmethod
    def _summary(result: dict) -> dict:
        return {"top1": result["final"]["top1"], "signature": result["signature"]}

    def _on_signal(self, signum, frame) -> None:
        """Ask the trainer to stop after the current step (it saves a checkpoint first)."""
        self.stop_signal = signal.Signals(signum).name
        print(f"received {self.stop_signal}: checkpointing after this step", flush=True)
        if self.trainer is not None:
            self.trainer.stop_requested = True

    def _preempted(self, error: Exception, main: bool) -> None:
        """After the stop checkpoint: requeue on SIGUSR2 under SLURM, else record the interruption."""
        if self.stop_signal == "SIGUSR2" and under_slurm():
            if not main:  # rank 0 requeues the whole job; exiting leaves no submitit result behind
                raise SystemExit(-1)
            from harness.slurm import requeue
            if requeue(self.run_dir, job_id(), self.max_requeues):
                print(f"{error}: requeued {job_id()}, the next run resumes from this checkpoint", flush=True)
                raise SystemExit(-1)
        elif main and read_state(self.run_dir)["state"] != "cancelled":
            update_state(self.run_dir, state="interrupted", error=str(error))

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """submitit's own SIGUSR2 handler (a signal outside training): count the requeue, or stop."""
        from harness.slurm import count_requeue
        if not count_requeue(self.run_dir, self.max_requeues):
            return None
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir, self.max_requeues))


def run_debug(run_dirs: list[Path]) -> None:
    """Every cell in this process, one after the other (a breakpoint works)."""
    for run_dir in run_dirs:
        try:
            TrainJob(run_dir)()
        except KeyboardInterrupt:
            raise
        except Exception:
            say_failed(run_dir)


def say_failed(run_dir: Path, fallback: str = "no error recorded") -> None:
    """One line on stderr; the traceback stays in the cell's state.json."""
    error = read_state(run_dir).get("error") or fallback
    print(f"[{Path(run_dir).name}] FAILED: {error} (traceback in {Path(run_dir) / 'state.json'})",
          file=sys.stderr, flush=True)


def run_local(run_dirs: list[Path], folder: Path, parallel: int = 1, timeout_min: int = 24 * 60) -> None:
    """Every cell as a local process (submitit's LocalExecutor), `parallel` at a time, their
    output followed on this terminal. Ctrl-C stops them with a checkpoint."""
    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=timeout_min)
    os.environ["LT_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    queue, running, offsets = list(run_dirs), {}, {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                run_dir = queue.pop(0)
                job = executor.submit(TrainJob(run_dir))
                update_state(run_dir, state="submitted", job_id=job.job_id, backend="local")
                running[run_dir] = job
                offsets[run_dir] = 0
            time.sleep(0.5)
            for run_dir, job in list(running.items()):
                offsets[run_dir] = _follow(job.paths.stdout, offsets[run_dir])
                if job.done():
                    offsets[run_dir] = _follow(job.paths.stdout, offsets[run_dir])
                    del running[run_dir]
                    if read_state(run_dir)["state"] != "finished":
                        say_failed(run_dir, _last_error(job))
    except KeyboardInterrupt:
        for run_dir, job in running.items():
            if job.state == "RUNNING" or not job.done():
                os.kill(int(job.job_id), signal.SIGUSR2)
        for run_dir, job in running.items():
            _wait(job, 60)
        raise


def _follow(path: Path, offset: int) -> int:
    """Print what was appended to `path` since `offset`; return the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    end = chunk.rfind(b"\n") + 1
    if end:
        sys.stdout.write(chunk[:end].decode(errors="replace"))
        sys.stdout.flush()
    return offset + end


def _wait(job, seconds: float) -> None:
    deadline = time.time() + seconds
    while not job.done() and time.time() < deadline:
        time.sleep(0.2)


def _last_error(job) -> str:
    try:
        lines = [l for l in Path(job.paths.stderr).read_text().splitlines() if l.strip()]
        return lines[-1] if lines else "no error output"
    except OSError:
        return "no error output"
