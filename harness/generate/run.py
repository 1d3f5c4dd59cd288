"""Generating one shard of a plan: resumable, atomic, reproducible image by image.

Output layout under `out_dir`:

    plan.json                         config (result fields), class names, counts
    images/<class:03d>/<index:06d>.png   one image, already downsized to out_size
    images/<class:03d>/<index:06d>.json  its manifest row (sidecar)
    manifest.jsonl                    all rows in canonical order (write_manifest, after all shards)

Each file is written to a temporary name and renamed into place; the row is renamed
before the image, so an image on disk always has its row and the image is the "done"
marker. Shards never share a file, so any number can run at once, and a crashed one
resumes by skipping what exists.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.console import Progress
from harness.files import atomic_path, atomic_write_json, atomic_write_text
from harness.generate.model import as_img2img, as_txt2img, set_scheduler
from harness.generate.plan import GenerateConfig, Item, Plan, shard
from harness.registry import ConfigError


def image_path(out_dir: str | Path, item: Item) -> Path:
    return Path(out_dir) / "images" / f"{item.class_index:03d}" / f"{item.index:06d}.png"


def row_path(out_dir: str | Path, item: Item) -> Path:
    return image_path(out_dir, item).with_suffix(".json")


def is_done(out_dir: str | Path, item: Item) -> bool:
    return image_path(out_dir, item).is_file() and row_path(out_dir, item).is_file()


def write_plan(out_dir: str | Path, plan: Plan) -> None:
    """Record the plan in out_dir/plan.json, or check it against the one already there.

    Resuming with other result fields (model, steps, prompts, seed, ...) or other class
    names would mix two different image sets: that is a ConfigError. Other counts are
    fine (the plan grows or shrinks; existing images stay valid).
    """
    path = Path(out_dir) / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = plan.to_json()
    if path.is_file():
        old = json.loads(path.read_text())
        if old["class_names"] != new["class_names"]:
            raise ConfigError(f"{out_dir} was generated for other class names; use a new output folder")
        changed = sorted(k for k in set(old["config"]) | set(new["config"])
                         if old["config"].get(k) != new["config"].get(k))
        if changed:
            raise ConfigError(f"{out_dir} was generated with other {', '.join(changed)}; "
                              f"use a new output folder or restore those settings")
        if old.get("prompts") != new["prompts"]:
            raise ConfigError(f"{out_dir} was generated from other prompts ({plan.cfg.prompts_file} changed); "
                              f"use a new output folder or restore the file")
        if old == new:
            return
    atomic_write_json(path, new)


def _init_image(cfg: GenerateConfig, init_images, item: Item) -> tuple[Image.Image, int]:
    """The real training image an img2img item starts from (index mod count), at generation size."""
    pool = init_images[item.class_index]
    k = item.index % len(pool)
    img = Image.fromarray(np.asarray(pool[k], dtype=np.uint8)).convert("RGB")
    return img.resize((cfg.width, cfg.height), Image.BICUBIC), k


def _row(cfg: GenerateConfig, plan: Plan, item: Item, init_index: int | None) -> dict:
    row = {
        "class_index": item.class_index, "class_name": plan.class_names[item.class_index],
        "index": item.index, "file": str(image_path("", item)), "prompt": plan.prompt_for(item),
        "negative_prompt": cfg.negative_prompt, "seed": plan.seed_for(item), "model": cfg.model,
        "steps": cfg.steps, "guidance": cfg.guidance_scale, "scheduler": cfg.scheduler,
        "mode": cfg.mode, "height": cfg.height, "width": cfg.width, "out_size": cfg.out_size,
    }
    if cfg.mode == "img2img":
        row.update(strength=cfg.strength, init_index=init_index)
    return row


def generate_batch(pipe, cfg: GenerateConfig, plan: Plan, batch: Sequence[Item],
                   init_images=None) -> tuple[list[Image.Image], list[int | None]]:
    """One pipeline call for `batch`; one CPU generator per image, seeded by plan.seed_for.

    Returns the images at generation size and, for img2img, the index of each init image.
    """
    generators = [torch.Generator("cpu").manual_seed(plan.seed_for(item)) for item in batch]
    kwargs = dict(prompt=[plan.prompt_for(item) for item in batch],
                  negative_prompt=[cfg.negative_prompt] * len(batch),
                  num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                  generator=generators, output_type="pil")
    init_index: list[int | None] = [None] * len(batch)
    if cfg.mode == "img2img":
        starts = [_init_image(cfg, init_images, item) for item in batch]
        kwargs.update(image=[img for img, _ in starts], strength=cfg.strength)
        init_index = [k for _, k in starts]
    else:
        kwargs.update(height=cfg.height, width=cfg.width)
    return pipe(**kwargs).images, init_index


def generate_shard(cfg: GenerateConfig, plan: Plan, out_dir: str | Path, shard_index: int,
                   num_shards: int, pipe, *, init_images: Mapping[int, Sequence[np.ndarray]] | None = None,
                   log_every: float = 60.0) -> dict:
    """Generate this shard's share of `plan` into `out_dir`, skipping images already there.

    Shards take whole batches (plan.batches) round-robin, so a batch holds the same items
    whatever num_shards is. A batch with any image missing is generated again as a whole
    (its existing files are left untouched): that keeps every image bit-identical to an
    uninterrupted run. img2img needs `init_images`: class index -> list of uint8 HWC arrays.
    Returns a summary: items, generated, skipped, seconds, images_per_s.
    """
    out_dir = Path(out_dir)
    write_plan(out_dir, plan)
    batches = shard(plan.batches(cfg.batch_size), shard_index, num_shards)
    if cfg.mode == "img2img":
        needed = sorted({item.class_index for batch in batches for item in batch})
        empty = [plan.class_names[c] for c in needed if not init_images or not len(init_images.get(c, ()))]
        if empty:
            raise ConfigError(f"generate.mode=img2img: no real images given for class(es) {', '.join(empty)}")
    pipe = as_img2img(pipe) if cfg.mode == "img2img" else as_txt2img(pipe)
    set_scheduler(pipe, cfg.scheduler)

    total = sum(len(b) for b in batches)
    todo = [b for b in batches if not all(is_done(out_dir, item) for item in b)]
    skipped = total - sum(sum(not is_done(out_dir, item) for item in b) for b in todo)
    progress = Progress(total, f"generate shard {shard_index}/{num_shards}", initial=skipped, every_s=log_every,
                        unit="img", log=lambda line: print(line, file=sys.stderr, flush=True))
    start, generated = time.monotonic(), 0
    for batch in todo:
        images, init_index = generate_batch(pipe, cfg, plan, batch, init_images)
        for item, img, k in zip(batch, images, init_index):
            if is_done(out_dir, item):
                continue
            if cfg.out_size is not None and img.size != (cfg.out_size, cfg.out_size):
                img = img.resize((cfg.out_size, cfg.out_size), Image.LANCZOS)
            path = image_path(out_dir, item)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(row_path(out_dir, item), _row(cfg, plan, item, k))
            with atomic_path(path) as tmp:
                img.save(tmp, format="PNG")
            generated += 1
            progress.update(skipped + generated, lambda: rate_and_eta(progress))
    progress.close(lambda: rate_and_eta(progress))
    seconds = time.monotonic() - start
    return {"shard": shard_index, "num_shards": num_shards, "items": total, "generated": generated,
            "skipped": skipped, "seconds": seconds, "images_per_s": generated / max(seconds, 1e-9)}


def rate_and_eta(progress: Progress) -> str:
    """'0.52 img/s, eta 3.1 min' for a shard's progress line."""
    rate = progress.rate()
    if not rate:
        return "images"
    eta = f", eta {(progress.total - progress.done) / rate / 60:.1f} min" if progress.done < progress.total else ""
    return f"images, {rate:.2f} img/s{eta}"


def collect_manifest(out_dir: str | Path) -> list[dict]:
    """The rows of every finished image under out_dir, in canonical (class, index) order."""
    rows = []
    for path in Path(out_dir).glob("images/*/*.json"):
        if path.with_suffix(".png").is_file():
            rows.append(json.loads(path.read_text()))
    return sorted(rows, key=lambda r: (r["class_index"], r["index"]))


def write_manifest(out_dir: str | Path) -> Path:
    """Gather the sidecar rows into out_dir/manifest.jsonl (run once, after all shards)."""
    path = Path(out_dir) / "manifest.jsonl"
    text = "".join(json.dumps(row) + "\n" for row in collect_manifest(out_dir))
    atomic_write_text(path, text)
    return path
