"""Weight balancing and LDMLR help the tail: on the learnable synthetic long-tailed data at IF 100,
the set and base recipe of tests/support/learning.py (a narrow ResNet-8, batch 32, 15 epochs,
lr 0.1 with warm-up and a step at 80 %), each beats plain cross-entropy on balanced top-1
and few-shot accuracy, averaged over two seeds. Every run trains through the Trainer in fp32 (support.learning); the
metrics are the last epoch's. Each second stage is a test of its own on the same CE runs.

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

Observed (means of seeds 0 and 1, top-1 / few-shot), in fp32 on a CPU without native bf16 and on an
Intel Xeon with AVX512-BF16 (no AMX), and in bf16 forced on the first:

| | fp32 | fp32, Intel Xeon | bf16 |
| --- | --- | --- | --- |
| ce | 73.5 / 50.0 | 73.7 / 51.2 | 70.2 / 44.5 |
| weight balancing (maxnorm) | 80.6 / 59.8 | 79.7 / 59.2 | 81.2 / 62.0 |
| ldmlr | 80.3 / 59.8 | 79.3 / 59.5 | 78.6 / 57.5 |
"""
import pytest

from support.learning import SEEDS, learn, learn_config

MARGIN = 3.0
"""Points by which each method must beat CE on the mean of the seeds (observed: +5.6 or more on top-1,
+8.0 or more on few-shot; see the module docstring)."""
STAGES = {"maxnorm": {"kind": "maxnorm"}, "ldmlr": {"kind": "ldmlr", "ldmlr": {"hidden": 256}}}
"""Each method's second stage, on the CE run as its first (weight balancing's is maxnorm)."""


@pytest.mark.slow
@pytest.mark.parametrize("method", STAGES)
def test_a_second_stage_beats_cross_entropy_on_balanced_and_few_shot_accuracy(method, learn_data):
    card, data = learn_data
    stages = {"ce": {}, method: {"stage": STAGES[method]}}
    means, report = learn({name: [learn_config(card, data, seed, optim={"weight_decay": 2e-4}, **stage)
                                  for seed in SEEDS] for name, stage in stages.items()})
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for metric in ("top1", "few"):
        assert means[method][metric] > means["ce"][metric] + MARGIN, f"{method} {metric}\n{report}"
