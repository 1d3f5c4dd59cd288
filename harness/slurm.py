"""SLURM backend: a sweep's cells as submitit array jobs, the queue asked once, requeue counted.

Cells that ask for the same resources (the grid's cluster profile, plus what a cell's own
config needs) share one array job: one `sbatch` with `--array=0-<n-1>%K`, split at the
cluster's MaxArraySize. Each cell's state.json records its job id (`<array>_<task>`).
Liveness, `--status` and `--cancel` read this grid's recorded job ids and ask `squeue` once.

A training job that gets SIGUSR2 (SLURM's warning before the time limit or a preemption)
checkpoints and calls `requeue`, which counts the requeue in state.json and runs
`scontrol requeue`; past the profile's `max_requeues` the cell fails with a clear error.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import _make_sbatch_string

from harness.cluster import SLURM_TIMEOUT_S, ClusterProfile, check_cluster, load_profile, max_array_size
from harness.registry import ConfigError
from harness.state import read_state, update_state


@dataclass
class Array:
    """One sbatch: cells that share a resource shape (at most MaxArraySize of them)."""
    params: dict
    run_dirs: list[Path] = field(default_factory=list)


def grid_profile(grid) -> ClusterProfile:
    """The grid's profile with its `launch.slurm` overrides; `launch.parallel` sets the array %K."""
    overrides = dict(grid.launch.slurm)
    if grid.launch.parallel is not None:
        overrides.setdefault("array_parallelism", grid.launch.parallel)
    return load_profile(grid.launch.profile, overrides)


def ready_profile(grid) -> ClusterProfile:
    """The grid's profile, checked against the scheduler (before anything is written or submitted)."""
    profile = grid_profile(grid)
    check_cluster(profile)
    return profile


def shape(profile: ClusterProfile, grid, cell) -> dict:
    """What one cell asks SLURM for: the profile, and CPUs for its FFCV loader workers."""
    params = {**profile.executor_params(), "name": grid.name}
    data = cell.config.data
    if data.loader == "ffcv":
        params["cpus_per_task"] = max(profile.cpus_per_task, data.num_workers + 1)
    return params


def plan_arrays(profile: ClusterProfile, grid, cells, run_dirs, max_size: int) -> list[Array]:
    """Group cells by resource shape, in grid order, and split groups larger than `max_size`."""
    groups: dict[str, Array] = {}
    for cell, run_dir in zip(cells, run_dirs):
        params = shape(profile, grid, cell)
        groups.setdefault(json.dumps(params, sort_keys=True), Array(params)).run_dirs.append(Path(run_dir))
    return [Array(g.params, g.run_dirs[i:i + max_size])
            for g in groups.values() for i in range(0, len(g.run_dirs), max_size)]


def executor(folder: Path, profile: ClusterProfile, params: dict, hold: bool = False) -> submitit.AutoExecutor:
    """A submitit SLURM executor for one array; `hold` submits the jobs held (nothing runs)."""
    ex = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm",
                               slurm_max_num_timeout=profile.max_requeues)
    params = dict(params)
    if hold:
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), "hold": True}
    ex.update_parameters(**params)
    return ex


def sbatch_script(folder: Path, profile: ClusterProfile, array: Array) -> str:
    """The exact job script `submit` hands to sbatch for this array."""
    ex = executor(folder, profile, array.params)._executor
    count = len(array.run_dirs)
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                               map_count=count if count > 1 else None, **ex.parameters)


def submit(grid, cells, run_dirs, folder: Path, profile: ClusterProfile | None = None,
           hold: bool = False, max_size: int | None = None) -> list[list[str]]:
    """Submit the cells as array jobs (one sbatch each) and record every job id; returns the ids per array."""
    from harness.launch import TrainJob
    profile = profile or ready_profile(grid)
    arrays = plan_arrays(profile, grid, cells, run_dirs, max_size or max_array_size())
    submitted = []
    for array in arrays:
        try:
            jobs = executor(folder, profile, array.params, hold).submit_array(
                [TrainJob(d, profile.max_requeues) for d in array.run_dirs])
        except (FailedJobError, FailedSubmissionError, OSError) as e:
            lines = [l for l in str(e).splitlines() if l.strip()]
            raise ConfigError(f"sbatch refused an array of {len(array.run_dirs)} cells of grid '{grid.name}': "
                              f"{lines[-1] if lines else e}; fix the profile {profile.source}") from None
        for run_dir, job in zip(array.run_dirs, jobs):
            record(run_dir, job, profile)
        submitted.append([job.job_id for job in jobs])
    return submitted


def record(run_dir: Path, job, profile: ClusterProfile) -> None:
    """Write the submission to state.json; a task that already started keeps the state it wrote."""
    fields = {"backend": "slurm", "max_requeues": profile.max_requeues, "log": str(job.paths.stdout)}
    if read_state(run_dir).get("job_id") != job.job_id:
        fields.update(state="submitted", job_id=job.job_id, requeues=0, error=None)
    update_state(run_dir, **fields)


def queued(job_ids) -> dict[str, str]:
    """SLURM's state (PENDING, RUNNING, ...) of those of `job_ids` still in the queue: one squeue call."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays:
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"SLURM is not reachable (squeue failed: {e}); cannot tell which jobs "
                          f"are still queued, so nothing was submitted or cancelled") from None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # none of them is known any more
            return {}
        reason = (out.stderr or out.stdout).strip().splitlines()
        raise ConfigError(f"SLURM is not reachable (squeue failed: {reason[-1] if reason else out.returncode}); "
                          f"cannot tell which jobs are still queued, so nothing was submitted or cancelled")
    wanted = {str(j) for j in job_ids}
    states = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {j: s for j, s in states.items() if j in wanted}


def cancel(job_ids) -> None:
    """scancel exactly these jobs, in one call."""
    if not job_ids:
        return
    out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise ConfigError(f"scancel failed: {lines[-1] if lines else out.returncode}")


def count_requeue(run_dir: str | Path, max_requeues: int | None) -> bool:
    """Record one more requeue in state.json; past `max_requeues` mark the cell failed and return False."""
    state = read_state(run_dir)
    count = int(state.get("requeues", 0))
    if state["state"] == "finished":
        return False
    if max_requeues is not None and count >= max_requeues:
        update_state(run_dir, state="failed", error=(
            f"stopped by SLURM (time limit or preemption) {count + 1} times; the requeue limit is "
            f"max_requeues={max_requeues}: raise launch.slurm.max_requeues or time_min, then --retry-failed"))
        return False
    update_state(run_dir, state="submitted", requeues=count + 1, error=None)
    return True


def requeue(run_dir: str | Path, job_id: str, max_requeues: int | None = None) -> bool:
    """Put the job back in the queue and count it (it resumes from the checkpoint); False if it may not."""
    if not count_requeue(run_dir, max_requeues):
        return False
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    if out.returncode != 0:
        update_state(run_dir, state="interrupted", error=f"scontrol requeue {job_id} failed: {out.stderr.strip()}")
        return False
    return True
