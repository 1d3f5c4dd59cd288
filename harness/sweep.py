"""A sweep: expand a grid, decide per cell what to do from its folder, launch, watch, cancel.

Re-running a sweep is safe: finished cells are skipped, pending and running ones are left
alone (the scheduler is asked, once), interrupted ones resume from their checkpoint, failed
ones rerun only with retry_failed, and cells new to the grid are started.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.config import Grid, axis_name
from harness.registry import ConfigError
from harness.state import RESULT, local_process_alive, read_json, read_state, update_state, write_cell

BACKENDS = ("local", "debug", "slurm")
PROGRESS = "progress.json"


@dataclass
class Action:
    """What the sweep does with one cell: submit (new or resume), or skip and why."""
    run_dir: Path
    cell: object
    state: dict
    todo: str  # submit | resume | skip
    why: str = ""


def grid_dir(grid: Grid, runs_root: str | Path = "runs") -> Path:
    return Path(runs_root) / grid.name


def cell_states(grid: Grid, runs_root: str | Path = "runs") -> list[tuple[object, Path, dict]]:
    """(cell, run folder, recorded state) for every cell of the grid, in grid order."""
    root = grid_dir(grid, runs_root)
    return [(cell, root / cell.signature, read_state(root / cell.signature)) for cell in grid.cells]


class Liveness:
    """is_alive(state): SLURM jobs from one squeue call for all the given states; local ones from
    the process table."""

    def __init__(self, states: list[dict]):
        from harness.slurm import queued
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
         is_alive=None) -> list[Action]:
    """One Action per cell. `is_alive(state)` says whether a recorded job is still queued or
    running (default: the scheduler's answer for SLURM jobs, the process table for local ones)."""
    cells = cell_states(grid, runs_root)
    is_alive = is_alive or Liveness([s for _, _, s in cells])
    actions = []
    for cell, run_dir, state in cells:
        s = state["state"]
        if s == "finished":
            todo, why = "skip", "finished"
        elif s != "new" and is_alive(state):
            todo, why = "skip", f"queued or running, job {state.get('job_id')}"
        elif s == "failed" and not retry_failed:
            todo, why = "skip", "failed"
        elif (run_dir / "ckpt" / "last.pt").is_file():
            todo, why = "resume", s
        else:
            todo, why = "submit", s
        actions.append(Action(run_dir, cell, state, todo, why))
    return actions


def launch(grid: Grid, actions: list[Action], cluster: str, runs_root: str | Path = "runs"):
    """Write each cell's folder and hand the cells to the backend (SLURM: returns the job ids per array)."""
    if cluster not in BACKENDS:
        raise ConfigError(f"unknown cluster '{cluster}'; use one of {', '.join(BACKENDS)}")
    if grid.launch.parallel is not None and grid.launch.parallel < 1:
        raise ConfigError(f"{grid.path}: launch.parallel must be at least 1, got {grid.launch.parallel}")
    todo = [a for a in actions if a.todo != "skip"]
    if not todo:
        return []
    if cluster == "slurm":
        from harness import slurm
        profile = slurm.ready_profile(grid)  # checked before any folder is written
    for a in todo:
        write_cell(a.run_dir, grid.name, a.cell)
    run_dirs = [a.run_dir for a in todo]
    from harness import launch as backends
    if cluster == "debug":
        backends.run_debug(run_dirs)
    elif cluster == "local":
        backends.run_local(run_dirs, grid_dir(grid, runs_root) / ".submitit",
                           parallel=grid.launch.parallel or 1)
    else:
        return slurm.submit(grid, [a.cell for a in todo], run_dirs, grid_dir(grid, runs_root) / ".submitit",
                            profile)
    return []


def describe(actions: list[Action]) -> str:
    """The dry-run listing: one line per cell."""
    lines = []
    for a in actions:
        what = {"skip": f"skip ({a.why})", "resume": "resume from checkpoint", "submit": "submit"}[a.todo]
        lines.append(f"{a.cell.signature}  {a.cell.label:<45}  {what}")
    return "\n".join(lines)


def describe_slurm(grid: Grid, actions: list[Action], runs_root: str | Path = "runs") -> str:
    """The dry-run's SLURM part: each array job that would be submitted and its exact sbatch script."""
    from harness import slurm
    from harness.cluster import max_array_size
    todo = [a for a in actions if a.todo != "skip"]
    if not todo:
        return "nothing to submit"
    profile = slurm.ready_profile(grid)
    folder = grid_dir(grid, runs_root) / ".submitit"
    arrays = slurm.plan_arrays(profile, grid, [a.cell for a in todo], [a.run_dir for a in todo],
                               max_array_size())
    out = [f"{len(arrays)} sbatch call(s) for {len(todo)} cells (profile {profile.source})"]
    for i, array in enumerate(arrays, 1):
        out.append(f"--- array {i}/{len(arrays)}: {len(array.run_dirs)} cells "
                   f"({', '.join(d.name for d in array.run_dirs[:4])}{', ...' if len(array.run_dirs) > 4 else ''})")
        out.append(slurm.sbatch_script(folder, profile, array).rstrip())
    return "\n".join(out)


def status_rows(grid: Grid, runs_root: str | Path = "runs") -> list[dict]:
    """One row per cell: axes, live state, epoch, best and last top-1, job id, requeues."""
    cells = cell_states(grid, runs_root)
    live = Liveness([s for _, _, s in cells])
    rows = []
    for cell, run_dir, state in cells:
        recorded = state["state"]
        now = live.scheduler_state(state) if recorded not in ("new", "finished") else None
        if now is None and recorded in ("submitted", "running"):
            now = "lost"  # gone from the queue without a result: re-running the sweep resumes it
        result = read_json(run_dir / RESULT)
        if result:
            epoch, epochs = result["epochs"], cell.config.schedule.epochs
            best, last = result["best"]["top1"], result["final"]["top1"]
        else:
            progress = read_json(run_dir / PROGRESS)
            epoch, epochs = progress.get("epoch", 0), cell.config.schedule.epochs
            best, last = progress.get("best_top1"), progress.get("top1")
        limit = state.get("max_requeues")
        rows.append({"signature": cell.signature, "axes": cell.axes, "state": now or recorded,
                     "epoch": f"{epoch}/{epochs}", "best": best, "last": last,
                     "job": state.get("job_id") or "-",
                     "requeues": f"{state.get('requeues', 0)}" + (f"/{limit}" if limit is not None else "")})
    return rows


def status_table(grid: Grid, runs_root: str | Path = "runs") -> str:
    """`--status`: an aligned table of the grid's cells and a count per state."""
    rows = status_rows(grid, runs_root)
    axes = list(grid.axes)
    header = ["signature", *(axis_name(a) for a in axes), "state", "epoch", "best", "last", "job", "requeues"]

    def fmt(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
    table = [header] + [[r["signature"], *(fmt(r["axes"].get(a)) for a in axes), r["state"], r["epoch"],
                         fmt(r["best"]), fmt(r["last"]), r["job"], r["requeues"]] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    counts = Counter(r["state"] for r in rows)
    lines.append(f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def cancel(grid: Grid, runs_root: str | Path = "runs") -> list[str]:
    """scancel this grid's queued or running SLURM jobs (and nothing else); returns their ids."""
    from harness import slurm
    cells = cell_states(grid, runs_root)
    ids = {str(s["job_id"]): run_dir for _, run_dir, s in cells
           if s.get("backend") == "slurm" and s.get("job_id") and s["state"] not in ("new", "finished")}
    alive = sorted(slurm.queued(list(ids)))
    for job in alive:  # recorded first, so the job's own stop does not overwrite it
        update_state(ids[job], state="cancelled", error="cancelled with --cancel; run the sweep again to resume")
    slurm.cancel(alive)
    return alive
