"""The job every backend runs for a cell: a picklable `TrainJob(run_dir)`.

It runs in this process (debug), as a local process (local) or as a SLURM array task (slurm);
the trainer does not know which. It reads the cell's config from its folder, trains, and
records its state there. SIGUSR2/SIGTERM ask it to stop after the current step with a
checkpoint. Under SLURM, SIGUSR2 (the warning before the time limit or a preemption) then
requeues the job, which resumes from that checkpoint; SIGTERM (scancel) just stops it.
"""
from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path

import submitit

from harness.files import code_info
from harness.rundir import CheckpointError, RunDir
from harness.sweep import scheduler
from harness.topology import topology

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


def job_id() -> str | None:
    """The scheduler's id for this job (array jobs: <array>_<task>), if any."""
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return os.environ.get("SLURM_JOB_ID")


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
        from harness.run.trainer import Preempted, Trainer

        run_dir = RunDir(self.run_dir)
        if run_dir.read_state()["state"] == "finished":  # a requeue that raced the end
            return self._summary(run_dir.read_result())
        threads = os.environ.get("LT_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        rank = topology().rank
        main = rank == 0
        if main:
            run_dir.mark_running(job_id())
            run_dir.remove_stale_temporaries()
            print(f"[{run_dir.name}] code: " + (f"snapshot {code_info()['hash']}" if code_info() else
                                                "the working tree (no snapshot)") + f", {Path(__file__).parents[1]}",
                  flush=True)
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            self.trainer = Trainer(run_dir.read_config(), run_dir.path)
            self.trainer.stop_requested = self.stop_signal is not None
            result = self.trainer.train()
        except Preempted as e:
            self._preempted(e, main)
            raise
        except BaseException as e:
            # every rank records its failure; the first one is the cause (a rank that raises fails
            # before its peers notice it is gone), so a later one leaves it in place
            if run_dir.read_state()["state"] != "failed":
                message, bad = f"{type(e).__name__}: {e}".splitlines()[0], {}
                if isinstance(e, CheckpointError) and e.path.parent == run_dir.checkpoint.parent:  # not a first stage's
                    message += ("; --retry-failed sets it aside and resumes from ckpt/prev.pt if that one is good, "
                                "else restarts from scratch")
                    bad = {"bad_checkpoint": str(e.path)}
                run_dir.update_state(state="failed", error=message if main else f"rank {rank}: {message}",
                                     traceback=traceback.format_exc()[-4000:], **bad)
            raise
        finally:
            self.trainer = None
            for s, handler in previous.items():
                signal.signal(s, handler)
        if main:
            run_dir.update_state(state="finished", error=None)
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
            if requeue(self.run_dir, job_id(), self.max_requeues):
                print(f"{error}: requeued {job_id()}, the next run resumes from this checkpoint", flush=True)
                raise SystemExit(-1)
        elif main and RunDir(self.run_dir).read_state()["state"] != "cancelled":
            RunDir(self.run_dir).update_state(state="interrupted", error=str(error))

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """submitit's own SIGUSR2 handler (a signal outside training): count the requeue, or stop."""
        if not count_requeue(self.run_dir, self.max_requeues):
            return None
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir, self.max_requeues))


def count_requeue(run_dir: str | Path, max_requeues: int | None) -> bool:
    """Record one more requeue in state.json; past `max_requeues` mark the cell failed and return False."""
    run_dir = RunDir(run_dir)
    state = run_dir.read_state()
    count = int(state.get("requeues", 0))
    if state["state"] == "finished":
        return False
    if max_requeues is not None and count >= max_requeues:
        run_dir.update_state(state="failed", error=(
            f"stopped by SLURM (time limit or preemption) {count + 1} times; the requeue limit is "
            f"max_requeues={max_requeues}: raise launch.slurm.max_requeues or time_min, then --retry-failed"))
        return False
    run_dir.update_state(state="submitted", requeues=count + 1, error=None)
    return True


def requeue(run_dir: str | Path, job_id: str, max_requeues: int | None = None) -> bool:
    """Put the job back in the queue and count it (it resumes from the checkpoint); False if it may not."""
    if not count_requeue(run_dir, max_requeues):
        return False
    refused = scheduler.requeue(job_id)
    if refused:
        RunDir(run_dir).update_state(state="interrupted", error=f"scontrol requeue {job_id} failed: {refused}")
        return False
    return True
