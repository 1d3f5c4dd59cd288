"""python tools/sweep.py GRID [key=value ...] [--cluster ...] [--dry-run | --status | --cancel | --retry-failed]"""
from __future__ import annotations

import argparse
import sys

from harness.cli import fail
from harness.grid import load_grid
from harness.registry import ConfigError
from harness.report import collect, runs_table
from harness.sweep.plan import describe, describe_slurm, grid_dir, plan, start
from harness.sweep.status import cancel, status_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/sweep.py", description="Expand a grid and run its cells.")
    p.add_argument("grid", help="grid file, e.g. jobs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the base (launch.* for launch)")
    p.add_argument("--cluster", choices=["local", "debug", "slurm"], help="backend (default: the grid's)")
    p.add_argument("--runs", default="runs", help="root folder of the run folders")
    p.add_argument("--dry-run", action="store_true",
                   help="print the cells, what would run and (slurm) the sbatch scripts; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--status", action="store_true", help="print a table of the cells' progress; run nothing")
    p.add_argument("--cancel", action="store_true", help="cancel this grid's SLURM jobs (and nothing else)")
    args = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = list(args.overrides) + ([f"launch.cluster={args.cluster}"] if args.cluster else [])
        if args.status or args.cancel:  # the grid's cells and their folders; no part is built, no torch
            grid = load_grid(args.grid, overrides, check=False)
            if args.status:
                print(status_table(grid, args.runs))
                return 0
            ids = cancel(grid, args.runs)
            print(f"grid {grid.name}: cancelled {len(ids)} SLURM jobs" + (f": {' '.join(ids)}" if ids else ""))
            return 0
        grid = load_grid(args.grid, overrides)
        actions = plan(grid, args.runs, retry_failed=args.retry_failed)
        todo = sum(a.todo != "skip" for a in actions)
        print(f"grid {grid.name}: {len(actions)} cells, {todo} to run, "
              f"{len(actions) - todo} skipped ({grid.launch.cluster})")
        if args.dry_run:
            print(describe(actions))
            if grid.launch.cluster == "slurm":
                print(describe_slurm(grid, actions, args.runs))
            return 0
        arrays = start(grid, actions, grid.launch.cluster, args.runs)
    except ConfigError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    if grid.launch.cluster == "slurm":
        for ids in arrays:
            print(f"submitted {len(ids)} cells as SLURM job {ids[0].split('_')[0]}")
        print(f"watch: python tools/sweep.py {args.grid} --status")
        return 0
    by_signature = {r["signature"]: r for r in collect(grid_dir(grid, args.runs))}
    rows = [by_signature[c.signature] for c in grid.cells if c.signature in by_signature]  # grid order
    print(runs_table(rows))
    print(f"report: python tools/report.py {grid_dir(grid, args.runs)}    "
          f"watch: tensorboard --logdir {grid_dir(grid, args.runs)}")
    return 1 if any(r["state"]["state"] == "failed" for r in rows) else 0
