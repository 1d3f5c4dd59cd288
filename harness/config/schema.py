"""The config tree of one run: small dataclasses with a default for everything.

    RunConfig(seed, data, aug, model, loss, optim, schedule, dist, log, stage)

Each field has a one-line docstring and a type the codec (harness.config.codec) checks when a
grid file is read; fixed choices are `Literal`s. Fields marked NOT_IN_SIGNATURE cannot change a
run's result (workers, logging) and are left out of its signature.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
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
    head: Literal["auto", "linear", "cosine", "projection", "experts"] = "auto"
    """Classifier head; auto takes the one the loss asks for (projection: linear + SupCon's MLP;
    experts: one scaled cosine head per expert of a multi-expert model, for ride and sade)."""
    params: dict = field(default_factory=dict, metadata=SIGNATURE_IF_SET)
    """Parameters of the backbone's builder (resnet32_experts: num_experts, reduce_dimension)."""
    head_init: Literal["auto", "kaiming", "torch"] = field(default="auto", metadata=SIGNATURE_IF_SET)
    """How the linear classifier the run trains from scratch starts: auto as its loss's authors' code
    starts it (Loss.head_init: Kaiming as LDAM-DRW's ResNet-32, nn.Linear's default as SupContrast's
    and GPaCo's; a second stage's new head as harness.stages.NEW_HEAD_INIT), kaiming or torch to
    give every loss of a grid the same start (an ablation without the init as a confound)."""
    channels_last: bool = True
    """Compute in the channels_last memory format (faster on GPUs and on these CPUs: bench/precision.py)."""
    compile: bool | Literal["auto"] = field(default="auto", metadata=NOT_IN_SIGNATURE)
    """torch.compile the model: auto compiles runs long enough to pay for the compilation
    (harness.run.wrap.COMPILE_MIN_STEPS training steps, from bench/precision.py), true always, false never."""


@dataclass
class LossConfig:
    name: str = "ce"
    """Registered loss (see harness.losses)."""
    params: dict = field(default_factory=dict)
    """Hyper-parameters of the loss; unset ones take the published defaults."""


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    """Optimizer: SGD with momentum, or Adam (betas 0.9, 0.999; LDMLR's classifier stage trains with it)."""
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
    """Warm-up over the first W epochs: epoch e (0-based) runs at lr·(e + 1)/W, raised once per epoch
    (lr/W, 2·lr/W, ..., lr), as LDAM-DRW's cifar_train.py `adjust_learning_rate`; 0: none."""
    decay: Literal["step", "cosine", "constant"] = "step"
    """Decay after warm-up."""
    milestones: list = field(default_factory=lambda: [0.8, 0.9])
    """Step decay points: epochs, or fractions of `epochs` when below 1 (160 and 180 of 200)."""
    gamma: float = 0.01
    """Step decay: the lr is multiplied by gamma^k after the k-th milestone (0.01 then 0.0001)."""

    def __post_init__(self):
        for key, value in (("epochs", self.epochs), ("warmup_epochs", self.warmup_epochs)):
            if value < 0:
                raise ConfigError(f"key 'schedule.{key}' must be >= 0, got {value}")


@dataclass
class DistConfig:
    engine: Literal["ddp", "deepspeed"] = "ddp"
    """Distributed wrapper of several ranks (a single process needs none and runs plain)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage: 0 none, 1 optimizer state sharded, 2 gradients too."""
    sync_bn: bool = False
    """SyncBatchNorm across ranks (GPUs only)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA and on CPUs where it was measured to pay (AMX; AVX512-BF16 on AMD:
    harness.run.wrap.bf16_pays), else fp32; fp32 and bf16 force it (DDP and DeepSpeed alike). The
    paper-protocol grids pin fp32."""
    timeout_s: int = field(default=600, metadata=NOT_IN_SIGNATURE)
    """Collective timeout: a dead rank ends the job instead of hanging it."""


@dataclass
class LogConfig:
    print_every: int = field(default=50, metadata=NOT_IN_SIGNATURE)
    """Print a progress line every this many steps (0: once per epoch)."""
    images: bool = field(default=True, metadata=NOT_IN_SIGNATURE)
    """Write augmented sample images and figures to TensorBoard."""
    eval_every: int = field(default=1, metadata=NOT_IN_SIGNATURE)
    """Evaluate on the test split (and the validation split) every this many epochs and after the
    last (0: after the last only); the epochs between have no metrics in the history, TensorBoard
    and progress.json, and the best epoch is chosen among those evaluated."""


@dataclass
class LdmlrConfig:
    """LDMLR's feature generator (Han et al. 2024; AlvinHan123/LDMLR): a class-conditional diffusion
    model on the first stage's penultimate features. Defaults are the code's unless said otherwise."""
    feature_aug: bool = True
    """Extract the features from the augmented training set, one pass (the code's utilis/feature_encode.py
    reads the training loader), or from the plain images (false)."""
    ratio: float = 0.2
    """Features generated for class c: max(round(ratio·n_c), min_count) (main.py --feature_ratio)."""
    min_count: int = 5
    """The least number of features generated for a class (main.py: max(..., 5))."""
    below: int = 0
    """Generate only for classes with fewer than this many training images (0: every class, as the code)."""
    epochs: int = 201
    """Generator training epochs over the features (main.py --diffusion_epoch)."""
    batch_size: int = 256
    """Generator batch (utilis/feature_encode.py's feature loader)."""
    lr: float = 1e-3
    """Peak Adam lr of the generator, cosine decay to 0. Not the code's: its constant SGD at 1e-4 fits
    its 1-D U-Net, not this MLP (harness.stages.diffusion)."""
    hidden: int = 512
    """Width of the MLP denoiser, even (the code's U-Net has dim 64, dim_mults 1, 2, 4, 8 on CIFAR)."""
    blocks: int = 4
    """Residual blocks of the MLP denoiser."""
    timesteps: int = 1000
    """Diffusion steps T, cosine schedule (model/ddpm_conditional.py's defaults)."""
    sampler: Literal["ddim", "ddpm"] = "ddim"
    """ddim: deterministic DDIM (η = 0) as the paper says; ddpm: ancestral sampling over all T steps, as
    the code runs (its sampling_timesteps is left at T)."""
    steps: int = 100
    """DDIM sampling steps (ddpm takes all T)."""
    scale: Literal["minmax", "standard"] = "minmax"
    """How features are scaled for the generator: minmax maps each dimension's range to [-1, 1] (the
    code maps x -> 2x - 1, assuming features in [0, 1]); standard: zero mean and unit variance per
    dimension. Sampling clips the predicted x0 to the real features' range, as the code clips to [-1, 1]."""

    def __post_init__(self):
        checks = [("ratio", self.ratio >= 0), ("min_count", self.min_count >= 0), ("below", self.below >= 0),
                  ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1), ("lr", self.lr > 0),
                  ("hidden", self.hidden >= 4 and self.hidden % 2 == 0), ("blocks", self.blocks >= 0),
                  ("timesteps", self.timesteps >= 2),
                  ("steps", 1 <= self.steps and (self.sampler == "ddpm" or self.steps <= self.timesteps))]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"key 'stage.ldmlr.{name}' is out of range: {getattr(self, name)!r} "
                                  f"(see its docstring in harness/config/schema.py)")


STAGE_FIELDS = {
    "train": ("sampler",),
    "crt": ("epochs", "lr", "sampler", "weight_decay", "batch_size", "loss", "bn", "from_epoch"),
    "linear": ("epochs", "lr", "sampler", "weight_decay", "batch_size", "loss", "from_epoch"),
    "tau_norm": ("tau", "tau_grid", "from_epoch"),
    "maxnorm": ("epochs", "lr", "sampler", "weight_decay", "batch_size", "loss", "maxnorm_thresh", "maxnorm_every",
                "from_epoch"),
    "ldmlr": ("epochs", "lr", "sampler", "weight_decay", "batch_size", "loss", "ldmlr", "from_epoch"),
}
"""The StageConfig fields each kind uses, besides kind and from_run."""

STAGE_DEFAULTS = {
    "": {"epochs": 10, "lr": 0.05},  # Kang et al. 2020: what every kind had before maxnorm and ldmlr
    # weight balancing's second stage (ShadeAlsha/LTR-weight-balancing demo2_second-stage-training.py)
    "maxnorm": {"epochs": 10, "lr": 0.01, "weight_decay": 0.1, "loss": "cb_softmax_bce"},
    # LDMLR's classifier (AlvinHan123/LDMLR main.py --epoch, --learning_rate_fc, --batch_size_fc;
    # fine_tune_tr.py: Adam, weight_decay 1e-5, nn.CrossEntropyLoss)
    "ldmlr": {"epochs": 400, "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 1024, "loss": "ce"},
}
"""What an unset (None) field of a kind takes; crt and linear leave weight_decay, batch_size and
loss unset, which means optim.weight_decay, optim.batch_size and ce."""

TAU_GRID = [round(0.1 * i, 1) for i in range(21)]
"""The τ candidates of Kang et al.'s τ-norm search: tau_norm.py sweeps np.linspace(0, 2, 21)."""


@dataclass
class StageConfig:
    """Decoupled training (Kang et al., ICLR 2020): a second stage starts from a finished run.

    The defaults keep what each kind always did here (cRT: BatchNorm frozen, the first stage's weight
    decay and last epoch; τ-norm: τ = 1). Kang et al.'s code (facebookresearch/classifier-balancing)
    runs cRT with BatchNorm in train mode, weight decay 5e-4 and the first stage's best-on-val epoch,
    and picks τ on val: `bn: train, weight_decay: 5e-4, from_epoch: best, tau: search` with
    `data.val: split`, which jobs/cifar_lt_decoupled.yaml sets."""
    kind: Literal["train", "crt", "tau_norm", "linear", "maxnorm", "ldmlr"] = "train"
    """train: a whole run. crt: a new linear classifier on the first stage's frozen features,
    class-balanced sampling; linear: the same, instance-balanced (SupCon's second stage);
    tau_norm: the first stage's classifier with w_j / ||w_j||^tau, no training; maxnorm: weight
    balancing's second stage (the first stage's classifier re-trained with a class-balanced loss,
    weight decay and a per-class MaxNorm constraint); ldmlr: the first stage's classifier re-trained
    on its features plus features a class-conditional diffusion model generates (harness.stages)."""
    from_run: str = ""
    """The first stage: a signature (a run folder next to this one), a run folder, or '' for this
    same config with stage.kind train (found in the same grid folder)."""
    epochs: int | None = None
    """Classifier re-training epochs; unset: 10 (Kang et al. 2020; weight balancing's code), 400 for
    ldmlr (its code; every epoch evaluates on the test set, as every run does)."""
    lr: float | None = None
    """Peak lr of the re-training; unset: 0.05 (Kang et al.'s 0.2 at batch 512, scaled to batch 128),
    0.01 for maxnorm, 1e-3 for ldmlr (their code). Cosine decay without warm-up; ldmlr's is constant."""
    tau: float | Literal["search"] = 1.0
    """tau_norm's exponent: 1 normalises every class weight to unit norm; search: the τ of tau_grid with
    the best balanced accuracy on the validation split (data.val split or val, never test), as Kang et al.
    choose it (their tau_norm.py prints every τ's accuracy on val). result.json's tau_search holds the
    chosen τ and each candidate's val accuracy. The default stays 1 so that existing cells keep their meaning."""
    tau_grid: list = field(default_factory=lambda: list(TAU_GRID), metadata=SIGNATURE_IF_SET)
    """tau_norm with tau search: the candidates, in order (a tie goes to the first); unset: 0, 0.1, ..., 2
    (Kang et al.'s tau_norm.py)."""
    sampler: Literal["auto", "instance", "class", "sqrt"] = "auto"
    """Training sampler: class-balanced, square-root or instance-balanced; auto: class for crt, else instance."""
    weight_decay: float | None = field(default=None, metadata=SIGNATURE_IF_SET)
    """Weight decay of the re-training; unset: optim.weight_decay (crt, linear), 0.1 (maxnorm), 1e-5 (ldmlr).
    Kang et al.'s cRT configs use 5e-4 (ImageNet-LT, Places-LT) and 1e-4 (iNaturalist), each equal to their
    first stage's: the default keeps that rule (and existing cells' meaning); jobs/cifar_lt_decoupled.yaml
    sets their 5e-4."""
    batch_size: int | None = field(default=None, metadata=SIGNATURE_IF_SET)
    """Batch of the re-training; unset: optim.batch_size, 1024 for ldmlr (its code). Weight balancing's
    code uses 64."""
    loss: str | None = field(default=None, metadata=SIGNATURE_IF_SET)
    """Loss of the re-training, a registered name with a linear head; unset: ce, and cb_softmax_bce for
    maxnorm (weight balancing's code); cb_softmax is the class-balanced softmax cross-entropy."""
    bn: Literal["frozen", "train"] = field(default="frozen", metadata=SIGNATURE_IF_SET)
    """crt: the frozen backbone's BatchNorm. frozen: eval mode, the first stage's statistics (the default,
    what cRT always did here: the features the classifier trains on are the ones it is tested on). train:
    as Kang et al.'s run_networks.py runs cRT (every network in train() mode, the backbone's parameters
    frozen): each batch is normalised with its own statistics, and the running statistics move (momentum
    0.1) towards the class-balanced batches' and are what evaluation uses. Their weights never change."""
    from_epoch: Literal["last", "best"] = field(default="last", metadata=SIGNATURE_IF_SET)
    """The first stage's weights a second stage starts from: last (its final epoch, the default: what every
    second stage did before) or best (its best epoch on the validation split, ckpt/best.pt, which a run keeps
    when data.val is split or val), as Kang et al.'s code loads the first stage's state_dict_best for cRT and
    τ-norm. best needs data.val split or val: a best epoch chosen on the test set is not kept."""
    maxnorm_thresh: float = field(default=0.1, metadata=SIGNATURE_IF_SET)
    """maxnorm: the radius of each class weight's ball, relative: min + thresh·(max - min) of the first
    stage's per-class norms, fixed before training (MaxNorm_via_PGD, thresh 0.1 in the code)."""
    maxnorm_every: Literal["epoch", "step"] = field(default="epoch", metadata=SIGNATURE_IF_SET)
    """maxnorm: project after every epoch (the code's utils/trainval.py) or after every step (the paper, eq. 5)."""
    ldmlr: LdmlrConfig = field(default_factory=LdmlrConfig, metadata=SIGNATURE_IF_SET)
    """ldmlr: the feature generator."""

    def __post_init__(self):
        # fields a kind does not use take their defaults, so they split no signatures (a grid's
        # base may set stage.epochs for its crt cells and its train cells alike); then unset ones
        # take the kind's (STAGE_DEFAULTS)
        used = STAGE_FIELDS[self.kind]
        for f in fields(self):
            if f.name not in used + ("kind", "from_run"):
                setattr(self, f.name, f.default_factory() if f.default_factory is not MISSING else f.default)
        for name, value in {**STAGE_DEFAULTS[""], **STAGE_DEFAULTS.get(self.kind, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("lr", "weight_decay", "tau"):  # a grid's 1 is 1.0, as in every float field
            if isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool):
                setattr(self, name, float(getattr(self, name)))
        if self.tau != "search":  # the candidates count only for a search
            self.tau_grid = list(TAU_GRID)


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


