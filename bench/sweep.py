"""Submitting a 512-cell grid to the local SLURM: the harness (one array job per resource
shape) against one sbatch per cell, side by side in one process.

Both contenders write the same cell folders and submit the same TrainJob pickles with the
same profile to the real scheduler. Every job is held (`--hold`) so nothing runs, and
cancelled right after. sbatch calls are counted by a shim on PATH that logs each call and
execs the real sbatch. The harness path is the sweep itself: expand the grid, plan (one
squeue), write the folders, submit, record the job ids; then a re-run's plan (one squeue for
all recorded jobs) is timed too. The per-cell path calls submitit's
`submit` once per cell with its 0.2 s throttle between submissions switched off, so it pays
for sbatch calls only. Prints the ratios and writes bench/results/sweep.json.

    slurm/local-cluster/up && python bench/sweep.py [--rounds 2] [--out bench/results/sweep.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.grid import load_grid  # noqa: E402
from harness.rundir import RunDir  # noqa: E402
from harness.sweep import scheduler, slurm  # noqa: E402
from harness.sweep.job import TrainJob  # noqa: E402
from harness.sweep.plan import plan, start  # noqa: E402
from harness.sweep.status import cancel  # noqa: E402

GRID = """\
name: {name}
base:
  data: {{dataset: synthetic, loader: memory}}
  model: {{name: resnet32}}
  schedule: {{epochs: 200}}
grid:
  loss.name: [ce, focal, balanced_softmax, logit_adjust]
  data.imbalance_factor: [10, 50, 100, 200]
  seed: {seeds}
launch: {{cluster: slurm, profile: local, slurm: {{sbatch_extra: [--hold]}}}}
"""


def sbatch_shim(folder: Path) -> Path:
    """Put a counting sbatch first on PATH; returns the file with one line per call."""
    real = shutil.which("sbatch")
    if not real:
        sys.exit("sbatch is not on PATH: start the cluster with slurm/local-cluster/up")
    log = folder / "sbatch.calls"
    log.touch()
    (folder / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (folder / "sbatch").chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    return log


def calls(log: Path) -> int:
    return len(log.read_text().splitlines())


def harness_sweep(grid_file: Path, runs: Path, log: Path) -> dict:
    """The sweep as tools/sweep.py runs it: expand, plan, write, submit arrays, record ids."""
    before, t0 = calls(log), time.perf_counter()
    grid = load_grid(grid_file)
    try:
        t1 = time.perf_counter()
        actions = plan(grid, runs)
        t2 = time.perf_counter()
        arrays = start(grid, actions, "slurm", runs)
        t3 = time.perf_counter()
        again = plan(grid, runs)  # the re-run: one squeue for all recorded jobs, nothing to submit
        t4 = time.perf_counter()
        assert all(a.todo == "skip" for a in again), "a re-run would submit queued cells again"
    finally:
        cancelled = cancel(grid, runs)
    assert len(cancelled) == len(grid.cells), "not every cell was recorded as queued"
    return {"cells": len(grid.cells), "arrays": len(arrays), "sbatch_calls": calls(log) - before,
            "wall_s": t3 - t0, "expand_s": t1 - t0, "plan_s": t2 - t1, "write_and_submit_s": t3 - t2,
            "rerun_plan_s": t4 - t3}


def per_cell(grid_file: Path, runs: Path, log: Path) -> dict:
    """The same cells, one sbatch each (submitit's submit, no throttle)."""
    before, t0 = calls(log), time.perf_counter()
    grid = load_grid(grid_file)
    profile = slurm.ready_profile(grid)
    folder = runs / grid.name / ".submitit"
    ids = []
    try:
        for cell in grid.cells:
            run_dir = runs / grid.name / cell.signature
            RunDir(run_dir).write_cell(grid.name, cell)
            executor = slurm.executor(folder, profile, slurm.shape(profile, grid, cell))
            executor._executor._throttling = 0.0  # submitit waits 0.2 s between single submissions
            job = executor.submit(TrainJob(run_dir, profile.max_requeues))
            RunDir(run_dir).update_state(state="submitted", backend="slurm", job_id=job.job_id)
            ids.append(job.job_id)
        wall = time.perf_counter() - t0
    finally:
        scheduler.cancel(ids)
    return {"cells": len(ids), "arrays": 0, "sbatch_calls": calls(log) - before, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=32, help="seeds per (loss, IF) pair: 4 x 4 x 32 = 512 cells")
    p.add_argument("--rounds", type=int, default=2, help="contenders in turn this many times; the best counts")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep.json"))
    args = p.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        log = sbatch_shim(tmp)
        for r in range(args.rounds):
            files = {}
            for name in ("arrays", "per_cell"):
                files[name] = tmp / f"bench_{name}_{r}.yaml"
                files[name].write_text(GRID.format(name=f"bench_{name}_{r}", seeds=list(range(args.seeds))))
            rounds.append({"harness_arrays": harness_sweep(files["arrays"], tmp / "runs", log),
                           "one_job_per_cell": per_cell(files["per_cell"], tmp / "runs", log)})
    arrays = min((r["harness_arrays"] for r in rounds), key=lambda x: x["wall_s"])
    single = min((r["one_job_per_cell"] for r in rounds), key=lambda x: x["wall_s"])
    out = {
        "benchmark": "expand and submit a grid to the local one-node SLURM (jobs held, then cancelled); "
                     "best of the rounds",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared and busy (other engineers' jobs "
                   "ran alongside): absolute times are noisy, the ratios less so",
        "harness_arrays": arrays,
        "one_job_per_cell": single,
        "sbatch_calls_ratio": single["sbatch_calls"] / max(arrays["sbatch_calls"], 1),
        "wall_speedup": single["wall_s"] / arrays["wall_s"],
        "target_one_sbatch_per_array": arrays["sbatch_calls"] == arrays["arrays"],
        "target_under_5_s": arrays["wall_s"] < 5,
        "rounds": rounds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{arrays['cells']} cells  harness: {arrays['arrays']} array(s), {arrays['sbatch_calls']} sbatch, "
          f"{arrays['wall_s']:.2f} s (expand {arrays['expand_s']:.2f}, plan {arrays['plan_s']:.2f}, "
          f"write+submit {arrays['write_and_submit_s']:.2f}); re-run plan {arrays['rerun_plan_s']:.2f} s")
    print(f"{single['cells']} cells  one job per cell: {single['sbatch_calls']} sbatch, {single['wall_s']:.2f} s")
    print(f"ratio: {out['sbatch_calls_ratio']:.0f}x fewer sbatch calls, {out['wall_speedup']:.1f}x faster; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
