"""Process groups from the environment: torchrun's variables, SLURM's, or a single process.

    env = dist.init(timeout_s)   # rank, local rank, world size, device; joins the group if world > 1

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Under SLURM (as
submitit runs the tasks of a job) every task has SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS;
the master is the first host of SLURM_JOB_NODELIST and the port is derived from the job id, so
two jobs on one node do not collide. NCCL on GPUs (one process per GPU, each bound to GPU
`local_rank`), gloo on the CPU. Every collective times out after `timeout_s`, so a dead rank
ends the job instead of hanging it.
"""
from __future__ import annotations

import atexit
import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from harness.registry import ConfigError


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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
    """The first host of a SLURM node list ('gpu[07-09],cpu1' -> 'gpu07'), by `scontrol show hostnames`."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                             capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if out:
        return out[0]
    prefix, ranges = re.match(r"([^\[,]*)(?:\[([^\]]*)\])?", nodelist).groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")


def master_port(job_id: str | None) -> int:
    """A port derived from the job id, so two jobs on one node do not collide."""
    if not job_id:
        return 29500
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + int(digits[-6:]) % 20000


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The global batch split over the ranks; it must divide evenly."""
    if global_batch % world_size:
        raise ConfigError(f"optim.batch_size {global_batch} (the global batch) is not divisible by the "
                          f"world size {world_size}; use a multiple of {world_size}")
    return global_batch // world_size


def init(timeout_s: int = 600) -> DistEnv:
    """Join the process group the environment describes (NCCL on GPUs, gloo on the CPU)."""
    topo = topology()
    if torch.cuda.is_available():
        device = torch.device("cuda", topo.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if topo.world_size > 1 and not tdist.is_initialized():
        os.environ.update(RANK=str(topo.rank), LOCAL_RANK=str(topo.local_rank), WORLD_SIZE=str(topo.world_size),
                          MASTER_ADDR=topo.master_addr, MASTER_PORT=str(topo.master_port))
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                 rank=topo.rank, world_size=topo.world_size,
                                 timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(shutdown)  # a group left to die with the interpreter can abort it (SIGABRT)
    return DistEnv(topo.rank, topo.local_rank, topo.world_size, device)


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        tdist.all_reduce(t)
    return t


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (a list of one without a group)."""
    if not active():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        tdist.barrier()


def shutdown() -> None:
    if active():
        tdist.destroy_process_group()
