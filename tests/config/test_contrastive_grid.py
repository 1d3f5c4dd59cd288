"""jobs/cifar_lt_contrastive.yaml: the contrastive family at its papers' (codes') settings, several views
of each image, SupCon's linear stage paired with its first stage, and the published rows it compares with."""
import yaml

from harness.config import signature
from harness.data.augment import count_views
from harness.grid import load_grid
from harness.stages import first_stage_config
from support import ROOT

GRID = ROOT / "jobs" / "cifar_lt_contrastive.yaml"


def cells():
    grid = load_grid(GRID, check=False)
    return {(c.axes["recipe"], c.axes["data.dataset"], c.axes["data.imbalance_factor"]): c for c in grid.cells}


def test_every_recipe_on_both_datasets_at_three_imbalance_factors_in_fp32():
    found = cells()
    assert len(found) == 6 * 6
    assert {(d, f) for _, d, f in found} == {(d, f) for d in ("cifar10", "cifar100") for f in (100, 50, 10)}
    assert {c.config.dist.precision for c in found.values()} == {"fp32"}
    views = {r: count_views(c.config.aug.name) for (r, _, _), c in found.items()}
    assert views == {"supcon": 2, "supcon_linear": 2, "supcon_joint": 2, "bcl": 3, "paco": 2, "gpaco": 2}


def test_recipes_carry_their_papers_settings():
    c = {r: cell.config for (r, d, f), cell in cells().items() if (d, f) == ("cifar100", 100)}
    supcon = c["supcon"]
    assert (supcon.loss.params, supcon.aug.params) == ({"mode": "pretrain"}, {"simaugment": {"blur_p": 0.0}})
    assert (supcon.optim.lr, supcon.optim.batch_size, supcon.schedule.epochs, supcon.schedule.decay) == \
        (0.5, 1024, 1000, "cosine")
    linear = c["supcon_linear"].stage
    assert (linear.kind, linear.epochs, linear.lr, linear.batch_size, linear.weight_decay) == \
        ("linear", 100, 5.0, 512, 0)
    bcl = c["bcl"]
    assert bcl.aug.name == "standard+autoaugment+cutout,simaugment,simaugment" and bcl.loss.params == {}
    assert (bcl.optim.batch_size, bcl.optim.lr, bcl.schedule.milestones, bcl.schedule.gamma) == \
        (256, 0.3, [160, 180], 0.1)
    paco, gpaco = c["paco"], c["gpaco"]
    assert paco.aug.params["simaugment"] == {"blur_p": 0.5} and "simaugment" not in gpaco.aug.params
    for cfg in (paco, gpaco):
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.epochs, cfg.schedule.milestones) == \
            (0.05, 5e-4, 400, [320, 360])


def test_the_linear_stage_starts_from_the_grids_own_supcon_cell():
    found = cells()
    for (recipe, dataset, factor), cell in found.items():
        if recipe == "supcon_linear":
            first = found[("supcon", dataset, factor)]
            assert signature(first_stage_config(cell.config)) == first.signature


def test_published_rows_name_recipes_of_the_grid():
    published = yaml.safe_load((ROOT / "docs" / "published.yaml").read_text())["numbers"]
    recipes = yaml.safe_load(GRID.read_text())["recipes"]
    for row in ("bcl", "paco"):
        assert row in published and row in recipes
    assert set(published["paco"]) == {"cifar100 IF100", "cifar100 IF50", "cifar100 IF10"}
