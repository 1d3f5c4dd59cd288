"""What a grid's cells are doing: `--status` and `--cancel`.

Both read the cells' folders and ask the scheduler once; neither imports torch. The `code`
column is the code snapshot a cell's job runs (or ran), marked * when it differs from what a
submission of the working tree would run now.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from harness.grid import Grid, axis_name
from harness.sweep import scheduler
from harness.sweep.plan import Liveness, cell_states
from harness.sweep.snapshot import working_tree_hash


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
        result = run_dir.read_result()
        if result:
            epoch, epochs = result["epochs"], cell.config.schedule.epochs
            best, last = result["best"]["top1"], result["final"]["top1"]
        else:
            progress = run_dir.read_progress()
            epoch, epochs = progress.get("epoch", 0), cell.config.schedule.epochs
            best, last = progress.get("best_top1"), progress.get("top1")
        limit = state.get("max_requeues")
        rows.append({"signature": cell.signature, "axes": cell.axes, "state": now or recorded,
                     "epoch": f"{epoch}/{epochs}", "best": best, "last": last,
                     "job": state.get("job_id") or "-",
                     "requeues": f"{state.get('requeues', 0)}" + (f"/{limit}" if limit is not None else ""),
                     "code": result.get("code_snapshot") if result else state.get("code")})
    return rows


def status_table(grid: Grid, runs_root: str | Path = "runs") -> str:
    """`--status`: an aligned table of the grid's cells and a count per state."""
    rows = status_rows(grid, runs_root)
    axes = list(grid.axes)
    header = ["signature", *(axis_name(a) for a in axes), "state", "epoch", "best", "last", "job", "requeues",
              "code"]
    current = working_tree_hash()

    def fmt(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
    table = [header] + [[r["signature"], *(fmt(r["axes"].get(a)) for a in axes), r["state"], r["epoch"],
                         fmt(r["best"]), fmt(r["last"]), r["job"], r["requeues"],
                         "-" if not r["code"] else r["code"] + ("" if r["code"] == current else "*")] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    counts = Counter(r["state"] for r in rows)
    lines.append(f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    older = sum(bool(r["code"]) and r["code"] != current for r in rows)
    if older:
        lines.append(f"* {older} cells run (or ran) a code snapshot other than the working tree's ({current}): "
                     f"it changed since they were submitted (runs/.code/<snapshot>/ holds what they run)")
    return "\n".join(lines)


def cancel(grid: Grid, runs_root: str | Path = "runs") -> list[str]:
    """scancel this grid's queued or running SLURM jobs (and nothing else); returns their ids."""
    cells = cell_states(grid, runs_root)
    ids = {str(s["job_id"]): run_dir for _, run_dir, s in cells
           if s.get("backend") == "slurm" and s.get("job_id") and s["state"] not in ("new", "finished")}
    alive = sorted(scheduler.queued(list(ids)))
    for job in alive:  # recorded first, so the job's own stop does not overwrite it
        ids[job].update_state(state="cancelled", error="cancelled with --cancel; run the sweep again to resume")
    scheduler.cancel(alive)
    return alive
