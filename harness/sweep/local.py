"""The local backends: every cell in this process (debug), or as local processes (local).

    run_debug(run_dirs)                       # one after the other; a breakpoint works
    run_local(run_dirs, folder, parallel=2)   # submitit's LocalExecutor, output followed here
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import submitit

from harness.rundir import RunDir
from harness.sweep.job import TrainJob


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
    run_dir = RunDir(run_dir)
    error = run_dir.read_state().get("error") or fallback
    print(f"[{run_dir.name}] FAILED: {error} (traceback in {run_dir.file(run_dir.STATE)})",
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
                RunDir(run_dir).update_state(state="submitted", job_id=job.job_id, backend="local")
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
