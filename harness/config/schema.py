"""The config tree of one run: small dataclasses with a default for everything.

    RunConfig(seed, data, aug, model, loss, optim, schedule, dist, log, stage)

Each field has a one-line docstring and a type the codec (harness.config.codec) checks when a
grid file is read; fixed choices are `Literal`s. Fields marked NOT_IN_SIGNATURE cannot change a
run's result (workers, logging) and are left out of its signature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.registry import ConfigError

# Field metadata: fields marked with NOT_IN_SIGNATURE do not change a run's result.
NOT_IN_SIGNATURE = {"signature": False}
# Fields marked with SIGNATURE_IF_SET count only when they differ from their default, so a
# section added later leaves the signatures of existing runs as they were.
SIGNATURE_IF_SET = {"signature": "if_set"}


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """Dataset card: a name under datasets/ (cifar10, cifar100, mini_imagenet, synthetic) or a path."""
    root: str = "data"
    """Folder with the prepared .beton files (one subfolder per dataset)."""
    imbalance: str = "exp"
    """Registered imbalance profile: exp, step, none."""
    imbalance_factor: float = 100.0
    """n_max / n_min of the training set."""
    imbalance_params: dict = field(default_factory=dict)
    """Extra parameters of the profile (step: mu)."""
    loader: Literal["ffcv", "memory"] = "ffcv"
    """ffcv: FFCV pipelines; memory: the whole uint8 set as one tensor on the device."""
    num_workers: int = field(default=2, metadata=NOT_IN_SIGNATURE)
    """Loader worker threads (FFCV)."""
    val: Literal["test", "val", "split"] = "test"
    """Model selection on: test (the LDAM-DRW protocol), val (the source's), split (carved from train)."""
    val_fraction: float = 0.1
    """Fraction of each class held out when val is 'split'."""
    generated: str = field(default="", metadata=SIGNATURE_IF_SET)
    """Generated tail images added to the training set: the out_dir of tools/generate_tail.py
    ('' for none). The grid key of older grids, aug '+synthetic', still sets it."""
    generated_max_share: float = field(default=0.5, metadata=SIGNATURE_IF_SET)
    """Cap on the generated share of each class's training images (0..1; 1 takes them all)."""

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"key 'data.val_fraction' must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.generated_max_share <= 1:
            raise ConfigError(f"key 'data.generated_max_share' must be in [0, 1], got {self.generated_max_share}")


@dataclass
class AugConfig:
    name: str = "standard"
    """Registered augmentation, composable with '+': none, standard, standard+cutout, ..."""
    params: dict = field(default_factory=dict)
    """Parameters of the augmentations, by their names."""


@dataclass
class ModelConfig:
    name: str = "resnet32"
    """Registered backbone."""
    head: Literal["auto", "linear", "cosine", "projection"] = "auto"
    """Classifier head; auto takes the one the loss asks for (projection: linear + SupCon's MLP)."""
    channels_last: bool = True
    """Compute in the channels_last memory format (faster on GPUs and on these CPUs: bench/precision.py)."""
    compile: bool = field(default=False, metadata=NOT_IN_SIGNATURE)
    """torch.compile the model (CUDA only)."""


@dataclass
class LossConfig:
    name: str = "ce"
    """Registered loss (see harness.losses)."""
    params: dict = field(default_factory=dict)
    """Hyper-parameters of the loss; unset ones take the published defaults."""


@dataclass
class OptimConfig:
    name: Literal["sgd"] = "sgd"
    """Optimizer."""
    lr: float = 0.1
    """Peak learning rate for the global batch."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 2e-4
    """L2 weight decay."""
    nesterov: bool = False
    """Nesterov momentum."""
    batch_size: int = 128
    """Global batch size (split over the ranks)."""
    scale_lr: bool = False
    """Linear scaling rule: lr × world_size when each rank keeps batch_size."""


@dataclass
class ScheduleConfig:
    epochs: int = 200
    """Training epochs."""
    warmup_epochs: int = 5
    """Linear warm-up from lr/warmup_epochs to lr."""
    decay: Literal["step", "cosine", "constant"] = "step"
    """Decay after warm-up."""
    milestones: list = field(default_factory=lambda: [0.8, 0.9])
    """Step decay points: epochs, or fractions of `epochs` when below 1 (160 and 180 of 200)."""
    gamma: float = 0.01
    """Step decay: the lr is multiplied by gamma^k after the k-th milestone (0.01 then 0.0001)."""


@dataclass
class DistConfig:
    engine: Literal["ddp", "deepspeed"] = "ddp"
    """Distributed wrapper of several ranks (a single process needs none and runs plain)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage: 0 none, 1 optimizer state sharded, 2 gradients too."""
    sync_bn: bool = False
    """SyncBatchNorm across ranks (GPUs only)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32; fp32 and bf16
    force it (DDP and DeepSpeed alike). The paper-protocol grids pin fp32."""
    timeout_s: int = field(default=600, metadata=NOT_IN_SIGNATURE)
    """Collective timeout: a dead rank ends the job instead of hanging it."""


@dataclass
class LogConfig:
    print_every: int = field(default=50, metadata=NOT_IN_SIGNATURE)
    """Print a progress line every this many steps (0: once per epoch)."""
    images: bool = field(default=True, metadata=NOT_IN_SIGNATURE)
    """Write augmented sample images and figures to TensorBoard."""


@dataclass
class StageConfig:
    """Decoupled training (Kang et al., ICLR 2020): a second stage starts from a finished run."""
    kind: Literal["train", "crt", "tau_norm", "linear"] = "train"
    """train: a whole run. crt: a new linear classifier on the first stage's frozen features,
    class-balanced sampling; linear: the same, instance-balanced (SupCon's second stage);
    tau_norm: the first stage's classifier with w_j / ||w_j||^tau, no training."""
    from_run: str = ""
    """The first stage: a signature (a run folder next to this one), a run folder, or '' for this
    same config with stage.kind train (found in the same grid folder)."""
    epochs: int = 10
    """Classifier re-training epochs (crt, linear): Kang et al. 2020 use 10."""
    lr: float = 0.05
    """Peak lr of the re-training, cosine decay without warm-up: Kang et al.'s 0.2 at batch 512,
    scaled to batch 128."""
    tau: float = 1.0
    """tau_norm's exponent: 1 normalises every class weight to unit norm (Kang et al.)."""
    sampler: Literal["auto", "instance", "class", "sqrt"] = "auto"
    """Training sampler: class-balanced, square-root or instance-balanced; auto: class for crt, else instance."""

    def __post_init__(self):
        # fields a kind does not use take their defaults, so they split no signatures (a grid's
        # base may set stage.epochs for its crt cells and its train cells alike)
        unused = {"train": ("epochs", "lr", "tau"), "crt": ("tau",), "linear": ("tau",),
                  "tau_norm": ("epochs", "lr", "sampler")}
        for name in unused.get(self.kind, ()):
            setattr(self, name, self.__dataclass_fields__[name].default)


@dataclass
class RunConfig:
    seed: int = 0
    """Seed of the model init, the data order and the augmentation."""
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)
    stage: StageConfig = field(default_factory=StageConfig, metadata=SIGNATURE_IF_SET)

    def __post_init__(self):
        generated_from_aug(self)


def generated_from_aug(cfg: RunConfig) -> None:
    """The grid key older grids use for generated tail images, `aug: {name: standard+synthetic,
    params: {synthetic: {path, max_share}}}`, moved to where it belongs: data.generated."""
    parts = [p.strip() for p in cfg.aug.name.split("+")]
    if "synthetic" not in parts:
        return
    params = dict(cfg.aug.params.get("synthetic") or {})
    unknown = sorted(set(params) - {"path", "max_share"})
    if unknown:
        raise ConfigError(f"key 'aug.params.synthetic' has no parameter {unknown[0]}; it accepts: max_share, path")
    path, share = params.get("path", ""), params.get("max_share", 0.5)
    if not isinstance(path, str) or not path:
        raise ConfigError("key 'aug.params.synthetic.path': give the generator's output folder "
                          "(the out_dir of tools/generate_tail.py), or set data.generated")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"key 'aug.params.synthetic.max_share' must be a number in [0, 1], got {share!r}")
    cfg.aug.name = "+".join(p for p in parts if p != "synthetic") or "none"
    cfg.aug.params = {k: v for k, v in cfg.aug.params.items() if k != "synthetic"}
    cfg.data.generated, cfg.data.generated_max_share = path, float(share)


@dataclass
class LaunchConfig:
    """How a grid's cells run; not part of any cell's signature."""
    cluster: Literal["local", "debug", "slurm"] = "local"
    """local: processes on this machine; debug: in this process; slurm: array jobs."""
    parallel: int | None = None
    """Cells at a time: local processes (unset: 1), or the %K of a SLURM array (unset: the profile's)."""
    profile: str = "local"
    """Cluster profile, slurm/<profile>.yaml."""
    slurm: dict = field(default_factory=dict)
    """Per-grid overrides of the profile's fields (partition, time_min, ...)."""


