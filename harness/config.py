"""One config tree for a run, and grid files that expand into cells.

A `RunConfig` is made of small dataclasses with defaults for everything. A grid file is

    name: demo                    # the folder under runs/
    base: {data: {...}, ...}      # overrides of the defaults, for every cell
    grid: {loss.name: [ce, ldam_drw], data.imbalance_factor: [10, 100]}
    launch: {cluster: local, ...} # how the cells are run (see harness.launch)

Every cell is the base plus one point of the cartesian product of the grid's lists. A cell's
signature is a short hash of its resolved config, minus the fields that cannot change its
result (workers, logging cadence), so the same experiment always lands in the same folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"key 'data.val_fraction' must be between 0 and 1, got {self.val_fraction}")


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
    """Use channels_last memory format on CUDA."""
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
    """auto: bf16 autocast on CUDA, fp32 on the CPU; bf16 autocasts on the CPU too (DDP and DeepSpeed alike)."""
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


# ---------------------------------------------------------------------------------------
# dict <-> dataclass, with the key that went wrong in every error

def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def from_dict(cls: type, data: dict, where: str = "", prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}unknown key '{prefix}{key}'; known: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, tp = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, value, where, f"{prefix}{f.name}.")
            continue
        if not _type_ok(value, tp):
            want = typing.get_args(tp) if typing.get_origin(tp) is Literal else getattr(tp, "__name__", tp)
            raise ConfigError(f"{where}key '{prefix}{f.name}' must be {want}, got {value!r}")
        kwargs[f.name] = float(value) if tp is float else value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _signature_dict(cfg: Any) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        keep, value = f.metadata.get("signature", True), getattr(cfg, f.name)
        if not keep or (keep == "if_set" and value == f.default_factory()):
            continue
        out[f.name] = _signature_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def signature(cfg: RunConfig) -> str:
    """A stable 10-hex-digit hash of everything in `cfg` that can change the result."""
    blob = json.dumps(_signature_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for dotted 'a.b', creating the mappings on the way."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"key '{dotted}': '{p}' is not a section")
        tree = node
    tree[leaf] = value


def get_dotted(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads '1e30' as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


# ---------------------------------------------------------------------------------------
# grids

def axis_name(dotted: str) -> str:
    """A short name for a grid axis: 'loss.name' -> 'loss', 'data.imbalance_factor' -> 'imbalance_factor'."""
    parts = dotted.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


@dataclass
class Cell:
    """One run of a grid: its config, its signature and the grid values that chose it."""
    config: RunConfig
    axes: dict
    signature: str

    @property
    def label(self) -> str:
        return " ".join(f"{axis_name(k)}={v}" for k, v in self.axes.items()) or "base"


@dataclass
class Grid:
    name: str
    path: Path
    base: dict
    axes: dict
    launch: LaunchConfig
    cells: list[Cell]


GRID_KEYS = {"name", "base", "grid", "launch", "description"}


def read_yaml(path: Path, what: str, keys: str) -> dict:
    """The mapping in a YAML file, or a one-line ConfigError naming the file (and the line)."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} is a mapping with {keys}")
    return raw


def load_grid(path: str | Path, overrides: list[str] = ()) -> Grid:
    """Read a grid file, apply `key=value` overrides to its base, validate and expand it."""
    path = Path(path)
    where = f"{path}: "
    raw = read_yaml(path, "a grid file", "name, base, grid, launch")
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}unknown top-level key '{unknown[0]}'; known: {', '.join(sorted(GRID_KEYS))}")
    name = raw.get("name") or path.stem
    base = raw.get("base") or {}
    axes = raw.get("grid") or {}
    launch = raw.get("launch") or {}
    for key, value in (parse_override(o) for o in overrides):
        if key.startswith("launch."):
            set_dotted(launch, key[len("launch."):], value)
        else:
            set_dotted(base, key, value)
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}'grid' must map dotted keys to lists")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}grid key '{key}' must be a non-empty list")
    cells = expand(base, axes, where)
    if not cells:
        raise ConfigError(f"{where}the grid has no cells")
    launch_cfg = from_dict(LaunchConfig, launch, where, "launch.")
    return Grid(name=str(name), path=path, base=base, axes=axes, launch=launch_cfg, cells=cells)


def expand(base: dict, axes: dict, where: str = "") -> list[Cell]:
    """The cartesian product of the axes over the base, each cell validated."""
    import copy
    cells, seen = [], set()
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        tree = copy.deepcopy(base)
        point = dict(zip(keys, values))
        for key, value in point.items():
            set_dotted(tree, key, value)
        cfg = from_dict(RunConfig, tree, where)
        validate(cfg, where)
        sig = signature(cfg)
        if sig not in seen:
            seen.add(sig)
            cells.append(Cell(cfg, point, sig))
    return cells


def validate(cfg: RunConfig, where: str = "") -> None:
    """Check the registered names and the combinations before anything runs."""
    from harness.data.augment import check_augmentation
    from harness.data.imbalance import PROFILES
    from harness.losses import LOSSES
    from harness.models import MODELS, check_head
    from harness.stages import check_stage

    def named(key: str, fn, *args):
        try:
            fn(*args)
        except ConfigError as e:
            raise ConfigError(f"{where}key '{key}': {e}") from None

    named("data.imbalance", PROFILES.check_params, cfg.data.imbalance, cfg.data.imbalance_params,
          ("n_max", "num_classes", "factor"))
    named("loss.name", LOSSES.check_params, cfg.loss.name, cfg.loss.params, ("class_counts",))
    named("model.name", MODELS.get, cfg.model.name)
    named("model.head", check_head, cfg.model.head, LOSSES.get(cfg.loss.name))
    named("aug.name", check_augmentation, cfg.aug.name, cfg.aug.params)
    check_stage(cfg, where)
    if cfg.data.imbalance_factor < 1:
        raise ConfigError(f"{where}key 'data.imbalance_factor' must be >= 1, got {cfg.data.imbalance_factor}")
    if cfg.schedule.epochs < 1 or cfg.optim.batch_size < 1:
        raise ConfigError(f"{where}key 'schedule.epochs' and 'optim.batch_size' must be >= 1")
