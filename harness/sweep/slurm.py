"""SLURM backend: a sweep's cells as submitit array jobs, the queue asked once, requeue counted.

Cells that ask for the same resources (the grid's cluster profile, plus what a cell's own
config needs) share one array job: one `sbatch` with `--array=0-<n-1>%K`, split at the
cluster's MaxArraySize. Each cell's state.json records its job id (`<array>_<task>`).
Liveness, `--status` and `--cancel` read this grid's recorded job ids and ask `squeue` once
(harness.sweep.scheduler runs every SLURM command).

A training job that gets SIGUSR2 (SLURM's warning before the time limit or a preemption)
checkpoints and requeues itself (harness.sweep.job); past the profile's `max_requeues` the cell
fails with a clear error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import _make_sbatch_string  # the script sbatch gets: shown by --dry-run

from harness.registry import ConfigError
from harness.rundir import RunDir
from harness.sweep import scheduler
from harness.sweep.job import TrainJob
from harness.sweep.profiles import ClusterProfile, check_cluster, load_profile


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
    profile = profile or ready_profile(grid)
    arrays = plan_arrays(profile, grid, cells, run_dirs, max_size or scheduler.max_array_size())
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
    run_dir = RunDir(run_dir)
    fields = {"backend": "slurm", "max_requeues": profile.max_requeues, "log": str(job.paths.stdout)}
    if run_dir.read_state().get("job_id") != job.job_id:
        fields.update(state="submitted", job_id=job.job_id, requeues=0, error=None)
    run_dir.update_state(**fields)
