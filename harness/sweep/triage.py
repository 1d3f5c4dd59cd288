"""Triage: `--why SIG` (or a job id, or `--failed` for every failed cell) says, for a cell, what
happened and how to look closer, from its folder and one squeue call; no torch.

    cell 36e295de7e  loss=ldam imbalance_factor=100
      state       failed
      job         1234_3 (array 1234, task 3) on slurm; requeues 1/3
      code        snapshot 0a1b2c3d4e5f (the working tree is now 9f8e7d6c5b4a)
      error       ConfigError: runs/g/36e295de7e/ckpt/last.pt: not a checkpoint of this harness (...)
      log         runs/g/.submitit/1234_3/1234_3_0_log.out
      errors      runs/g/.submitit/1234_3/1234_3_0_log.err
      script      runs/g/.submitit/1234/1234_submission.sh
      traceback   runs/g/36e295de7e/state.json
      rerun here  python tools/sweep.py jobs/g.yaml --cluster debug --only 36e295de7e --retry-failed
      last lines of the log: ...
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from harness.grid import Grid
from harness.registry import ConfigError
from harness.sweep.plan import Liveness, cell_states
from harness.sweep.snapshot import working_tree_hash

TAIL = 15
"""Lines of each log shown."""


def select(grid: Grid, runs_root: str | Path, what: str | None, failed: bool) -> list:
    """(cell, run folder, state) of the cells `what` names (a signature, a job id <array>[_<task>]),
    or of every failed cell; ConfigError (one line) when none matches."""
    cells = cell_states(grid, runs_root)
    if failed:
        return [c for c in cells if c[2]["state"] == "failed"]
    if re.fullmatch(r"[0-9a-f]{10}", what or ""):
        found = [c for c in cells if c[0].signature == what]
    elif re.fullmatch(r"\d+(_\d+)?", what or ""):
        found = [c for c in cells if str(c[2].get("job_id")) == what
                 or str(c[2].get("job_id", "")).split("_")[0] == what]
    else:
        raise ConfigError(f"--why {what!r}: give a cell's signature (10 hex digits, see --status) or a job id "
                          f"like 1234 or 1234_5")
    if not found:
        raise ConfigError(f"--why {what}: no cell of grid '{grid.name}' has that signature or job id "
                          f"(python tools/sweep.py {grid.path} --status lists them)")
    return found


def explain(grid: Grid, runs_root: str | Path, what: str | None = None, failed: bool = False,
            command: list[str] = ()) -> str:
    """The triage text of the selected cells; `command` is how this sweep was called (program,
    grid, overrides, --runs), which the rerun line extends."""
    cells = select(grid, runs_root, what, failed)
    if not cells:
        return f"grid {grid.name}: no failed cells"
    live = Liveness([s for _, _, s in cells])
    current = working_tree_hash()
    return "\n\n".join(cell_report(cell, run_dir, state, live, current, command or ["tools/sweep.py", str(grid.path)])
                       for cell, run_dir, state in cells)


def cell_report(cell, run_dir, state: dict, live: Liveness, current: str, command: list[str]) -> str:
    recorded = state["state"]
    now = live.scheduler_state(state) if recorded not in ("new", "finished") else None
    if now is None and recorded in ("submitted", "running"):
        now = "lost: gone from the queue without a result (killed, out of memory or time?); the sweep resumes it"
    job = state.get("job_id")
    lines = [f"cell {cell.signature}  {cell.label}", f"  state       {now or recorded}"
             + (f" (recorded: {recorded})" if now and now != recorded else "")]
    if job:
        array, _, task = str(job).partition("_")
        limit = state.get("max_requeues")
        lines.append(f"  job         {job}" + (f" (array {array}, task {task})" if task else "")
                     + f" on {state.get('backend', '?')}; requeues {state.get('requeues', 0)}"
                     + (f"/{limit}" if limit is not None else "")
                     + (f"; waits for {', '.join(state['after'])}" if state.get("after") else ""))
    code = state.get("code")
    if code:
        lines.append(f"  code        snapshot {code}" + ("" if code == current else
                                                           f" (the working tree is now {current})"))
    if state.get("error"):
        lines.append(f"  error       {state['error']}")
    for key, label in (("log", "log"), ("log_err", "errors"), ("script", "script")):
        if state.get(key):
            lines.append(f"  {label:<11} {state[key]}")
    if state.get("traceback"):
        lines.append(f"  traceback   {run_dir.file(run_dir.STATE)}")
    rerun = [*command, "--cluster", "debug", "--only", cell.signature]
    if recorded == "failed":
        rerun.append("--retry-failed")
    lines.append(f"  rerun here  {shlex.join(rerun)}")
    for key, label in (("log", "log"), ("log_err", "errors")):
        tail = last_lines(state.get(key))
        if tail:
            lines.append(f"  last lines of the {label}:")
            lines += [f"    {line}" for line in tail]
    return "\n".join(lines)


def last_lines(path: str | None, n: int = TAIL) -> list[str]:
    """The last n non-empty lines of a log (a progress bar's carriage returns: its last state)."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in lines if line.strip()][-n:]
