"""SLURM backend: a sweep's cells as submitit array jobs, the queue asked once, requeue counted.

Cells that ask for the same resources (the grid's cluster profile, plus what a cell's own
config needs) share one array job: one `sbatch` with `--array=0-<n-1>%K`, split at the
cluster's MaxArraySize. Each cell's state.json records its job id (`<array>_<task>`).
Liveness, `--status` and `--cancel` read this grid's recorded job ids and ask `squeue` once
(harness.sweep.scheduler runs every SLURM command).

A training job that gets SIGUSR2 (SLURM's warning before the time limit or a preemption)
checkpoints and requeues itself (harness.sweep.job); past the profile's `max_requeues` the cell
fails with a clear error.

Every job script exports PYTHONPATH to the submission's code snapshot (harness.sweep.snapshot),
so a job that waits in the queue, or is requeued, runs the code it was submitted with. Second
stages whose first stage runs in the same submission (or is still queued) go out as arrays of
their own, after the others, with `--dependency=afterok:<first-stage tasks>` and
`--kill-on-invalid-dep=yes` (a failed first stage takes its second stages out of the queue).
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
from harness.sweep.snapshot import Snapshot


@dataclass
class Array:
    """One sbatch: cells that share a resource shape (at most MaxArraySize of them)."""
    params: dict
    run_dirs: list[Path] = field(default_factory=list)
    waits: bool = False
    """Its cells start after first stages (submitted with a dependency on them)."""


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


def shape(profile: ClusterProfile, grid, cell, code: Snapshot | None = None) -> dict:
    """What one cell asks SLURM for: the profile, CPUs for its FFCV loader workers, and the code
    snapshot its job imports harness from."""
    params = {**profile.executor_params(), "name": grid.name}
    if code is not None:
        params["slurm_setup"] = [*params["slurm_setup"], *code.setup_lines()]
    data = cell.config.data
    if data.loader == "ffcv":
        params["cpus_per_task"] = max(profile.cpus_per_task, data.num_workers + 1)
    return params


def plan_arrays(profile: ClusterProfile, grid, cells, run_dirs, max_size: int, code: Snapshot | None = None,
                waits=()) -> list[Array]:
    """Group cells by resource shape, in grid order, and split groups larger than `max_size`;
    the cells in `waits` (second stages) form arrays of their own, which come last."""
    groups: dict[tuple, Array] = {}
    waits = {Path(d) for d in waits}
    for cell, run_dir in zip(cells, run_dirs):
        params, later = shape(profile, grid, cell, code), Path(run_dir) in waits
        groups.setdefault((later, json.dumps(params, sort_keys=True)), Array(params, waits=later)).run_dirs.append(
            Path(run_dir))
    ordered = sorted(groups.values(), key=lambda g: g.waits)
    return [Array(g.params, g.run_dirs[i:i + max_size], g.waits)
            for g in ordered for i in range(0, len(g.run_dirs), max_size)]


def executor(folder: Path, profile: ClusterProfile, params: dict, hold: bool = False,
             after: list[str] = ()) -> submitit.AutoExecutor:
    """A submitit SLURM executor for one array; `hold` submits the jobs held (nothing runs),
    `after` makes them wait for those jobs to finish successfully."""
    ex = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm",
                               slurm_max_num_timeout=profile.max_requeues)
    params = dict(params)
    extra = dict(params.get("slurm_additional_parameters", {}))
    if hold:
        extra["hold"] = True
    if after:
        extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
    if extra:
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def sbatch_script(folder: Path, profile: ClusterProfile, array: Array) -> str:
    """The exact job script `submit` hands to sbatch for this array (a dependency's job ids are
    only known once the first stages are submitted: shown as FIRST_STAGE_TASKS)."""
    ex = executor(folder, profile, array.params, after=["FIRST_STAGE_TASKS"] if array.waits else [])
    count = len(array.run_dirs)
    return _make_sbatch_string(command=ex._executor._submitit_command_str, folder=ex._executor.folder,
                               map_count=count if count > 1 else None, **ex._executor.parameters)


def submit(grid, cells, run_dirs, folder: Path, profile: ClusterProfile | None = None,
           hold: bool = False, max_size: int | None = None, snapshot: Snapshot | None = None,
           after: dict | None = None, after_jobs: dict | None = None) -> list[list[str]]:
    """Submit the cells as array jobs (one sbatch each) and record every job id; returns the ids
    per array. `after` maps a cell's run folder to the run folders of this submission it must
    wait for, `after_jobs` to job ids already queued; `snapshot` is the code its jobs run."""
    profile = profile or ready_profile(grid)
    after, after_jobs = after or {}, after_jobs or {}
    arrays = plan_arrays(profile, grid, cells, run_dirs, max_size or scheduler.max_array_size(), snapshot,
                         {*after, *after_jobs})
    job_of: dict[Path, str] = {}
    submitted = []
    for array in arrays:
        waits_for = sorted({job_of[Path(d)] for r in array.run_dirs for d in after.get(r, [])}
                           | {j for r in array.run_dirs for j in after_jobs.get(r, [])})
        try:
            jobs = executor(folder, profile, array.params, hold, waits_for).submit_array(
                [TrainJob(d, profile.max_requeues) for d in array.run_dirs])
        except (FailedJobError, FailedSubmissionError, OSError) as e:
            lines = [l for l in str(e).splitlines() if l.strip()]
            raise ConfigError(f"sbatch refused an array of {len(array.run_dirs)} cells of grid '{grid.name}': "
                              f"{lines[-1] if lines else e}; fix the profile {profile.source}") from None
        for run_dir, job in zip(array.run_dirs, jobs):
            record(run_dir, job, profile, snapshot, waits_for)
            job_of[run_dir] = job.job_id
        submitted.append([job.job_id for job in jobs])
    return submitted


def record(run_dir: Path, job, profile: ClusterProfile, snapshot: Snapshot | None = None,
           after: list[str] = ()) -> None:
    """Write the submission to state.json: job id, logs, job script, code snapshot, the jobs it
    waits for; a task that already started keeps the state it wrote."""
    run_dir = RunDir(run_dir)
    fields = {"backend": "slurm", "max_requeues": profile.max_requeues, "log": str(job.paths.stdout),
              "log_err": str(job.paths.stderr), "script": str(job.paths.submission_file),
              "code": snapshot.hash if snapshot else None, "after": list(after)}
    if run_dir.read_state().get("job_id") != job.job_id:
        fields.update(state="submitted", job_id=job.job_id, requeues=0, error=None)
    run_dir.update_state(**fields)
