"""Process groups: join the one the environment describes (harness.topology), and the few
collectives the harness uses, which are no-ops in a single process.

    env = dist.init(timeout_s)   # rank, local rank, world size, device; joins the group if world > 1

NCCL on GPUs (one process per GPU, each bound to GPU `local_rank`), gloo on the CPU. Every
collective times out after `timeout_s`, so a dead rank ends the job instead of hanging it.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from harness.registry import ConfigError
from harness.topology import topology


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
