"""A class-conditional diffusion model on feature vectors: LDMLR's feature generator, small.

    gen = FeatureDiffusion(dim, num_classes, cfg)       # cfg: harness.config.LdmlrConfig
    curve = train_generator(gen, x, y, cfg, run_dir, seed)   # resumes from run_dir's GENERATOR
    features = gen.sample(labels, generator, cfg.sampler, cfg.steps)

Followed: AlvinHan123/LDMLR utilis/diffusion_model.py (how it trains and samples) and
model/ddpm_conditional.py (`ConditionalDiffusion1D`, `UNet_conditional`, lucidrains' 1-D code).
What is the same: T = 1000 steps of the cosine schedule (s = 0.008, betas clipped at 0.999); the
class enters as an embedding added to the time embedding (no classifier-free guidance); the
objective, which the code writes as x0-prediction with SNR loss weights, ᾱ/(1-ᾱ)·||x̂0 - x0||², is
exactly the ε-prediction MSE ||ε̂ - ε||² used here; sampling clips the predicted x0.

What is smaller or different, and why:
- The denoiser is an MLP (residual blocks whose scale and shift come from the time + class
  embedding) instead of the code's 1-D U-Net, whose convolutions all have kernel size 1 (per-
  feature layers) and whose attention is the only place the feature dimensions mix; here every
  layer mixes them.
- Adam at LdmlrConfig.lr with a cosine decay to 0 over the training, instead of the code's
  constant SGD at 1e-4 (tuned for its U-Net): at a constant lr the last weights are noisy and
  so are the samples' moments (about 5x further off on tests/stages' Gaussians). The features are reshuffled
  every epoch (the code reads one fixed order).
- Scaling: the code maps x -> 2x - 1, assuming features in [0, 1], and clips the predicted x0
  to [-1, 1]; ReLU features of a ResNet are not bounded by 1, so `minmax` maps each dimension's
  range onto [-1, 1] instead, and `standard` z-scores it; either way the predicted x0 is clipped
  to the range of the real features.
- Sampling: DDIM (η = 0) over `steps` steps as the paper says; the code runs ancestral DDPM over
  all T steps (`sampler: ddpm`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import LdmlrConfig
from harness.rundir import RunDir

COSINE_S = 0.008
"""Nichol & Dhariwal 2021's offset of the cosine schedule (ddpm_conditional.py cosine_beta_schedule)."""
MAX_BETA = 0.999
"""The schedule's betas are clipped at this (cosine_beta_schedule)."""
SAVE_EVERY_S = 60.0
"""The generator's checkpoint is written at most this often (and after its last epoch)."""
MIN_SPREAD = 1e-6
"""A feature dimension that never varies is scaled by this instead of 0."""
TRAIN = 0
"""The key of the generator's training streams, stream(seed, TRAIN, epoch)."""


def cosine_alphas_cumprod(timesteps: int) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 of the cosine schedule (float64)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos((x / timesteps + COSINE_S) / (1 + COSINE_S) * math.pi * 0.5) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(0, MAX_BETA)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps, [B] -> [B, dim] (SinusoidalPosEmb; dim even)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    angle = t.float()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def stream(seed: int, *keys: int) -> int:
    """A seed for one random stream of a run, told apart by its keys (an epoch of training here;
    extraction, initial weights and sampling in harness.stages.ldmlr)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class Block(nn.Module):
    """h + MLP(LayerNorm(h) · (1 + scale) + shift), scale and shift from the embedding: the
    U-Net's ResnetBlock (GroupNorm, time scale/shift, SiLU) written for vectors."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """ε̂(x_t, t, y): the noise in x_t, given the step and the class."""

    def __init__(self, dim: int, num_classes: int, hidden: int, blocks: int):
        super().__init__()
        self.hidden = hidden
        # the code's time_mlp: SinusoidalPosEmb -> Linear -> GELU -> Linear; label_emb added to it
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(blocks))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.hidden)) + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class FeatureDiffusion(nn.Module):
    """The denoiser, the schedule and the feature scaling: everything sampling needs is in its
    state_dict (the scaling and the range x0 is clipped to are fitted once, on the real features)."""

    def __init__(self, dim: int, num_classes: int, cfg: LdmlrConfig):
        super().__init__()
        self.net = Denoiser(dim, num_classes, cfg.hidden, cfg.blocks)
        self.timesteps, self.minmax = cfg.timesteps, cfg.scale == "minmax"
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(cfg.timesteps).float())
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("spread", torch.ones(dim))
        self.register_buffer("lo", torch.full((dim,), -1.0))
        self.register_buffer("hi", torch.ones(dim))

    def fit_scale(self, x: torch.Tensor) -> None:
        """minmax: each dimension's [min, max] -> [-1, 1]; standard: zero mean, unit variance."""
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        if self.minmax:
            center, spread = (lo + hi) / 2, (hi - lo) / 2
        else:
            center, spread = x.mean(dim=0), x.std(dim=0)
        self.center.copy_(center)
        self.spread.copy_(spread.clamp_min(MIN_SPREAD))
        self.lo.copy_((lo - self.center) / self.spread)
        self.hi.copy_((hi - self.center) / self.spread)

    def loss(self, x0: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ε-prediction MSE at a random step per sample."""
        x0 = (x0 - self.center) / self.spread
        t = torch.randint(self.timesteps, (len(x0),), generator=g, device=g.device).to(x0.device)
        noise = torch.randn(x0.shape, generator=g, device=g.device).to(x0.device)
        a = self.alphas_cumprod[t][:, None]
        return F.mse_loss(self.net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, g: torch.Generator, sampler: str = "ddim", steps: int = 100) -> torch.Tensor:
        """Features of classes `y`: DDIM (η = 0) over `steps` steps, or ancestral DDPM over all T."""
        x = torch.randn((len(y), len(self.center)), generator=g, device=g.device).to(y.device)
        if sampler == "ddpm":
            times = list(range(self.timesteps - 1, -2, -1))
        else:  # lucidrains' ddim_sample: linspace(-1, T - 1, steps + 1), reversed
            times = [int(t) for t in reversed(torch.linspace(-1, self.timesteps - 1, steps + 1).int().tolist())]
        for t, prev in zip(times[:-1], times[1:]):
            a = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.ones_like(a)
            eps = self.net(x, torch.full((len(y),), t, device=y.device), y)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x0 = torch.maximum(torch.minimum(x0, self.hi), self.lo)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            if sampler == "ddpm":  # the posterior q(x_{t-1} | x_t, x0); no noise at the last step
                beta = 1 - a / a_prev
                mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a)
                noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
                x = mean + (beta * (1 - a_prev) / (1 - a)).sqrt() * noise if prev >= 0 else mean
            else:
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x * self.spread + self.center


def train_generator(gen: FeatureDiffusion, x: torch.Tensor, y: torch.Tensor, cfg: LdmlrConfig, run_dir: RunDir,
                    seed: int, log=print, save_every_s: float = SAVE_EVERY_S) -> list[float]:
    """Train `gen` on features x [N, D] with labels y for cfg.epochs epochs, and return the loss
    curve (the mean loss of each epoch).

    It resumes from run_dir's GENERATOR checkpoint (weights, scaling, Adam's state, epochs done,
    curve), written at most every `save_every_s` seconds and after the last epoch, with the loss
    curve in GENERATOR_LOSS; a finished generator is loaded, not trained again. Every epoch draws
    its order, steps and noise from its own seed, so a resumed generator ends as an uninterrupted
    one would."""
    optimizer = torch.optim.Adam(gen.net.parameters(), lr=cfg.lr)
    state = run_dir.load_tensors(RunDir.GENERATOR, map_location=x.device)
    if state is None:
        gen.fit_scale(x)
        epoch, curve = 0, []
    else:
        gen.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, curve = state["epoch"], list(state["loss"])
        if epoch < cfg.epochs:
            log(f"resuming the feature generator at epoch {epoch + 1}/{cfg.epochs}")

    def save():
        run_dir.save_tensors(RunDir.GENERATOR, {"model": gen.state_dict(), "optimizer": optimizer.state_dict(),
                                                "epoch": epoch, "loss": curve})
        run_dir.write_json(RunDir.GENERATOR_LOSS, {"epochs": cfg.epochs, "loss": curve})

    gen.train()
    saved, steps = time.time(), -(-len(x) // cfg.batch_size)
    while epoch < cfg.epochs:
        g = torch.Generator(device=x.device).manual_seed(stream(seed, TRAIN, epoch))
        order = torch.randperm(len(x), generator=g, device=g.device).to(x.device)
        total = torch.zeros((), device=x.device)
        for i, start in enumerate(range(0, len(x), cfg.batch_size)):
            done = (epoch * steps + i) / (cfg.epochs * steps)
            optimizer.param_groups[0]["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * done))
            idx = order[start:start + cfg.batch_size]
            loss = gen.loss(x[idx], y[idx], g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        curve.append(total.item() / len(x))
        epoch += 1
        if epoch == cfg.epochs or time.time() - saved >= save_every_s:
            save()
            saved = time.time()
            log(f"feature generator epoch {epoch}/{cfg.epochs}: loss {curve[-1]:.4f}")
    gen.eval()
    return curve
