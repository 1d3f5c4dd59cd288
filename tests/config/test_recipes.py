"""The `recipe` axis: named bundles of settings in one grid."""
import textwrap

import pytest

from harness.grid import load_grid
from harness.registry import ConfigError


def grid_file(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_recipes_are_bundles_of_keys_picked_by_the_recipe_axis(tmp_path):
    grid = load_grid(grid_file(tmp_path, """\
        name: r
        base: {schedule: {epochs: 10}}
        recipes:
          ce: {loss.name: ce}
          bs_mixup: {loss.name: balanced_softmax, aug.name: standard+mixup, aug.params: {mixup: {alpha: 0.4}},
                     optim.weight_decay: 5.0e-4}
        grid:
          data.imbalance_factor: [100, 10]
          recipe: [ce, bs_mixup]
        """), check=False)
    cells = {(c.axes["recipe"], c.axes["data.imbalance_factor"]): c.config for c in grid.cells}
    assert len(cells) == 4
    assert cells[("ce", 100)].loss.name == "ce" and cells[("ce", 100)].aug.name == "standard"
    mix = cells[("bs_mixup", 10)]
    assert (mix.loss.name, mix.aug.name, mix.aug.params, mix.optim.weight_decay, mix.data.imbalance_factor) == \
        ("balanced_softmax", "standard+mixup", {"mixup": {"alpha": 0.4}}, 5e-4, 10)
    assert cells[("ce", 10)].schedule.epochs == 10  # the base under every recipe


@pytest.mark.parametrize("text, error", [
    ("recipes: {a: {loss.name: ce}}\ngrid: {recipe: [b]}\n", "'recipe' has 'b', which is not in 'recipes'"),
    ("recipes: {a: {loss.name: ce}}\ngrid: {recipe: [a], loss.name: [ce]}\n",
     "recipe 'a' sets 'loss.name', which is also"),
    ("recipes: [a]\ngrid: {recipe: [a]}\n", "'recipes' must map names"),
    ("recipes: {a: {loss.nme: ce}}\ngrid: {recipe: [a]}\n", "unknown key 'loss.nme'"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, text, error):
    with pytest.raises(ConfigError, match=error):
        load_grid(grid_file(tmp_path, "name: r\n" + text), check=False)
