"""Weight balancing and LDMLR help the tail: on the learnable synthetic long-tailed data at IF 100,
the set and first-stage recipe of tests/losses/test_learning.py (a narrow ResNet-8, batch 32, 15
epochs, lr 0.1 with warm-up and a step at 80 %), each beats plain cross-entropy on balanced top-1
and few-shot accuracy, averaged over two seeds. Every run trains in this process through the
Trainer, in dist.precision auto (bf16 on CPUs that have it); the metrics are the last epoch's.

- ce: cross-entropy, weight decay 2e-4: the baseline, and LDMLR's first stage.
- weight balancing: cross-entropy with a larger weight decay, then `stage.kind: maxnorm` at its
  code's defaults (CB-BCE, lr 0.01, weight decay 0.1, 10 epochs, thresh 0.1, per epoch). The
  paper tunes stage one's weight decay per dataset (its Fig. 4); its CIFAR-100 value, 5e-3 at lr
  0.01 over 320 epochs, is too strong for this 15-epoch recipe at lr 0.1 (observed: top-1 50
  against CE's 59, and 49 after maxnorm), so stage one here takes 1e-3.
- LDMLR on top of the ce run: the code's classifier recipe (Adam 1e-3, weight decay 1e-5, batch
  1024, generated max(round(0.2·n_c), 5) per class) with 100 epochs instead of 400 and a smaller
  generator (width 128, 2 blocks, 100 epochs), to keep the CPU time small.
"""
import pytest
import torch
import yaml

from harness.config import RunConfig, from_dict, signature
from harness.grid.validate import validate
from harness.run.trainer import Trainer
from support import ROOT

SEEDS = (0, 1)
METRICS = ("top1", "many", "medium", "few")
MARGIN = 2.0
"""Points by which each method must beat CE on the mean of the seeds. Observed (top-1 / few-shot): CE
62.8 / 30.0, weight balancing 72.0 / 62.0 (its stage one 59.2 / 24.0), LDMLR 67.2 / 41.0. The same
classifier re-training on the real features alone (ratio 0, min_count 0) kept about half of LDMLR's gain
on seed 0 (60.2 / 25.5 against 61.8 / 30.0, CE 58.6 / 22.0)."""
STAGE_ONE_WD = 1e-3
"""Weight balancing's stage-one weight decay for this recipe (see the module docstring)."""
SMALL_LDMLR = {"kind": "ldmlr", "epochs": 100, "ldmlr": {"hidden": 128, "blocks": 2, "epochs": 100}}


@pytest.fixture
def one_thread():
    """One thread: these small models train as fast on one core as on two, and a bf16 run on two
    threads slows down several times when other processes share the cores (observed 7x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learn_card(tmp_path_factory):
    """The synthetic card with 300 train / 50 test images per class."""
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    card["name"] = "learn"
    card["source"].update(train_per_class=300, test_per_class=50)
    path = tmp_path_factory.mktemp("learn_stages") / "learn.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def train(card, root, seed: int, weight_decay: float = 2e-4, stage: dict | None = None) -> dict:
    """One run's last-epoch metrics; its folder is runs/<signature>, where a second stage finds its first."""
    tree = {
        "seed": seed,
        "data": {"dataset": str(card), "root": str(root / "data"), "loader": "memory", "imbalance_factor": 100},
        "model": {"name": "resnet8_narrow"},
        "loss": {"name": "ce"},
        "optim": {"batch_size": 32, "lr": 0.1, "weight_decay": weight_decay},
        "schedule": {"epochs": 15, "warmup_epochs": 2, "decay": "step", "milestones": [0.8], "gamma": 0.1},
        "log": {"print_every": 0, "images": False},
    }
    if stage:
        tree["stage"] = stage
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return Trainer(cfg, root / "runs" / signature(cfg)).train()["final"]


def table(means: dict) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |" for name, row in means.items()]
    return "\n".join(lines)


@pytest.mark.slow
def test_weight_balancing_and_ldmlr_beat_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_card,
                                                                                         one_thread):
    runs = {"ce": [], "ce, weight decay 1e-3 (stage one)": [], "weight balancing (maxnorm)": [], "ldmlr": []}
    for seed in SEEDS:
        runs["ce"].append(train(learn_card, tmp_path, seed))
        runs["ce, weight decay 1e-3 (stage one)"].append(train(learn_card, tmp_path, seed, STAGE_ONE_WD))
        runs["weight balancing (maxnorm)"].append(train(learn_card, tmp_path, seed, STAGE_ONE_WD, {"kind": "maxnorm"}))
        runs["ldmlr"].append(train(learn_card, tmp_path, seed, stage=SMALL_LDMLR))
    means = {name: {m: sum(r[m] for r in rows) / len(rows) for m in METRICS} for name, rows in runs.items()}
    report = table(means)
    print(f"\nlearning test, mean of seeds {SEEDS}:\n{report}")
    for name in ("weight balancing (maxnorm)", "ldmlr"):
        for metric in ("top1", "few"):
            assert means[name][metric] > means["ce"][metric] + MARGIN, f"{name} {metric}\n{report}"
