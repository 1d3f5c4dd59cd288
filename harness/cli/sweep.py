"""python tools/sweep.py GRID [key=value ...] [--cluster ...] [--only SIG,...] [--retry-failed]
                            [--dry-run | --status | --cancel | --why SIG|JOB | --failed]"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

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
                   help="check everything a run checks, print the cells, what would run and (slurm) the sbatch "
                        "scripts; run nothing (exit status 2 when the run would stop)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed cells again (a bad checkpoint is set aside first: ckpt/last.pt.bad-<time>)")
    p.add_argument("--only", metavar="SIG[,SIG...]", help="run only these cells (signatures, see --status)")
    p.add_argument("--status", action="store_true", help="print a table of the cells' progress; run nothing")
    p.add_argument("--cancel", action="store_true", help="cancel this grid's SLURM jobs (and nothing else)")
    p.add_argument("--why", metavar="SIG|JOB",
                   help="triage a cell (signature) or job (<array>[_<task>]): state, job, error, logs, rerun command")
    p.add_argument("--failed", action="store_true", help="--why for every failed cell")
    args = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = list(args.overrides) + ([f"launch.cluster={args.cluster}"] if args.cluster else [])
        if args.status or args.cancel or args.why or args.failed:  # cells and folders only; no part built, no torch
            grid = load_grid(args.grid, overrides, check=False)
            if args.status:
                print(status_table(grid, args.runs))
            elif args.why or args.failed:
                from harness.sweep.triage import explain
                print(explain(grid, args.runs, args.why, args.failed, this_command(args)))
            else:
                ids = cancel(grid, args.runs)
                print(f"grid {grid.name}: cancelled {len(ids)} SLURM jobs" + (f": {' '.join(ids)}" if ids else ""))
            return 0
        grid = load_grid(args.grid, overrides)
        actions = plan(grid, args.runs, retry_failed=args.retry_failed, only=only_cells(grid, args.only))
        todo = sum(a.todo != "skip" for a in actions)
        print(f"grid {grid.name}: {len(actions)} cells, {todo} to run, "
              f"{len(actions) - todo} skipped ({grid.launch.cluster})")
        from harness.sweep import preflight
        checks = preflight.check(grid, actions, grid.launch.cluster, args.runs, dry_run=args.dry_run)
        if args.dry_run:
            print(describe(actions, checks))
            for note in checks.notes:
                print(f"note: {note}")
            if grid.launch.cluster == "slurm" and not checks.problems:
                print(describe_slurm(grid, actions, args.runs, checks))
            checks.raise_problems()
            return 0
        arrays = start(grid, actions, grid.launch.cluster, args.runs, checks)
    except ConfigError as e:  # one line; the pre-flight's (PreflightError) one line per problem
        for line in getattr(e, "problems", [str(e)]):
            code = fail(line)
        return code
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
    if any(r["state"]["state"] == "failed" for r in rows):
        print(f"why: python tools/sweep.py {args.grid} --failed", file=sys.stderr)
        return 1
    return 0


def this_command(args) -> list[str]:
    """How this sweep was called (program, grid, overrides, --runs): what a rerun line starts with."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "tools/sweep.py"
    launcher = ["python", program] if program.endswith(".py") else [Path(program).name]
    return [*launcher, args.grid, *args.overrides, *(["--runs", args.runs] if args.runs != "runs" else [])]


def only_cells(grid, only: str | None) -> set[str] | None:
    """The signatures --only names, each checked against the grid's cells."""
    if only is None:
        return None
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    signatures = {c.signature for c in grid.cells}
    for sig in sorted(wanted):
        if not re.fullmatch(r"[0-9a-f]{10}", sig) or sig not in signatures:
            raise ConfigError(f"--only {sig!r}: not a cell of grid '{grid.name}' (signatures are 10 hex digits; "
                              f"--dry-run lists them)")
    return wanted

