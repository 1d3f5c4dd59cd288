"""The multi-expert methods help the tail: on the learnable synthetic long-tailed data at IF 100,
on the CPU, sade and ride each beat cross-entropy on balanced top-1 and few-shot accuracy,
averaged over two seeds.

The set is tests/support/learning.py's (300 ... 3 training images per class, 50 test images
per class), and so is the schedule's shape (batch 32, warm-up 3, lr ×0.1 at 80 %, RIDE's deferred
phase from 80 %), shorter (10 epochs: the expert models cost about twice a narrow ResNet-8 a step)
and at lr 0.05 for every method: at 0.1 with batch 32 (4x the per-sample lr of SADE's 0.1 at
batch 128) SADE's summed expert losses collapse to predicting the prior on this set.
CE trains the narrow ResNet-8; sade and ride its test-size expert version, resnet8_narrow_experts
(shared 8-channel stem and first stage, 3 experts of 12 / 24 channels). Each run trains through the
Trainer in fp32 (support.learning); the metrics are the last epoch's, of the ensemble. Means of seeds
0 and 1, top-1 / few-shot, on an Intel Xeon: ce 46.5 / 12.8, sade 76.1 / 77.5, ride 77.5 / 53.8.
"""
import pytest

from support.learning import SEEDS, learn, learn_config

METHODS = {"ce": "resnet8_narrow", "sade": "resnet8_narrow_experts", "ride": "resnet8_narrow_experts"}
MARGIN = 5.0
"""Points by which each method must beat CE (observed with warm-up 3 since issue 15: 27 or more on top-1,
39 or more on few)."""


@pytest.mark.slow
@pytest.mark.parametrize("method", ("sade", "ride"))
def test_an_expert_method_beats_cross_entropy_on_balanced_and_few_shot_accuracy(method, learn_data):
    card, data = learn_data
    means, report = learn({loss: [learn_config(card, data, seed, model={"name": METHODS[loss]}, loss={"name": loss},
                                               optim={"lr": 0.05}, schedule={"epochs": 10}) for seed in SEEDS]
                           for loss in ("ce", method)})
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for metric in ("top1", "few"):
        assert means[method][metric] > means["ce"][metric] + MARGIN, f"{method} {metric}\n{report}"
