"""The local backends: every cell in this process (debug), or as local processes (local).

    run_debug(run_dirs)                       # one after the other; a breakpoint works
    run_local(run_dirs, folder, parallel=2)   # submitit's LocalExecutor, output followed here

`after` maps a second stage's run folder to its first stages' run folders: it starts once they
have finished, and fails with one line without starting when one of them did not. Local
processes import harness from the submission's code snapshot (harness.sweep.snapshot); the
debug backend runs the working tree in this process.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import submitit

from harness.rundir import RunDir
from harness.sweep.job import TrainJob
from harness.sweep.snapshot import Snapshot
from harness.topology import environment, usable_cpus


def run_debug(run_dirs: list[Path], after: dict | None = None) -> None:
    """Every cell in this process, one after the other (a breakpoint works)."""
    for run_dir in run_dirs:
        if not first_stages_finished(run_dir, (after or {}).get(run_dir, [])):
            continue
        try:
            TrainJob(run_dir)()
        except KeyboardInterrupt:
            raise
        except Exception:
            say_failed(run_dir)


def first_stages_finished(run_dir: Path, first: list[Path]) -> bool:
    """True when every first stage finished; else the cell is marked failed, with one line."""
    unfinished = [Path(d).name for d in first if RunDir(d).read_state()["state"] != "finished"]
    if unfinished:
        RunDir(run_dir).update_state(state="failed", error=f"its first stage {', '.join(unfinished)} did not "
                                     f"finish; fix that cell, then run the sweep again with --retry-failed")
        say_failed(run_dir)
    return not unfinished


def say_failed(run_dir: Path, fallback: str = "no error recorded") -> None:
    """One line on stderr; the traceback stays in the cell's state.json."""
    run_dir = RunDir(run_dir)
    error = run_dir.read_state().get("error") or fallback
    print(f"[{run_dir.name}] FAILED: {error} (traceback in {run_dir.file(run_dir.STATE)})",
          file=sys.stderr, flush=True)


def run_local(run_dirs: list[Path], folder: Path, parallel: int = 1, timeout_min: int = 24 * 60,
              snapshot: Snapshot | None = None, after: dict | None = None) -> None:
    """Every cell as a local process (submitit's LocalExecutor), `parallel` at a time, their
    output followed on this terminal; each imports harness from `snapshot`. A second stage
    starts once its first stages (`after`) are done. Ctrl-C stops them with a checkpoint."""
    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=timeout_min)
    threads = {"LT_THREADS": str(max(1, usable_cpus() // parallel))}  # the cells share the CPUs
    after = after or {}
    queue, running, offsets = list(run_dirs), {}, {}
    try:
        while queue or running:
            ready = [d for d in queue if not any(f in queue or f in running for f in after.get(d, []))]
            for run_dir in ready[:max(0, parallel - len(running))]:
                queue.remove(run_dir)
                if not first_stages_finished(run_dir, after.get(run_dir, [])):
                    continue
                with snapshot.active() if snapshot else contextlib.nullcontext(), environment(threads):
                    job = executor.submit(TrainJob(run_dir))
                fields = {"backend": "local", "log": str(job.paths.stdout), "log_err": str(job.paths.stderr),
                          "code": snapshot.hash if snapshot else None, "after": [], "script": None}
                if RunDir(run_dir).read_state().get("job_id") != job.job_id:  # unless it started already
                    fields.update(state="submitted", job_id=job.job_id, requeues=0, error=None)
                RunDir(run_dir).update_state(**fields)
                running[run_dir] = job
                offsets[run_dir] = 0
            time.sleep(0.5)
            for run_dir, job in list(running.items()):
                offsets[run_dir] = _follow(job.paths.stdout, offsets[run_dir])
                if job.done():
                    offsets[run_dir] = _follow(job.paths.stdout, offsets[run_dir])
                    del running[run_dir]
                    if RunDir(run_dir).read_state()["state"] != "finished":
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
