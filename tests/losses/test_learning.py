"""The loss zoo helps the tail: on the learnable synthetic long-tailed data at IF 100 (the set and
base recipe of tests/support/learning.py), on the CPU, ldam_drw, balanced_softmax and logit_adjust
each beat cross-entropy on balanced top-1 and few-shot accuracy, averaged over two seeds. DRW
re-weights from 80 % of the run (drw_frac's default).
"""
import pytest

from support.learning import SEEDS, learn_config, means_table, train_final

TAIL_METHODS = ("ldam_drw", "balanced_softmax", "logit_adjust")
MARGIN = {"top1": 0.5, "few": 2.0}
"""Points by which each method must beat CE, per metric. Observed, means of the seeds, top-1 / few-shot:
on a CPU without native bf16 (fp32, one thread) CE 73.5 / 50.0, ldam_drw 75.1 / 57.2, balanced_softmax
and logit_adjust 83.6 / 69.8; on one with AMX (bf16) CE 69.4 / 42.2, ldam_drw 72.4 / 57.2, the
prior-corrected losses 82.8 / 69.0. ldam_drw's top-1 gain on this small set is the thin one (+1.6 to +3.0),
hence half a point there; before issue 15, with a weaker CE, every gain was 10 or more on top-1."""


@pytest.mark.slow
def test_tail_methods_beat_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_data):
    card, data = learn_data
    runs = {loss: [train_final(learn_config(card, data, seed, loss={"name": loss}), tmp_path / f"{loss}_{seed}")
                   for seed in SEEDS] for loss in ("ce", *TAIL_METHODS)}
    means, report = means_table(runs)
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for loss in TAIL_METHODS:
        for metric in ("top1", "few"):
            assert means[loss][metric] > means["ce"][metric] + MARGIN[metric], f"{loss} {metric}\n{report}"
