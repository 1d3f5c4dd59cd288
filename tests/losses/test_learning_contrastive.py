"""BCL helps the tail: on the learnable synthetic long-tailed set at IF 100 (the set of
tests/support/learning.py), on the CPU, averaged over two seeds, bcl beats cross-entropy on balanced
top-1 and few-shot accuracy; the table is printed.

supcon (joint) and gpaco do NOT beat CE on this set since the classifier starts as LDAM-DRW's code
starts it (Kaiming; issue 15), which raised CE from 57.4 / 16.8 to 79.4 / 56.2 at this recipe, while
supcon and gpaco keep nn.Linear's default start as their authors' code does. Measured on main after
that change (means of seeds 0 and 1, top-1 / few-shot): CE 79.4 / 56.2, supcon 62.9 / 21.2, gpaco
66.4 / 44.8, bcl 91.1 / 78.2. They are not in the assertion until a recipe shows them helping; the
numbers before the change are below.

The recipe, the same for all four: the base recipe with lr 0.025 (the LDAM-DRW protocol's 0.1 at
batch 128, per image, at the base recipe's batch 32) for 30 epochs. The contrastive methods see two
(BCL: three) draws of the base recipe's augmentation (`aug.name: "standard,standard"`), so they
differ from CE in their loss and their views only; each loss at its published defaults.

Why not the base recipe (lr 0.1, 15 epochs). Measured on this set (means of seeds 0 and 1, top-1 /
few-shot): CE 62.4 / 28.0, supcon 55.2 / 12.3, bcl 52.8 / 46.3, gpaco 50.3 / 22.0. At batch 32, lr 0.1
is 4x the protocol's lr per image and 3x to 8x what the methods' CIFAR codes use (GPaCo 0.05 at 128,
BCL's CIFAR descendant 0.3 at 256, SupCon 0.5 at 1024): BCL's seed-1 run stays at chance for its 15
epochs (top-1 17.6) and for 20 of 30 epochs; GPaCo's loss starts near 17, its sample similarities over
the temperature 0.05 (up to exp(20)) swamping the class centres' softmax, and its top-1 is still at
31 after 11 epochs (without its sample terms, alpha = gamma = 0, the same run is Balanced Softmax on
two views: 76.6 / 67.5 on seed 0). At lr 0.1 for 30 epochs CE almost solves the set (93.0 / 85.5):
supcon 93.3 / 83.5, gpaco 88.5 / 79.8, bcl 75.4 / 63.0 (seed 1 stuck again). At lr 0.025 for 30
epochs: CE 57.4 / 16.8, supcon 61.6 / 21.8, gpaco 73.8 / 62.8, bcl 90.6 / 77.0. So the comparison is
at equal recipe: CE at 4x the lr reaches more on this easy set than any method here at 0.025.
"""
import pytest

from support.learning import SEEDS, learn_config, means_table, train_final

RECIPE = {"optim": {"lr": 0.025}, "schedule": {"epochs": 30}}
VIEWS = {"bcl": "standard,standard,standard"}
MARGIN = 2.0
"""Points by which BCL must beat CE on each metric (observed: +11.7 on top-1 and +22 on few-shot;
before the Kaiming classifier start, +33 and +60)."""


@pytest.mark.slow
def test_bcl_beats_cross_entropy_on_balanced_and_few_shot_accuracy(tmp_path, learn_data):
    card, data = learn_data
    runs = {"ce": [train_final(learn_config(card, data, seed, **RECIPE), tmp_path / f"ce_{seed}") for seed in SEEDS]}
    for name, views in VIEWS.items():
        runs[name] = [train_final(learn_config(card, data, seed, loss={"name": name}, aug={"name": views}, **RECIPE),
                                  tmp_path / f"{name}_{seed}") for seed in SEEDS]
    means, report = means_table(runs)
    print(f"\ncontrastive learning test, mean of seeds {SEEDS}:\n{report}")
    for name in VIEWS:
        for metric in ("top1", "few"):
            assert means[name][metric] > means["ce"][metric] + MARGIN, f"{name} {metric}\n{report}"
