"""LDMLR (Han, Ye, Zhou, Zhang, Hong, Li; CVPR 2024 workshops): the first stage's classifier
re-trained on its training features plus features a class-conditional diffusion model generates.

Followed: AlvinHan123/LDMLR main.py (the pipeline and its defaults), utilis/feature_encode.py
(the features), utilis/diffusion_model.py (the generator, how many features it generates) and
fine_tune_tr.py (the classifier). The pipeline, in the cell's run folder (RunDir names the files):

1. FEATURES: the penultimate features of the long-tailed training set, one pass, through the
   first stage's frozen backbone. The code reads its training loader, so the images are augmented
   (crop and flip); so are they here, by the grid's augmentation less any mixing part
   (`stage.ldmlr.feature_aug: false` takes the plain images). Unlike the code, whose model is in
   train mode and whose Sequential of the network's children drops the stem's functional ReLU,
   the backbone runs in eval mode and computes the features the classifier sees at test time.
2. GENERATOR, GENERATOR_LOSS: the diffusion model trained on them (harness.stages.diffusion),
   checkpointed and resumed; a finished one is not trained again.
3. GENERATED: max(round(0.2·n_c), 5) features for every class c (`ratio`, `min_count`; `below`
   keeps classes with fewer than that many images only, as the code's --generation_mmf keeps a
   shot group).
4. The classifier (the first stage's head, not a new one, as the code reloads it) trains on real
   and generated features together, instance-shuffled, unweighted, through the Trainer: Adam lr
   1e-3, weight decay 1e-5, batch 1024, constant lr, CE (harness.config.schema STAGE_DEFAULTS).
   The code trains 400 epochs and reports its best test epoch; the trainer evaluates every epoch
   through backbone and head on the test images and reports the final and the best epoch.

Files 1-3 are written by rank 0 while the other ranks wait (dist.timeout_s must cover a
generator's training on several ranks); every rank then reads them.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from harness import dist
from harness.config import LdmlrConfig, RunConfig
from harness.data.augment import Batch, Compose
from harness.data.build import Data
from harness.data.loaders import MemoryLoader
from harness.data.sampling import with_sampler
from harness.registry import ConfigError
from harness.rundir import RunDir
from harness.stages.diffusion import FeatureDiffusion, stream, train_generator

EXTRACT_BATCH = 256
"""Images per forward pass while extracting features (eval-mode BatchNorm: any size gives the same)."""
GENERATE_BATCH = 1024
"""Labels per sampling batch (utilis/diffusion_model.py samples 1024 at a time)."""
EXTRACT, INIT, SAMPLE = 1, 2, 3
"""Keys of the random streams (harness.stages.diffusion.stream) of extraction, the generator's
initial weights and sampling."""


def generation_counts(counts: list[int], ratio: float, min_count: int, below: int = 0) -> list[int]:
    """Features to generate per class: max(round(ratio·n_c), min_count) (main.py's rule, Python's
    round, halves to even), for the classes with fewer than `below` images when below > 0."""
    return [max(round(n * ratio), min_count) if not below or n < below else 0 for n in counts]


def pass_through(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Batch:
    """The training batches' augmentation for feature batches: none."""
    return Batch(x, y)


def extraction_augment(augment) -> Compose:
    """The grid's augmentation as one view of each image with nothing mixed in (mixup and cutmix
    mix labels too; LDMLR's loader crops and flips)."""
    parts = getattr(augment, "parts", None)
    if parts is None:
        raise ConfigError("key 'stage.ldmlr.feature_aug': the grid's augmentation makes several views of "
                          "each image; set stage.ldmlr.feature_aug false")
    return Compose([p for p in parts if not getattr(p, "mixes", False)])


@torch.no_grad()
def extract_features(backbone: nn.Module, data: Data, device: torch.device, augment: bool,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D] float32, labels [N]) of the training set, one pass, in its order."""
    transform = extraction_augment(data.augment) if augment else None
    g = torch.Generator(device=device).manual_seed(stream(seed, EXTRACT))
    backbone.eval()
    features, labels = [], []
    for start in range(0, len(data.indices), EXTRACT_BATCH):
        x, y = data.train_file.read(data.indices[start:start + EXTRACT_BATCH])
        x, y = x.to(device), y.to(device)
        if transform is not None:
            x = transform(x, y, g).x
        features.append(backbone((x.float() - data.mean) / data.std).float())
        labels.append(y)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def generate(gen: FeatureDiffusion, counts: list[int], cfg: LdmlrConfig, seed: int,
             device: torch.device) -> torch.Tensor:
    """counts[c] features of every class c, in class order."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)
    g = torch.Generator(device=device).manual_seed(stream(seed, SAMPLE))
    out = [gen.sample(labels[i:i + GENERATE_BATCH], g, cfg.sampler, cfg.steps)
           for i in range(0, len(labels), GENERATE_BATCH)]
    return torch.cat(out) if out else torch.zeros(0, len(gen.center), device=device)


def prepare(cfg: RunConfig, run_dir: RunDir, data: Data, backbone: nn.Module, device: torch.device) -> None:
    """Steps 1-3 (rank 0), each skipped when its file is there."""
    s = cfg.stage.ldmlr

    def log(message: str) -> None:
        print(f"[{run_dir.name}] ldmlr: {message}", flush=True)

    if run_dir.file(RunDir.GENERATED).is_file():
        return
    real = run_dir.load_tensors(RunDir.FEATURES, map_location=device)
    if real is None:
        x, y = extract_features(backbone, data, device, s.feature_aug, cfg.seed)
        real = {"features": x, "labels": y}
        run_dir.save_tensors(RunDir.FEATURES, {k: v.cpu() for k, v in real.items()})
        log(f"{len(x)} training features of dimension {x.shape[1]} extracted")
    x, y = real["features"], real["labels"]
    with torch.random.fork_rng(devices=[]):  # the same initial weights whatever ran before
        torch.manual_seed(stream(cfg.seed, INIT))
        gen = FeatureDiffusion(x.shape[1], data.card.num_classes, s).to(device)
    train_generator(gen, x, y, s, run_dir, cfg.seed, log)
    counts = generation_counts(data.counts, s.ratio, s.min_count, s.below)
    features = generate(gen, counts, s, cfg.seed, device)
    run_dir.save_tensors(RunDir.GENERATED, {"features": features.cpu(), "counts": counts})
    log(f"{sum(counts)} features generated ({s.sampler}), per class {counts}")


def feature_data(cfg: RunConfig, run_dir: RunDir, data: Data, backbone: nn.Module, env: dist.DistEnv,
                 batch_size: int) -> Data:
    """`data` with training batches of real and generated features (global batch `batch_size`)."""
    if env.is_main:
        prepare(cfg, run_dir, data, backbone, env.device)
    dist.barrier()
    real = run_dir.load_tensors(RunDir.FEATURES, map_location=env.device)
    made = run_dir.load_tensors(RunDir.GENERATED, map_location=env.device)
    counts = made["counts"]
    made_labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(env.device)
    x = torch.cat([real["features"], made["features"]])
    y = torch.cat([real["labels"], made_labels])
    train = MemoryLoader(x, y, batch_size // env.world_size, shuffle=True, seed=cfg.seed,
                         rank=env.rank, world=env.world_size, drop_last=False)
    return dataclasses.replace(data, train=with_sampler(train, cfg, y.cpu().numpy()), batch_augment=pass_through,
                               features=True, generated_features=counts)
