"""Where this process sits in its job, read from the environment, once (no torch here).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Under SLURM (as
submitit runs the tasks of a job) every task has SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS;
the master is the first host of SLURM_JOB_NODELIST and the port is derived from the job id, so
two jobs on one node do not collide. A process with neither is rank 0 of 1.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Where this process sits in its job, as the environment describes it."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def topology(env: dict | None = None) -> Topology:
    """Rank, local rank, world size and rendezvous address from torchrun's or SLURM's variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or a launcher that set them
        return Topology(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                        env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return Topology(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                        env.get("MASTER_ADDR") or first_host(nodes),
                        int(env.get("MASTER_PORT") or master_port(env.get("SLURM_JOB_ID"))))
    return Topology()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as `scontrol show hostnames` would list it first:
    'gpu[07-09,11],cpu1' -> 'gpu07', 'rack[1-2]-n[3-4]' -> 'rack1-n3', 'node1' -> 'node1'."""
    group = re.match(r"(?:[^,\[]|\[[^\]]*\])*", nodelist.strip()).group(0)  # up to the first top-level comma
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], group)


def master_port(job_id: str | None) -> int:
    """A port derived from the job id, so two jobs on one node do not collide."""
    if not job_id:
        return 29500
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + int(digits[-6:]) % 20000


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what `srun --cpus-per-task`, `taskset`
    or a container allows), not every CPU of the machine that `os.cpu_count()` counts."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ meanwhile (the processes started meanwhile inherit them), then each
    variable as it was: a sweep's settings for its jobs do not stay in the process that submits them."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
