"""A sweep: per cell, what to do (from its folder), and handing the cells to a backend.

Re-running a sweep is safe: finished cells are skipped, pending and running ones are left
alone (the scheduler is asked, once), interrupted ones resume from their checkpoint, failed
ones rerun only with retry_failed, and cells new to the grid are started.

`start` runs the pre-flight (harness.sweep.preflight) before it writes or submits anything,
sets aside a bad checkpoint of a retried cell (RunDir.recover_checkpoint), and hands the cells
to the backend with a snapshot of the code (harness.sweep.snapshot), first stages before the
second stages that start from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.grid import Grid
from harness.registry import ConfigError
from harness.rundir import RunDir, local_process_alive

BACKENDS = ("local", "debug", "slurm")


@dataclass
class Action:
    """What the sweep does with one cell: submit (new or resume), or skip and why."""
    run_dir: Path
    cell: object
    state: dict
    todo: str  # submit | resume | skip
    why: str = ""


def grid_dir(grid: Grid, runs_root: str | Path = "runs") -> Path:
    """runs/<grid>/: the grid's run folders, one per cell, named by signature."""
    return Path(runs_root) / grid.name


def submitit_dir(grid: Grid, runs_root: str | Path = "runs") -> Path:
    """runs/<grid>/.submitit/: submitit's job scripts, pickles and logs."""
    return grid_dir(grid, runs_root) / ".submitit"


def cell_states(grid: Grid, runs_root: str | Path = "runs") -> list[tuple[object, RunDir, dict]]:
    """(cell, run folder, recorded state) for every cell of the grid, in grid order."""
    root = grid_dir(grid, runs_root)
    return [(cell, d, d.read_state()) for cell, d in ((c, RunDir(root / c.signature)) for c in grid.cells)]


class Liveness:
    """is_alive(state): SLURM jobs from one squeue call for all the given states; local ones from
    the process table."""

    def __init__(self, states: list[dict]):
        from harness.sweep.scheduler import queued
        ids = [s["job_id"] for s in states
               if s.get("backend") == "slurm" and s.get("job_id") and s["state"] != "finished"]
        self.queue = queued(ids) if ids else {}

    def __call__(self, state: dict) -> bool:
        return self.scheduler_state(state) is not None

    def scheduler_state(self, state: dict) -> str | None:
        """'pending', 'running', ... while the job is queued or running; None once it is gone."""
        if state.get("backend") == "slurm":
            found = self.queue.get(str(state.get("job_id")))
            return found.lower() if found else None
        return "running" if local_process_alive(state) else None


def plan(grid: Grid, runs_root: str | Path = "runs", retry_failed: bool = False,
         is_alive=None, only: set[str] | None = None) -> list[Action]:
    """One Action per cell. `is_alive(state)` says whether a recorded job is still queued or
    running (default: the scheduler's answer for SLURM jobs, the process table for local ones);
    with `only` (signatures), the other cells are skipped."""
    cells = cell_states(grid, runs_root)
    is_alive = is_alive or Liveness([s for _, _, s in cells])
    actions = []
    for cell, run_dir, state in cells:
        s = state["state"]
        if only is not None and cell.signature not in only:
            todo, why = "skip", "not in --only"
        elif s == "finished":
            todo, why = "skip", "finished"
        elif s != "new" and is_alive(state):
            todo, why = "skip", f"queued or running, job {state.get('job_id')}"
        elif s == "failed" and not retry_failed:
            todo, why = "skip", "failed"
        elif run_dir.has_checkpoint():
            todo, why = "resume", s
        else:
            todo, why = "submit", s
        actions.append(Action(run_dir.path, cell, state, todo, why))
    return actions


def start(grid: Grid, actions: list[Action], cluster: str, runs_root: str | Path = "runs", checks=None):
    """Pre-flight (unless `checks` holds its result), then write each cell's folder and hand the
    cells to the backend, second stages after their first stages (SLURM: returns the job ids per
    array). Raises ConfigError (PreflightError: one line per problem) before anything is written."""
    if cluster not in BACKENDS:
        raise ConfigError(f"unknown cluster '{cluster}'; use one of {', '.join(BACKENDS)}")
    if grid.launch.parallel is not None and grid.launch.parallel < 1:
        raise ConfigError(f"{grid.path}: launch.parallel must be at least 1, got {grid.launch.parallel}")
    todo = [a for a in actions if a.todo != "skip"]
    if not todo:
        return []
    from harness.sweep import local, preflight, slurm, snapshot
    checks = checks or preflight.check(grid, actions, cluster, runs_root)
    checks.raise_problems()
    for a in todo:
        run_dir = RunDir(a.run_dir)
        run_dir.write_cell(grid.name, a.cell)
        if a.state.get("bad_checkpoint"):  # a retried cell whose checkpoint was not one
            print(f"[{a.cell.signature}] {run_dir.recover_checkpoint()}", flush=True)
            run_dir.update_state(bad_checkpoint=None)
    todo.sort(key=lambda a: a.run_dir in checks.after)  # first stages first (the sort is stable)
    run_dirs = [a.run_dir for a in todo]
    if cluster == "debug":  # this process runs the working tree, breakpoints and all
        local.run_debug(run_dirs, after=checks.after)
        return []
    code = snapshot.take(runs_root)
    if cluster == "slurm":
        return slurm.submit(grid, [a.cell for a in todo], run_dirs, submitit_dir(grid, runs_root), checks.profile,
                            snapshot=code, after=checks.after, after_jobs=checks.after_jobs)
    local.run_local(run_dirs, submitit_dir(grid, runs_root), parallel=grid.launch.parallel or 1, snapshot=code,
                    after=checks.after)
    return []


def describe(actions: list[Action], checks=None) -> str:
    """The dry-run listing: one line per cell (with `checks`, the first stages a cell waits for)."""
    lines = []
    for a in actions:
        what = {"skip": f"skip ({a.why})", "resume": "resume from checkpoint", "submit": "submit"}[a.todo]
        waits = [Path(d).name for d in (checks.after.get(a.run_dir, []) if checks else [])]
        waits += checks.after_jobs.get(a.run_dir, []) if checks else []
        lines.append(f"{a.cell.signature}  {a.cell.label:<45}  {what}"
                     + (f" after {', '.join(waits)}" if waits else ""))
    return "\n".join(lines)


def describe_slurm(grid: Grid, actions: list[Action], runs_root: str | Path = "runs", checks=None) -> str:
    """The dry-run's SLURM part: each array job that would be submitted and its exact sbatch script."""
    from harness.sweep import scheduler, slurm, snapshot
    todo = [a for a in actions if a.todo != "skip"]
    if not todo:
        return "nothing to submit"
    profile = slurm.ready_profile(grid)
    folder = submitit_dir(grid, runs_root)
    waits = {*checks.after, *checks.after_jobs} if checks else set()
    arrays = slurm.plan_arrays(profile, grid, [a.cell for a in todo], [a.run_dir for a in todo],
                               scheduler.max_array_size(), snapshot.planned(runs_root), waits)
    out = [f"{len(arrays)} sbatch call(s) for {len(todo)} cells (profile {profile.source})"]
    for i, array in enumerate(arrays, 1):
        out.append(f"--- array {i}/{len(arrays)}: {len(array.run_dirs)} cells "
                   f"({', '.join(d.name for d in array.run_dirs[:4])}{', ...' if len(array.run_dirs) > 4 else ''})")
        out.append(slurm.sbatch_script(folder, profile, array).rstrip())
    return "\n".join(out)
