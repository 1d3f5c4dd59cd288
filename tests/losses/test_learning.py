"""The loss zoo helps the tail: on the learnable synthetic long-tailed data at IF 100, on the
CPU, ldam_drw, balanced_softmax and logit_adjust each beat cross-entropy on balanced top-1 and
few-shot accuracy, averaged over two seeds.

The set: 300 training images per class before the imbalance (300 ... 3 at IF 100: 3 many-shot,
3 medium, 4 few-shot classes), 50 test images per class. A narrow ResNet-8, batch 32 (23 steps
an epoch; LDAM's margins need the steps), 15 epochs with the LDAM-DRW shape: warm-up, lr ×0.1
at 80 %, DRW from 80 % (drw_frac's default). Each run trains in this process through the
Trainer. The metrics are the last epoch's, not the best.
"""
import pytest
import yaml

from harness.config import RunConfig, from_dict
from harness.grid.validate import validate
from harness.run.trainer import Trainer
from support import ROOT

SEEDS = (0, 1)
TAIL_METHODS = ("ldam_drw", "balanced_softmax", "logit_adjust")
METRICS = ("top1", "many", "medium", "few")
MARGIN = 2.0
"""Points by which each method must beat CE (observed: 10 or more on top-1, 20 or more on few)."""


@pytest.fixture(scope="module")
def learn_card(tmp_path_factory):
    """The synthetic card with 300 train / 50 test images per class."""
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    card["name"] = "learn"
    card["source"].update(train_per_class=300, test_per_class=50)
    path = tmp_path_factory.mktemp("learn") / "learn.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def train(card, root, run_dir, loss: str, seed: int) -> dict:
    """One run's last-epoch top-1 and many/medium/few-shot accuracy."""
    cfg = from_dict(RunConfig, {
        "seed": seed,
        "data": {"dataset": str(card), "root": str(root), "loader": "memory", "imbalance_factor": 100},
        "model": {"name": "resnet8_narrow"},
        "loss": {"name": loss},
        "optim": {"batch_size": 32, "lr": 0.1},
        "schedule": {"epochs": 15, "warmup_epochs": 2, "decay": "step", "milestones": [0.8], "gamma": 0.1},
        "log": {"print_every": 0, "images": False},
    })
    validate(cfg)
    return Trainer(cfg, run_dir).train()["final"]


def table(means: dict) -> str:
    lines = ["| loss | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {loss} | " + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |" for loss, row in means.items()]
    return "\n".join(lines)


@pytest.mark.slow
def test_tail_methods_beat_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_card):
    means = {}
    for loss in ("ce", *TAIL_METHODS):
        runs = [train(learn_card, tmp_path / "data", tmp_path / f"{loss}_{seed}", loss, seed) for seed in SEEDS]
        assert runs[0]["few"] is not None and runs[0]["many"] is not None  # every shot group present
        means[loss] = {m: sum(r[m] for r in runs) / len(runs) for m in METRICS}
    report = table(means)
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for loss in TAIL_METHODS:
        for metric in ("top1", "few"):
            assert means[loss][metric] > means["ce"][metric] + MARGIN, f"{loss} {metric}\n{report}"
