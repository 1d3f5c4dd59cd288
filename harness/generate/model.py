"""Loading a Stable Diffusion pipeline: checks before submission, then the one loading path.

`check_model` runs on the submitting machine before any job exists and raises a one-line
`ConfigError`; `load_pipeline` runs inside each task.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from harness.registry import ConfigError

# Scheduler names a job file may use -> diffusers class name.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# The sub-folders a Stable Diffusion 1.x/2.x directory must have, and the config file each holds.
_COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "scheduler": "scheduler_config.json",
}
_WEIGHTS = ("*.safetensors", "*.bin", "*.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_cached_hub_id(model: str) -> bool:
    """True if `model` looks like a hub id whose model_index.json is in the local HF cache."""
    if not _HUB_ID.match(model):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def check_model(model: str) -> None:
    """Raise ConfigError (one line) unless `model` is a well-formed diffusers SD directory.

    A string that is not an existing directory is accepted only as a Hugging Face hub id
    already in the local cache (compute nodes usually have no internet).
    """
    path = Path(model).expanduser()
    if not path.exists():
        if _is_cached_hub_id(model):
            return
        raise ConfigError(
            f"generate.model: no such directory '{model}' (nor a hub id in the local Hugging Face "
            f"cache); download it first, e.g. `hf download <repo_id> --local-dir {model}`, or fix the path")
    if not path.is_dir():
        raise ConfigError(f"generate.model: '{model}' is a file; give the diffusers model directory")
    index = path / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"generate.model: '{model}' has no model_index.json; "
                          f"it is not a diffusers pipeline directory (save one with pipe.save_pretrained)")
    _read_json(index, model)
    for name, config in _COMPONENTS.items():
        sub = path / name
        if not sub.is_dir():
            raise ConfigError(f"generate.model: '{model}' has no {name}/ folder; "
                              f"a Stable Diffusion directory needs {', '.join(_COMPONENTS)}")
        if config is not None:
            if not (sub / config).is_file():
                raise ConfigError(f"generate.model: '{model}/{name}' has no {config}")
            _read_json(sub / config, model)
        if name in ("unet", "vae", "text_encoder") and not any(any(sub.glob(p)) for p in _WEIGHTS):
            raise ConfigError(f"generate.model: '{model}/{name}' has no weights (*.safetensors or *.bin); "
                              f"the download is incomplete")
        if name == "tokenizer" and not ((sub / "tokenizer.json").is_file()
                                        or ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file())):
            raise ConfigError(f"generate.model: '{model}/tokenizer' has neither tokenizer.json "
                              f"nor vocab.json + merges.txt")


def _read_json(file: Path, model: str) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"generate.model: cannot read {file} ({type(e).__name__}); "
                          f"re-download '{model}'") from None


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """'auto' is fp16 on CUDA and fp32 elsewhere; fp16 on the CPU is refused."""
    device = torch.device(device)
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"generate.dtype: unknown '{name}'; choose auto, fp16, bf16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("generate.dtype: fp16 is not supported on the CPU; use fp32 or auto")
    return DTYPES[name]


def set_scheduler(pipe, name: str) -> None:
    """Replace pipe.scheduler by the named scheduler, built from the model's own scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"generate.scheduler: unknown '{name}'; choose {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def _ensure_sdpa(pipe) -> None:
    """Use PyTorch SDPA attention (diffusers' default) in the UNet and VAE, undoing any override."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in (pipe.unet, pipe.vae):
        if any(type(p) is not AttnProcessor2_0 for p in module.attn_processors.values()):
            module.set_attn_processor(AttnProcessor2_0())


def as_img2img(pipe):
    """An img2img pipeline sharing `pipe`'s modules (no copy, no reload)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    if isinstance(pipe, StableDiffusionImg2ImgPipeline):
        return pipe
    img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img.set_progress_bar_config(disable=True)
    return img


def as_txt2img(pipe):
    """A text-to-image pipeline sharing `pipe`'s modules (undoes as_img2img)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    if not isinstance(pipe, StableDiffusionImg2ImgPipeline):
        return pipe
    txt = StableDiffusionPipeline(**pipe.components, requires_safety_checker=False)
    txt.set_progress_bar_config(disable=True)
    return txt


def load_pipeline(model: str, device: torch.device | str = "cpu", dtype: str | torch.dtype = "auto",
                  compile_unet: bool = False, img2img: bool = False, scheduler: str | None = None):
    """Load a Stable Diffusion pipeline for generation on `device`.

    A local directory loads with local_files_only=True; anything else is passed to
    from_pretrained as a hub id. No safety checker; the pipeline's own progress bar is off.
    """
    from diffusers import StableDiffusionPipeline

    device = torch.device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
    local = Path(model).expanduser().is_dir()
    pipe = StableDiffusionPipeline.from_pretrained(
        str(Path(model).expanduser()) if local else model, dtype=torch_dtype,
        safety_checker=None, requires_safety_checker=False, local_files_only=local,
        low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)  # without it diffusers warns
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    _ensure_sdpa(pipe)
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    if compile_unet:
        if device.type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)
        pipe.unet.compile()
    return as_img2img(pipe) if img2img else pipe


def load_pipeline_for(cfg, device: torch.device | str = "cpu"):
    """load_pipeline with the model, dtype, compile, scheduler and mode of a GenerateConfig."""
    return load_pipeline(cfg.model, device, cfg.dtype, compile_unet=cfg.compile,
                         img2img=cfg.mode == "img2img", scheduler=cfg.scheduler)
