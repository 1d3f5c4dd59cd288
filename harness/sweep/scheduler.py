"""Every SLURM command the harness runs, and its errors, in one place.

    partitions()        sinfo: {partition: Partition(gres of each node group, MaxTime)}
    max_array_size()    scontrol show config: MaxArraySize
    queued(job_ids)     squeue, once: {job id: PENDING | RUNNING | ...} for those still queued
    cancel(job_ids)     scancel, once
    requeue(job_id)     scontrol requeue

An unreachable scheduler or a refused command is a ConfigError with one line that says what
failed and what was (not) done.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from harness.registry import ConfigError

TIMEOUT_S = 20  # sinfo/scontrol give up on an unreachable controller after about 10 s


def run(cmd: list[str], what: str = "") -> str:
    """Run a SLURM client command and return its stdout; ConfigError naming the command otherwise."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        reason = f"{cmd[0]} not found on PATH"
    except subprocess.TimeoutExpired:
        reason = f"{cmd[0]} timed out after {TIMEOUT_S} s"
    else:
        if out.returncode == 0:
            return out.stdout
        lines = (out.stderr or out.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {out.returncode}"
    what = what or "start it or use --cluster local"
    raise ConfigError(f"SLURM is not reachable ({cmd[0]} failed: {reason}); {what}")


@dataclass
class Partition:
    """What sinfo says about a partition."""
    gres: list[str] = field(default_factory=list)
    """The gres of each node group ('none' for none)."""
    max_time_min: int | None = None
    """Its MaxTime in minutes; None when unlimited."""


def partitions() -> dict[str, Partition]:
    """Each partition's node groups' gres and its time limit, from one sinfo call."""
    found: dict[str, Partition] = {}
    for line in run(["sinfo", "-h", "-o", "%R|%G|%l"]).splitlines():
        if line.count("|") == 2:
            name, gres, limit = (part.strip() for part in line.split("|"))
            partition = found.setdefault(name, Partition(max_time_min=minutes(limit)))
            partition.gres.append("none" if gres == "(null)" else gres)
    return found


def minutes(limit: str) -> int | None:
    """A SLURM time limit in whole minutes (seconds dropped): '30', '30:00', '2:00:00', '1-12',
    '1-00:00:00'; None for 'infinite', 'UNLIMITED' or anything else that is not a time."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not match:
        return None
    days, a, b, c = (int(g) if g else 0 for g in match.groups())
    if match.group(1):  # days-hours[:minutes[:seconds]]
        return days * 1440 + a * 60 + b
    if match.group(4):  # hours:minutes:seconds
        return a * 60 + b
    return a  # minutes[:seconds]


def max_array_size() -> int:
    """The scheduler's MaxArraySize: array task indices must stay below it."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", run(["scontrol", "show", "config"]), re.MULTILINE)
    if not match:
        raise ConfigError("SLURM did not report MaxArraySize in 'scontrol show config'")
    return int(match.group(1))


def queued(job_ids) -> dict[str, str]:
    """SLURM's state (PENDING, RUNNING, ...) of those of `job_ids` still in the queue: one squeue call."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays:
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
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


def cancel(job_ids, signal: str | None = None) -> None:
    """scancel exactly these jobs, in one call (with `signal`, send it instead of ending them)."""
    if job_ids:
        run(["scancel", *([f"--signal={signal}"] if signal else []), *job_ids], "nothing was cancelled")


def requeue(job_id: str) -> str | None:
    """scontrol requeue; None when it worked, else SLURM's reason."""
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=TIMEOUT_S)
    return None if out.returncode == 0 else (out.stderr.strip() or f"exit status {out.returncode}")
