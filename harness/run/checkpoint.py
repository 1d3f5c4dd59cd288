"""Checkpoints: what a run needs to resume, saved at any world size and with any engine, and
loaded back into any other.

    checkpoint = Checkpointer(run_dir, env, deepspeed)
    checkpoint.save(trainer)      # every rank calls it; rank 0 writes run_dir/ckpt/last.pt atomically
    checkpoint.save(trainer, best=True)  # a new best epoch on the validation split: ckpt/best.pt first
    checkpoint.resume(trainer)    # every rank loads the file rank 0 found, if any

The format is the trainer's own: full model weights and the torch optimizer's per-parameter
state, the loss's state, epoch and step, the history of epochs, and every rank's random
generator and loss sum so far in an epoch interrupted inside (so its logged loss is the whole
epoch's). A run saved with DeepSpeed at one world size resumes at any other, with DeepSpeed
or without. DeepSpeed's ZeRO keeps each rank's shard of the fp32 weights and of the optimizer
state in one flat tensor per parameter group; `param._hp_mapping` says which slice of a
parameter lies in this rank's shard. Gathering a full tensor is an all-reduce of zero-filled
buffers holding each rank's slice.
"""
from __future__ import annotations

import torch

from harness import dist
from harness.run.optim import decay_runs
from harness.rundir import CheckpointError, RunDir


class Checkpointer:
    """Saves and restores a Trainer's state in its run folder."""

    def __init__(self, run_dir: RunDir, env: dist.DistEnv, deepspeed: bool):
        self.run_dir, self.env, self.deepspeed = run_dir, env, deepspeed

    def state_dict(self, t) -> dict:
        """What a resume needs, independent of the world size and the engine; every rank calls it
        (DeepSpeed's shards and the ranks' generators are gathered)."""
        if self.deepspeed:
            model, optimizer = full_state(t.model, t.optimizer)
        else:
            model, optimizer = t.model.state_dict(), t.optimizer.state_dict()
        return {"model": model, "optimizer": optimizer, "criterion": t.criterion.state_dict(),
                "epoch": t.epoch, "step_in_epoch": t.step_in_epoch, "history": t.history,
                "epoch_loss": dist.all_gather_object(t.epoch_loss),
                "generators": dist.all_gather_object(t.gen.get_state()), "world_size": self.env.world_size}

    def save(self, t, best: bool = False) -> None:
        """ckpt/last.pt; with `best` (the epoch just finished is the best so far on the validation
        split) ckpt/best.pt too, written first: a run killed between the two repeats the epoch."""
        state = self.state_dict(t)
        if self.env.is_main:
            if best:
                self.run_dir.save_best_checkpoint({"model": state["model"], "epoch": t.epoch,
                                                   "val_top1": t.history[-1]["val_top1"]})
            self.run_dir.save_checkpoint(state)
        dist.barrier()

    def resume(self, t) -> bool:
        """Load the checkpoint rank 0 found into `t` on every rank; False when there is none."""
        if not dist.broadcast_object(self.run_dir.has_checkpoint()):
            return False
        state = self.run_dir.load_checkpoint(map_location=t.device)  # CheckpointError: not one of ours
        try:
            if self.deepspeed:
                load_full_state(t.model, t.optimizer, state["model"], state["optimizer"])
            else:
                t.model.load_state_dict(state["model"])
                t.optimizer.load_state_dict(state["optimizer"])
            t.criterion.load_state_dict(state["criterion"])
            t.epoch, t.step_in_epoch, t.history = state["epoch"], state["step_in_epoch"], state["history"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # another run's or another model's file
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            raise CheckpointError(self.run_dir.checkpoint,
                                  f"it does not fit this run: {type(e).__name__} {first}") from None
        generators, losses = state.get("generators", []), state.get("epoch_loss", [])
        if len(generators) == self.env.world_size:  # the same ranks again: each takes up its own stream
            t.gen.set_state(generators[self.env.rank])
        if len(losses) == self.env.world_size:  # and its part of the interrupted epoch's loss
            t.epoch_loss = tuple(losses[self.env.rank])
        return True


# ---------------------------------------------------------------------------------------
# DeepSpeed's shards <-> full tensors

MOMENTUM = "momentum_buffer"


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
    groups, start = [], 0  # the trainer's groups are runs of the model's parameters, in order (optim.decay_runs)
    for (members, _), group in zip(decay_runs(model), optimizer.param_groups, strict=True):
        hyper = {k: v for k, v in group.items() if k != "params"}
        groups.append({**hyper, "params": list(range(start, start + len(members)))})
        start += len(members)
    return weights, {"state": state, "param_groups": groups}


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
    for group, saved in zip(optimizer.param_groups, optim_state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
