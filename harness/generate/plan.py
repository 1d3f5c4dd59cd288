"""What to generate: the config of a tail-generation job, the per-class counts, the work items.

A work item is (class_index, index_within_class). Everything about an item (prompt, seed,
the batch it is generated in) is a function of the config and the item alone, never of
the number of shards, so any split of the plan gives the same images.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import yaml

from harness.registry import ConfigError

T = TypeVar("T")


@dataclass
class GenerateConfig:
    """One tail-generation job; the dataset (class names, training counts) comes from the caller."""

    model: str = "models/stable-diffusion-v1-5"  # diffusers directory (or a cached hub id)
    fill: Literal["to_max", "to_count", "ratio"] = "to_max"  # how many images each class gets
    count: int = 0  # fill="to_count": top every class up to this many (real + synthetic)
    ratio: float = 1.0  # fill="ratio": generate ratio * (n_max - n_c), rounded half up
    prompt: str = "a photo of a {name}"  # template; {name} is the class name
    prompts_file: str | None = None  # YAML/JSON: class name -> list of prompts, cycled by index
    negative_prompt: str = ""  # the same negative prompt for every image
    guidance_scale: float = 7.5  # classifier-free guidance weight
    steps: int = 25  # denoising steps
    scheduler: Literal["ddim", "pndm", "euler", "euler_a", "dpm++"] = "ddim"  # sampler
    height: int = 512  # generation height in pixels (multiple of 8)
    width: int = 512  # generation width in pixels (multiple of 8)
    out_size: int | None = 32  # saved images are downscaled to out_size x out_size (None: keep)
    batch_size: int = 8  # images per pipeline call; also fixes how items are grouped
    seed: int = 0  # base seed; each image's seed is derived from (seed, class, index)
    mode: Literal["txt2img", "img2img"] = "txt2img"  # img2img starts from real training images
    strength: float = 0.75  # img2img: how far from the real image (0 = copy, 1 = pure noise)
    compile: bool = False  # torch.compile the UNet (CUDA; pays a warm-up per batch shape)
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU

    # Fields that change no pixel (beyond float noise) and may differ when a run resumes.
    NON_RESULT_FIELDS = ("batch_size", "compile")

    @classmethod
    def from_dict(cls, d: dict, where: str = "generate") -> "GenerateConfig":
        """Build from a job file's mapping; unknown keys and bad values are ConfigErrors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "generate") -> None:
        def bad(key: str, why: str):
            raise ConfigError(f"{where}.{key}: {why}")

        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _FIELD_TYPES[f.name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                bad(f.name, f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")

        choices = {"fill": ("to_max", "to_count", "ratio"), "mode": ("txt2img", "img2img"),
                   "scheduler": ("ddim", "pndm", "euler", "euler_a", "dpm++"),
                   "dtype": ("auto", "fp16", "bf16", "fp32")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, f"'{getattr(self, key)}' is not one of {', '.join(allowed)}")
        if self.fill == "to_count" and self.count <= 0:
            bad("count", "fill=to_count needs a positive count")
        if self.ratio < 0:
            bad("ratio", "must be >= 0")
        if "{name}" not in self.prompt and self.prompts_file is None:
            bad("prompt", "the template must contain {name}, or give a prompts_file")
        for key in ("height", "width"):
            if getattr(self, key) <= 0 or getattr(self, key) % 8:
                bad(key, f"{getattr(self, key)} must be a positive multiple of 8")
        if self.out_size is not None and self.out_size <= 0:
            bad("out_size", "must be positive (or null to keep the generation size)")
        if self.steps <= 0:
            bad("steps", "must be positive")
        if self.batch_size <= 0:
            bad("batch_size", "must be positive")
        if not 0.0 < self.strength <= 1.0:
            bad("strength", "must be in (0, 1]")

    def result_fields(self) -> dict:
        """The fields that decide the pixels; a resumed run must match them."""
        d = dataclasses.asdict(self)
        for key in self.NON_RESULT_FIELDS:
            d.pop(key)
        return d


# Accepted Python types per annotation (a YAML int is fine where a float is expected);
# a Literal[...] field takes a str, checked against its choices in validate().
_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
          "int | None": (int, type(None)), "str | None": (str, type(None))}
_FIELD_TYPES = {f.name: _TYPES.get(f.type, (str,)) for f in dataclasses.fields(GenerateConfig)}


def plan_counts(train_counts: Sequence[int], n_max: int, fill: str = "to_max", count: int = 0,
                ratio: float = 1.0) -> list[int]:
    """Synthetic images needed per class.

    to_max: n_max - n_c; to_count: max(0, count - n_c); ratio: ratio * (n_max - n_c)
    rounded half up. Never negative.
    """
    if fill == "to_max":
        need = [n_max - n for n in train_counts]
    elif fill == "to_count":
        need = [count - n for n in train_counts]
    elif fill == "ratio":
        need = [int(ratio * (n_max - n) + 0.5) for n in train_counts]
    else:
        raise ConfigError(f"generate.fill: unknown '{fill}'; choose to_max, to_count or ratio")
    return [max(0, int(n)) for n in need]


class Item(NamedTuple):
    """One image to generate: the class and its index among that class's synthetic images."""

    class_index: int
    index: int


def item_seed(base_seed: int, class_index: int, index: int) -> int:
    """A 63-bit seed from blake2b('<base>:<class>:<index>'): stable across machines and shard counts."""
    digest = hashlib.blake2b(f"{base_seed}:{class_index}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def load_prompts_file(path: str | Path) -> dict[str, list[str]]:
    """class name -> list of prompts, from YAML or JSON (a single string counts as a list of one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"generate.prompts_file: {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"generate.prompts_file: cannot read {path} ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"generate.prompts_file: {path} must map class names to lists of prompts")
    out = {}
    for name, prompts in data.items():
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"generate.prompts_file: {path}: class '{name}' needs a non-empty list of strings")
        out[str(name)] = prompts
    return out


class Plan:
    """The work items of a job in canonical order (class by class, index by index)."""

    def __init__(self, cfg: GenerateConfig, class_names: Sequence[str], counts: Sequence[int]):
        if len(class_names) != len(counts):
            raise ConfigError(f"generate: {len(class_names)} class names but {len(counts)} counts")
        self.cfg = cfg
        self.class_names = list(class_names)
        self.counts = [int(n) for n in counts]
        self.items = [Item(c, i) for c, n in enumerate(self.counts) for i in range(n)]
        self.prompts: dict[str, list[str]] | None = None
        if cfg.prompts_file is not None:
            self.prompts = load_prompts_file(cfg.prompts_file)
            missing = [self.class_names[c] for c, n in enumerate(self.counts)
                       if n > 0 and self.class_names[c] not in self.prompts]
            if missing:
                raise ConfigError(f"generate.prompts_file: no prompts for class(es) {', '.join(missing)}; "
                                  f"add them to {cfg.prompts_file}")
            unknown = sorted(set(self.prompts) - set(self.class_names))
            if unknown:  # a misspelt class would silently get the other prompts; names are never paths
                raise ConfigError(f"generate.prompts_file: {cfg.prompts_file} names {unknown[0]!r}, which is not a "
                                  f"class of the dataset; fix or remove it")

    @classmethod
    def from_train_counts(cls, cfg: GenerateConfig, class_names: Sequence[str],
                          train_counts: Sequence[int], n_max: int | None = None) -> "Plan":
        """The plan that fills the classes of a long-tailed training set by cfg's fill policy."""
        n_max = max(train_counts) if n_max is None else n_max
        return cls(cfg, class_names, plan_counts(train_counts, n_max, cfg.fill, cfg.count, cfg.ratio))

    def __len__(self) -> int:
        return len(self.items)

    def prompt_for(self, item: Item) -> str:
        name = self.class_names[item.class_index]
        if self.prompts is not None:
            options = self.prompts[name]
            return options[item.index % len(options)].replace("{name}", name)
        return self.cfg.prompt.replace("{name}", name)

    def seed_for(self, item: Item) -> int:
        return item_seed(self.cfg.seed, item.class_index, item.index)

    def batches(self, batch_size: int | None = None) -> list[list[Item]]:
        """Items grouped into pipeline calls: per class, indices [b*bs, (b+1)*bs).

        The grouping depends on the batch size only, so a batch holds the same items however
        the plan is sharded or resumed, and its images are bit-for-bit reproducible.
        """
        bs = batch_size or self.cfg.batch_size
        return [[Item(c, i) for i in range(start, min(start + bs, n))]
                for c, n in enumerate(self.counts) for start in range(0, n, bs)]

    def to_json(self) -> dict:
        return {"config": self.cfg.result_fields(), "class_names": self.class_names, "counts": self.counts,
                "prompts": self.prompts}


def shard(seq: Sequence[T], shard_index: int, num_shards: int) -> list[T]:
    """Round-robin share of `seq` for shard `shard_index` of `num_shards`; shards partition seq."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard {shard_index} of {num_shards}: need 0 <= shard_index < num_shards")
    return list(seq[shard_index::num_shards])
