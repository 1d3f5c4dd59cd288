"""DeepSpeed as `dist.engine: deepspeed`: the trainer's model, optimizer and loop inside DeepSpeed's engine.

ZeRO stage 0, 1 or 2 over fp32 weights; a bf16 run computes in bf16 through torch's autocast,
exactly as under DDP (DeepSpeed's own bf16 mode casts batch norm's weights but not its running
statistics, which batch norm refuses). On the CPU it runs over gloo (DS_ACCELERATOR=cpu).
Checkpoints keep the trainer's own format (full weights and the torch optimizer's per-parameter
state), so a run saved with DeepSpeed at one world size resumes at any other, with DeepSpeed or
without.

ZeRO keeps each rank's shard of the fp32 weights and of the optimizer state in one flat tensor
per parameter group; `param._hp_mapping` says which slice of a parameter lies in this rank's
shard. Gathering a full tensor is an all-reduce of zero-filled buffers holding each rank's slice.
"""
from __future__ import annotations

import logging
import os

import torch

from harness import dist

MOMENTUM = "momentum_buffer"


def config(cfg, world_size: int) -> dict:
    """DeepSpeed's config, derived from the one config tree."""
    return {
        "train_batch_size": cfg.optim.batch_size,
        "train_micro_batch_size_per_gpu": dist.per_rank_batch(cfg.optim.batch_size, world_size),
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
    }


def wrap(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, world_size: int):
    """DeepSpeed's engine around `model`; it steps `optimizer`, whose groups then hold this rank's shard."""
    cpu = not torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if cpu else "cuda")
    import deepspeed
    import deepspeed.ops

    if cpu:  # its shared-memory all-reduce serves inference only; skip JIT-compiling it
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.utils.logger.setLevel(logging.WARNING)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config(cfg, world_size))
    return engine


def _sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "_hp_mapping") for p in model.parameters())


def _slice(tensor: torch.Tensor, address) -> torch.Tensor:
    return tensor.flatten().narrow(0, address.start, address.numel)


def _momentum(optimizer, mapping, create: bool = False) -> torch.Tensor:
    """This rank's slice of a parameter's momentum, inside the flat shard's momentum buffer."""
    flat = optimizer.param_groups[mapping.param_group_index]["params"][0]
    state = optimizer.state[flat]
    if create and MOMENTUM not in state:
        state[MOMENTUM] = torch.zeros_like(flat)
    return _slice(state[MOMENTUM], mapping.hp_fragment_address)


def _gather(p: torch.Tensor, fragment) -> torch.Tensor:
    """The full tensor of parameter `p`, from every rank's `fragment(mapping)` of it."""
    full = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
    if p._hp_mapping is not None:
        _slice(full, p._hp_mapping.lp_fragment_address).copy_(fragment(p._hp_mapping))
    return dist.all_reduce_sum(full).view(p.shape)


@torch.no_grad()
def full_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """(model state dict, torch-format optimizer state dict), gathered; every rank must call it."""
    weights = model.state_dict()
    if not _sharded(model):  # ZeRO-0: the torch optimizer holds everything
        return weights, optimizer.state_dict()
    has_momentum = any(MOMENTUM in s for s in optimizer.state.values())
    params, state = list(model.named_parameters()), {}
    for i, (name, p) in enumerate(params):
        if not hasattr(p, "_hp_mapping"):  # frozen: DeepSpeed leaves it alone, the module holds it
            continue
        weights[name] = _gather(p, lambda m: m.hp_fragment)
        if has_momentum:
            state[i] = {MOMENTUM: _gather(p, lambda m: _momentum(optimizer, m))}
    (group,) = optimizer.param_groups  # the trainer builds one group
    hyper = {k: v for k, v in group.items() if k != "params"}
    return weights, {"state": state, "param_groups": [{**hyper, "params": list(range(len(params)))}]}


@torch.no_grad()
def load_full_state(model: torch.nn.Module, optimizer, weights: dict, optim_state: dict) -> None:
    """Load what `full_state` (or a plain run's state dicts) saved into this rank's shards."""
    model.load_state_dict(weights)
    if not _sharded(model):
        optimizer.load_state_dict(optim_state)
        return
    for i, (name, p) in enumerate(model.named_parameters()):
        mapping = getattr(p, "_hp_mapping", None)  # None: frozen, or wholly in other ranks' shards
        if mapping is None:
            continue
        mapping.hp_fragment.copy_(_slice(weights[name], mapping.lp_fragment_address))
        if i in optim_state["state"]:
            _momentum(optimizer, mapping, create=True).copy_(
                _slice(optim_state["state"][i][MOMENTUM], mapping.lp_fragment_address))
    (group,) = optimizer.param_groups
    group.update({k: v for k, v in optim_state["param_groups"][0].items() if k != "params"})
