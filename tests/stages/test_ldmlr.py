"""LDMLR (Han et al. 2024) in parts: how many features it generates (AlvinHan123/LDMLR
utilis/diffusion_model.py), the samplers against the exact noise predictor of a Gaussian, the
trained generator on class-conditional Gaussians, the generator's resume, and the recipe's
defaults. End to end (one grid with stage.kind train, crt, ..., ldmlr): tests/run/test_stages.py."""
import pytest
import torch
import torch.nn as nn

from harness.config import LdmlrConfig, RunConfig, from_dict
from harness.registry import ConfigError
from harness.rundir import RunDir
from harness.stages import Frozen, stage_config
from harness.stages.diffusion import FeatureDiffusion, train_generator
from harness.stages.ldmlr import generation_counts

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
"""CIFAR-10-LT IF 100 (the LDAM-DRW profile), whose generation counts the LDMLR code logs."""


@pytest.fixture
def one_thread():
    """Small MLPs run fastest on one thread (and do not fight the other tests for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_generation_counts_follow_the_codes_rule():
    # main.py: class_num.append(max(round(num * args.feature_ratio), 5)), feature_ratio 0.2
    counts = generation_counts(CIFAR10_IF100, 0.2, 5)
    assert counts == [1000, 599, 359, 215, 129, 77, 46, 28, 17, 10] and sum(counts) == 2480
    assert generation_counts([12, 7, 3, 0], 0.2, 5) == [5, 5, 5, 5]  # the floor of 5 for every class
    assert generation_counts([5, 7, 9], 0.5, 0) == [2, 4, 4]  # Python's round: halves to even
    assert generation_counts([500, 60, 12], 0.2, 5, below=100) == [0, 12, 5]  # only classes under 100


def gaussians(dim: int, seed: int = 0):
    """Three classes with distinct means and full covariances."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g) * 2
    covs = []
    for _ in range(3):
        a = torch.randn(dim, dim, generator=g) * 0.4
        covs.append(a @ a.T + 0.1 * torch.eye(dim))
    return means, covs


def draw(means, covs, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    xs = [m + torch.randn(n, len(m), generator=g) @ torch.linalg.cholesky(c).T for m, c in zip(means, covs)]
    return torch.cat(xs), torch.arange(3).repeat_interleave(n)


def moment_errors(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(|mean error| / sqrt(trace Σ), ||cov error||_F / ||Σ||_F): both scale-free."""
    mean_error = (samples.mean(0) - mean).norm() / cov.diagonal().sum().sqrt()
    cov_error = (torch.cov(samples.T) - cov).norm() / cov.norm()
    return mean_error.item(), cov_error.item()


class ExactNoise(nn.Module):
    """E[ε | x_t] for x0 ~ N(μ_y, Σ_y) in the generator's scaled space: the best possible denoiser."""

    def __init__(self, gen: FeatureDiffusion, means, covs):
        super().__init__()
        self.gen = gen
        self.means = (means - gen.center) / gen.spread
        self.covs = torch.stack(covs) / gen.spread[:, None] / gen.spread[None, :]

    def forward(self, x, t, y):
        a = self.gen.alphas_cumprod[t][:, None]
        cov = a[:, :, None] * self.covs[y] + (1 - a)[:, :, None] * torch.eye(x.shape[1])
        return (1 - a).sqrt() * torch.linalg.solve(cov, x - a.sqrt() * self.means[y])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_the_samplers_draw_the_data_distribution_with_the_exact_denoiser(sampler, one_thread):
    """Mean within 0.1 · sqrt(trace Σ), covariance within 15 % (Frobenius) with 1000 samples; DDIM
    at 100 steps shrinks the variance by a few per cent, the full DDPM chain does not."""
    means, covs = gaussians(2)
    x, _ = draw(means, covs, 500)
    cfg = LdmlrConfig(scale="standard")
    gen = FeatureDiffusion(2, 3, cfg)
    gen.fit_scale(x)
    gen.net = ExactNoise(gen, means, covs)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        samples = gen.sample(torch.full((1000,), c), g, sampler, cfg.steps)
        mean_error, cov_error = moment_errors(samples, means[c], covs[c])
        assert mean_error < 0.1 and cov_error < 0.15, (c, mean_error, cov_error)


GAUSSIAN_GENERATOR = LdmlrConfig(epochs=20, batch_size=128, hidden=128, blocks=2, steps=50)
"""A small generator that fits three 8-D Gaussians of 1000 samples each in about 3 s on one core."""
MEAN_TOLERANCE, COV_TOLERANCE = 0.2, 0.35
"""Sampled moments of each class against the true ones: the mean within 0.2 · sqrt(trace Σ), the
covariance within 35 % (Frobenius) with 1000 samples; observed about 0.05-0.09 and 0.10-0.25."""


def test_the_generator_learns_class_conditional_gaussians(tmp_path, one_thread):
    """With the default scaling (minmax); the samplers under standard scaling: the exact-denoiser test."""
    means, covs = gaussians(8)
    x, y = draw(means, covs, 1000)
    cfg = GAUSSIAN_GENERATOR
    gen = FeatureDiffusion(8, 3, cfg)
    curve = train_generator(gen, x, y, cfg, RunDir(tmp_path), seed=0, log=lambda m: None)
    assert len(curve) == cfg.epochs and curve[-1] < curve[0]
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        samples = gen.sample(torch.full((1000,), c), g, cfg.sampler, cfg.steps)
        mean_error, cov_error = moment_errors(samples, means[c], covs[c])
        assert mean_error < MEAN_TOLERANCE and cov_error < COV_TOLERANCE, (c, mean_error, cov_error)
        # and it is this class's distribution, not another's
        assert all(moment_errors(samples, means[o], covs[o])[0] > 3 * MEAN_TOLERANCE for o in range(3) if o != c)


def test_an_interrupted_generator_resumes_where_its_checkpoint_left_it(tmp_path, monkeypatch, one_thread):
    means, covs = gaussians(4)
    x, y = draw(means, covs, 100)
    cfg = LdmlrConfig(epochs=4, batch_size=64, hidden=16, blocks=1)

    def fresh() -> FeatureDiffusion:
        torch.manual_seed(0)  # the same initial weights
        return FeatureDiffusion(4, 3, cfg)

    whole = fresh()
    whole_curve = train_generator(whole, x, y, cfg, RunDir(tmp_path / "whole"), seed=3, save_every_s=0)

    run = RunDir(tmp_path / "cut")
    calls, real_loss = [], FeatureDiffusion.loss

    def dies_in_epoch_three(self, *args):
        calls.append(1)
        if len(calls) > 2 * 5:  # 300 features in batches of 64: 5 steps an epoch
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(FeatureDiffusion, "loss", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_generator(fresh(), x, y, cfg, run, seed=3, save_every_s=0)
    assert run.load_tensors(run.GENERATOR)["epoch"] == 2
    monkeypatch.setattr(FeatureDiffusion, "loss", real_loss)
    resumed = fresh()
    lines = []
    assert train_generator(resumed, x, y, cfg, run, seed=3, log=lines.append, save_every_s=0) == whole_curve
    assert "resuming the feature generator at epoch 3/4" in lines
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # exactly the generator an uninterrupted run trains

    def trains(self, *args):
        raise AssertionError("a finished generator was trained again")

    monkeypatch.setattr(FeatureDiffusion, "loss", trains)
    again = FeatureDiffusion(4, 3, cfg)
    assert train_generator(again, x, y, cfg, run, seed=3) == whole_curve
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), whole.state_dict().values()))


def test_the_frozen_backbone_passes_feature_batches_through():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    frozen = Frozen(conv)
    features = torch.randn(5, 4)
    assert frozen(features) is features
    assert frozen(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_the_ldmlr_recipe_is_the_codes():
    cfg = from_dict(RunConfig, {"stage": {"kind": "ldmlr"}})
    s = cfg.stage
    assert (s.epochs, s.lr, s.weight_decay, s.batch_size, s.loss) == (400, 1e-3, 1e-5, 1024, "ce")
    g = s.ldmlr
    assert (g.ratio, g.min_count, g.epochs, g.batch_size, g.timesteps, g.feature_aug) == (0.2, 5, 201, 256, 1000, True)
    run = stage_config(cfg)
    assert (run.optim.name, run.optim.lr, run.optim.weight_decay, run.optim.batch_size) == ("adam", 1e-3, 1e-5, 1024)
    assert (run.schedule.epochs, run.schedule.decay, run.loss.name, run.model.head) == (400, "constant", "ce", "linear")
    # the generator's keys split no signatures of the other kinds
    crt = from_dict(RunConfig, {"stage": {"kind": "crt", "ldmlr": {"epochs": 3}}})
    assert crt.stage.ldmlr == LdmlrConfig()
    with pytest.raises(ConfigError, match="key 'stage.ldmlr.ratio'"):
        from_dict(RunConfig, {"stage": {"kind": "ldmlr", "ldmlr": {"ratio": -1.0}}})
