"""Weight balancing and LDMLR help the tail: on the learnable synthetic long-tailed data at IF 100,
the set and base recipe of tests/support/learning.py (a narrow ResNet-8, batch 32, 15 epochs,
lr 0.1 with warm-up and a step at 80 %), each beats plain cross-entropy on balanced top-1
and few-shot accuracy, averaged over two seeds. Every run trains in this process through the
Trainer, in dist.precision auto (bf16 on CPUs that have it); the metrics are the last epoch's.

- ce: cross-entropy, weight decay 2e-4: the baseline, and both second stages' first stage.
- weight balancing: stage one is cross-entropy at the weight decay tuned for the recipe, then
  `stage.kind: maxnorm` at its code's defaults (CB-BCE, lr 0.01, weight decay 0.1, 10 epochs,
  thresh 0.1, per epoch). The paper tunes stage one's weight decay per dataset (its Fig. 4); on this
  set and recipe the tuning picks CE's own 2e-4 (stage one's top-1 / few-shot, fp32, means of the
  seeds: 2e-4 73.5 / 50.0, 5e-4 71.9 / 48.0, 1e-3 70.2 / 45.5; its CIFAR-100 value, 5e-3 at lr 0.01
  over 320 epochs, gave 50 against CE's 59 on this set), so weight balancing here is maxnorm on the
  ce run. On the 1e-3 stage one it reached 75.6 / 49.5 in fp32 (CE 73.5 / 50.0): maxnorm lifts the
  medium classes (78.7 -> 91.3) but not the two rarest, which that weaker stage one never learns.
- LDMLR on top of the ce run: the code's recipe (its classifier: Adam 1e-3, weight decay 1e-5, batch
  1024, 400 epochs, generated max(round(0.2·n_c), 5) per class; its generator's 4 blocks and 201
  epochs) with a denoiser of width 256 instead of 512, to keep the CPU time small. A smaller generator
  (width 128, 2 blocks, 100 epochs) gained less (fp32: 76.9 / 57.2), and so did 100 classifier epochs
  instead of 400 (76.7 / 54.5).

Observed (means of seeds 0 and 1, top-1 / few-shot), in fp32 on a CPU without native bf16 (auto is fp32
there) and in bf16 forced on the same CPU:

| | fp32 | bf16 |
| --- | --- | --- |
| ce | 73.5 / 50.0 | 70.2 / 44.5 |
| weight balancing (maxnorm) | 80.6 / 59.8 | 81.2 / 62.0 |
| ldmlr | 80.3 / 59.8 | 78.6 / 57.5 |
"""
from pathlib import Path

import pytest

from harness.config import signature
from support.learning import SEEDS, learn_config, means_table, train_final

MARGIN = 3.0
"""Points by which each method must beat CE on the mean of the seeds (observed: +6.8 or more on top-1,
+9.8 or more on few-shot; see the module docstring)."""
LDMLR = {"kind": "ldmlr", "ldmlr": {"hidden": 256}}


def run(card, data, runs: Path, seed: int, stage: dict | None = None) -> dict:
    """One run in runs/<signature>, where a second stage finds its first."""
    cfg = learn_config(card, data, seed, optim={"weight_decay": 2e-4}, **({"stage": stage} if stage else {}))
    return train_final(cfg, runs / signature(cfg))


@pytest.mark.slow
def test_weight_balancing_and_ldmlr_beat_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_data):
    card, data = learn_data
    runs = {"ce": [], "weight balancing (maxnorm)": [], "ldmlr": []}
    for seed in SEEDS:
        runs["ce"].append(run(card, data, tmp_path, seed))
        runs["weight balancing (maxnorm)"].append(run(card, data, tmp_path, seed, {"kind": "maxnorm"}))
        runs["ldmlr"].append(run(card, data, tmp_path, seed, LDMLR))
    means, report = means_table(runs)
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for name in ("weight balancing (maxnorm)", "ldmlr"):
        for metric in ("top1", "few"):
            assert means[name][metric] > means["ce"][metric] + MARGIN, f"{name} {metric}\n{report}"
