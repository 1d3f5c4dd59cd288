"""The model as the training step calls it, and the precision it computes in.

    precision = choose_precision(cfg, device)     # bf16 autocast? channels_last?
    model, net = wrap(model, optimizer, cfg, env)  # net: model, DDP(model) or DeepSpeed's engine

`model` is the plain module (what checkpoints hold; SyncBatchNorm replaces its BatchNorms when
asked for), `net` what the step calls: DDP reduces the gradients during backward, DeepSpeed's
engine (`dist.engine: deepspeed`, ZeRO 0/1/2 over fp32 weights) reduces them and steps the
optimizer's shards. A bf16 run computes in bf16 through torch's autocast under both (DeepSpeed's
own bf16 mode casts batch norm's weights but not its running statistics, which batch norm
refuses). On the CPU DeepSpeed runs over gloo (DS_ACCELERATOR=cpu).
"""
from __future__ import annotations

import functools
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import dist
from harness.registry import ConfigError


@dataclass(frozen=True)
class Precision:
    """How a run computes: bf16 autocast or fp32, channels_last or NCHW inputs."""
    device_type: str
    bf16: bool
    channels_last: bool

    def autocast(self):
        """bf16 autocast (under DDP and DeepSpeed alike), or nothing."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


@functools.cache
def cpu_info() -> tuple[str, frozenset]:
    """This CPU's vendor and feature flags as /proc/cpuinfo lists them (torch's AVX512-BF16 and
    AMX probes added); ("", {}) where there is no /proc/cpuinfo."""
    try:
        words = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        words = []
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    probed = {flag for flag, name in probes.items() if getattr(torch.cpu, name, lambda: False)()}
    vendor = next((w for w in words if w in ("GenuineIntel", "AuthenticAMD")), "")
    return vendor, frozenset(words) | probed


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm)."""
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_pays(vendor: str, flags: frozenset | set) -> bool:
    """Whether `dist.precision: auto` takes bf16 autocast on a CPU with these flags: where
    bench/precision.py measured ResNet-32 training steps (batch 128) faster in bf16 than in fp32,
    both in channels_last. Intel Xeon with AMX: 384 against 208 img/s (issue 14's table); AMD EPYC
    with AVX512-BF16: 498 against 330 (bench/results/precision.json). Not on an Intel Xeon with
    AVX512-BF16 and no AMX: its bf16 kernels run (oneDNN's avx512_core_bf16) but lose, 302 against
    422 img/s (bench/results/precision_intel_no_amx.json), and 1201 against 1528 for the learning
    tests' narrow ResNet-8 at batch 32. Arm's BF16 is unmeasured: fp32."""
    return "amx_bf16" in flags or (vendor == "AuthenticAMD" and "avx512_bf16" in flags)


def choose_precision(cfg, device: torch.device, deepspeed: bool = False) -> Precision:
    """dist.precision auto: bf16 autocast on CUDA and on a CPU where it pays (bf16_pays), else fp32;
    fp32 and bf16 force it. model.channels_last (default true) applies on every device: bench/precision.py
    measured ResNet-32 steps on this project's three CPUs 1.05-1.34x faster in channels_last in fp32
    and 1.03-1.13x in bf16 (issue 14's table, bench/results/precision*.json); not under DeepSpeed,
    whose flat buffers view every parameter as contiguous."""
    auto = device.type == "cuda" or (device.type == "cpu" and bf16_pays(*cpu_info()))
    bf16 = cfg.dist.precision == "bf16" or (cfg.dist.precision == "auto" and auto)
    return Precision(device.type, bf16, cfg.model.channels_last and not deepspeed)


COMPILE_MIN_STEPS = 5000
"""model.compile auto: runs of at least this many training steps are compiled. bench/precision.py
(bench/results/precision.json, 2-core CPU): ResNet-32 at batch 128 in bf16 channels_last runs 1.10x
faster compiled and the compilation costs about 60 s, paid back after about 27 epochs of 97 steps
(2600 steps); this is twice that. A 200-epoch CIFAR-LT run (about 20000 steps) is compiled, the
demo and the tests are not."""


def compiles(cfg, steps: int) -> bool:
    """Whether a run of `steps` training steps is compiled (model.compile)."""
    return cfg.model.compile is True or (cfg.model.compile == "auto" and steps >= COMPILE_MIN_STEPS)


def deepspeed_config(cfg, world_size: int) -> dict:
    """DeepSpeed's config, derived from the one config tree."""
    return {
        "train_batch_size": cfg.optim.batch_size,
        "train_micro_batch_size_per_gpu": dist.per_rank_batch(cfg.optim.batch_size, world_size),
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
    }


def uses_deepspeed(cfg, env: dist.DistEnv) -> bool:
    """DeepSpeed wraps several ranks; a single process needs no engine and runs plain."""
    return env.distributed and cfg.dist.engine == "deepspeed"


def wrap(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, env: dist.DistEnv,
         steps: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model, net): the plain module and what the step calls (plain, DDP or DeepSpeed; compiled when
    `compiles(cfg, steps)`). Build `optimizer` on `model`'s parameters first: SyncBatchNorm keeps them.
    A graph the compiler cannot handle runs eagerly instead (dynamo's suppress_errors)."""
    cuda = env.device.type == "cuda"
    if env.distributed and cfg.dist.sync_bn:
        if not cuda:
            raise ConfigError("dist.sync_bn: SyncBatchNorm runs on GPUs only; set dist.sync_bn: false on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if uses_deepspeed(cfg, env):
        net = deepspeed_engine(model, optimizer, cfg, env.world_size)
    elif env.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if cuda else None)
    else:
        net = model
    if compiles(cfg, steps):
        torch._dynamo.config.suppress_errors = True  # a failed compilation falls back to eager, with a warning
        if uses_deepspeed(cfg, env):
            net.compile()  # DeepSpeed's engine compiles its module in place
        else:
            net = torch.compile(net)
    return model, net


def deepspeed_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, world_size: int):
    """DeepSpeed's engine around `model`; it steps `optimizer`, whose groups then hold this rank's shard."""
    cpu = not torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if cpu else "cuda")
    import deepspeed
    import deepspeed.ops

    if cpu:  # its shared-memory all-reduce serves inference only; skip JIT-compiling it
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.utils.logger.setLevel(logging.WARNING)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, world_size))
    return engine
