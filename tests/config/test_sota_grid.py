"""jobs/cifar_lt_sota.yaml: every recipe at its paper's settings, and the published rows it compares with."""
import yaml

from harness.grid import load_grid
from support import ROOT


def cells():
    grid = load_grid(ROOT / "jobs" / "cifar_lt_sota.yaml", check=False)
    return {(c.axes["recipe"], c.axes["data.dataset"], c.axes["data.imbalance_factor"]): c.config for c in grid.cells}


def test_the_grid_crosses_every_recipe_with_both_datasets_and_three_imbalance_factors():
    found = cells()
    recipes = {r for r, _, _ in found}
    assert len(found) == 6 * len(recipes) == 60
    assert {(d, f) for _, d, f in found} == {(d, f) for d in ("cifar10", "cifar100") for f in (100, 50, 10)}
    assert {c.dist.precision for c in found.values()} == {"fp32"}


def test_recipes_carry_their_papers_settings():
    c = {r: cfg for (r, d, f), cfg in cells().items() if (d, f) == ("cifar100", 100)}
    gpaco = c["gpaco"]
    assert (gpaco.loss.name, gpaco.aug.name, gpaco.schedule.epochs, gpaco.optim.lr, gpaco.optim.weight_decay) == \
        ("gpaco", "standard+autoaugment+cutout,simaugment", 400, 0.05, 5e-4)
    assert (gpaco.schedule.milestones, gpaco.schedule.gamma, gpaco.schedule.warmup_epochs) == ([320, 360], 0.1, 10)
    assert c["sade"].model.name == "resnet32_experts" and c["sade"].loss.params == {}  # transductive TTA off
    assert c["ride"].schedule.gamma == 0.01 and c["sade"].schedule.gamma == 0.1
    assert (c["wd"].optim.weight_decay, c["wd"].optim.lr, c["wd"].optim.batch_size) == (5e-3, 0.01, 64)
    assert c["wd_maxnorm"].stage.kind == "maxnorm" and c["ce_ldmlr"].stage.kind == "ldmlr"
    assert c["bs_mixup"].aug.params == {"mixup": {"alpha": 0.4}} and c["bs_mixup"].loss.name == "balanced_softmax"
    assert c["ce"].schedule.milestones == [160, 180] and c["ce"].optim.weight_decay == 2e-4


def test_published_rows_name_recipes_of_the_grid():
    published = yaml.safe_load((ROOT / "docs" / "published.yaml").read_text())["numbers"]
    recipes = yaml.safe_load((ROOT / "jobs" / "cifar_lt_sota.yaml").read_text())["recipes"]
    for row in ("ce", "ldam_drw", "ride", "sade", "wd", "wd_maxnorm", "ce_ldmlr"):
        assert row in published and row in recipes
    assert published["wd_maxnorm"]["cifar100 IF100"] == 53.35 and published["sade"]["cifar100 IF100"] == 49.8
