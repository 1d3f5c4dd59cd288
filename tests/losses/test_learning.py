"""The loss zoo helps the tail: on the learnable synthetic long-tailed data at IF 100 (the set and
base recipe of tests/support/learning.py), on the CPU, ldam_drw, balanced_softmax and logit_adjust
each beat cross-entropy on balanced top-1 and few-shot accuracy, averaged over two seeds. DRW
re-weights from 80 % of the run (drw_frac's default).
"""
import pytest

from support.learning import SEEDS, learn_config, means_table, train_final

TAIL_METHODS = ("ldam_drw", "balanced_softmax", "logit_adjust")
MARGIN = 2.0
"""Points by which each method must beat CE (observed since issue 15: ldam_drw 3.0 on top-1 and 15 on few,
the prior-corrected losses 13 and 27; before it, with a weaker CE, 10 or more and 20 or more)."""


@pytest.mark.slow
def test_tail_methods_beat_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_data):
    card, data = learn_data
    runs = {loss: [train_final(learn_config(card, data, seed, loss={"name": loss}), tmp_path / f"{loss}_{seed}")
                   for seed in SEEDS] for loss in ("ce", *TAIL_METHODS)}
    means, report = means_table(runs)
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for loss in TAIL_METHODS:
        for metric in ("top1", "few"):
            assert means[loss][metric] > means["ce"][metric] + MARGIN, f"{loss} {metric}\n{report}"
