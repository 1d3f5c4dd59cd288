"""Grid files: a base config and axes whose cartesian product is the set of cells.

    name: demo                    # the folder under runs/
    base: {data: {...}, ...}      # overrides of the defaults, for every cell
    grid: {loss.name: [ce, ldam_drw], data.imbalance_factor: [10, 100]}
    launch: {cluster: local, ...} # how the cells are run (harness.sweep)

Every cell is the base plus one point of the product; its signature (harness.config.signature)
names its folder, so the same experiment always lands in the same place.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

from harness.config import LaunchConfig, RunConfig, from_dict, parse_override, read_yaml, set_dotted, signature
from harness.files import check_name
from harness.registry import ConfigError


def axis_name(dotted: str) -> str:
    """A short name for a grid axis: 'loss.name' -> 'loss', 'data.imbalance_factor' -> 'imbalance_factor'."""
    parts = dotted.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


@dataclass
class Cell:
    """One run of a grid: its config, its signature and the grid values that chose it."""
    config: RunConfig
    axes: dict
    signature: str

    @property
    def label(self) -> str:
        return " ".join(f"{axis_name(k)}={v}" for k, v in self.axes.items()) or "base"


@dataclass
class Grid:
    name: str
    path: Path
    base: dict
    axes: dict
    launch: LaunchConfig
    cells: list[Cell]


GRID_KEYS = {"name", "base", "grid", "launch", "description", "recipes"}
RECIPE = "recipe"
"""The grid axis that picks named bundles of settings from the grid's `recipes` (a method is
often several keys at once: its loss, augmentation, schedule and stage)."""


def load_grid(path: str | Path, overrides: list[str] = (), check: bool = True) -> Grid:
    """Read a grid file, apply `key=value` overrides to its base, expand it and (with `check`)
    validate every cell. Without `check`, keys and types are still checked but no part is built
    and torch is not imported (what `--status` and `--cancel` need)."""
    path = Path(path)
    where = f"{path}: "
    raw = read_yaml(path, "a grid file", "name, base, grid, launch")
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}unknown top-level key '{unknown[0]}'; known: {', '.join(sorted(GRID_KEYS))}")
    name = check_name(str(raw.get("name") or path.stem), f"{where}grid name")  # the folder runs/<name>/
    base = raw.get("base") or {}
    axes = raw.get("grid") or {}
    launch = raw.get("launch") or {}
    recipes = check_recipes(raw.get("recipes") or {}, axes, where)
    for key, value in (parse_override(o) for o in overrides):
        if key.startswith("launch."):
            set_dotted(launch, key[len("launch."):], value)
        else:
            set_dotted(base, key, value)
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}'grid' must map dotted keys to lists")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}grid key '{key}' must be a non-empty list")
    cells = expand(base, axes, where, check, recipes)
    if not cells:
        raise ConfigError(f"{where}the grid has no cells")
    launch_cfg = from_dict(LaunchConfig, launch, where, "launch.")
    return Grid(name=str(name), path=path, base=base, axes=axes, launch=launch_cfg, cells=cells)


def check_recipes(recipes: dict, axes: dict, where: str) -> dict:
    """The grid's recipes, {name: {dotted key: value}}, checked against its axes."""
    if not isinstance(recipes, dict) or not all(isinstance(r, dict) for r in recipes.values()):
        raise ConfigError(f"{where}'recipes' must map names to {{dotted key: value}} mappings")
    for name in axes.get(RECIPE, []):
        if name not in recipes:
            raise ConfigError(f"{where}grid key 'recipe' has '{name}', which is not in 'recipes' "
                              f"(known: {', '.join(sorted(recipes)) or 'none'})")
        clash = sorted(set(recipes[name]) & set(axes))
        if clash:
            raise ConfigError(f"{where}recipe '{name}' sets '{clash[0]}', which is also a grid axis; "
                              f"set it in one place")
    return recipes


def expand(base: dict, axes: dict, where: str = "", check: bool = True, recipes: dict | None = None) -> list[Cell]:
    """The cartesian product of the axes over the base, each cell validated (with `check`); the
    `recipe` axis applies the named recipe's keys where it stands among the axes."""
    if check:
        from harness.grid.validate import Validator
        validate = Validator(where)  # one per grid: each distinct part is built once
    cells, seen = [], set()
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        tree = copy.deepcopy(base)
        point = dict(zip(keys, values))
        for key, value in point.items():
            for k, v in (recipes[value].items() if key == RECIPE else [(key, value)]):
                set_dotted(tree, k, copy.deepcopy(v))
        cfg = from_dict(RunConfig, tree, where)
        if check:
            validate(cfg)
        sig = signature(cfg)
        if sig not in seen:
            seen.add(sig)
            cells.append(Cell(cfg, point, sig))
    return cells
