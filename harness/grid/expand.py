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


GRID_KEYS = {"name", "base", "grid", "launch", "description"}


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
    name = raw.get("name") or path.stem
    base = raw.get("base") or {}
    axes = raw.get("grid") or {}
    launch = raw.get("launch") or {}
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
    cells = expand(base, axes, where, check)
    if not cells:
        raise ConfigError(f"{where}the grid has no cells")
    launch_cfg = from_dict(LaunchConfig, launch, where, "launch.")
    return Grid(name=str(name), path=path, base=base, axes=axes, launch=launch_cfg, cells=cells)


def expand(base: dict, axes: dict, where: str = "", check: bool = True) -> list[Cell]:
    """The cartesian product of the axes over the base, each cell validated (with `check`)."""
    if check:
        from harness.grid.validate import validate
    cells, seen = [], set()
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        tree = copy.deepcopy(base)
        point = dict(zip(keys, values))
        for key, value in point.items():
            set_dotted(tree, key, value)
        cfg = from_dict(RunConfig, tree, where)
        if check:
            validate(cfg, where)
        sig = signature(cfg)
        if sig not in seen:
            seen.add(sig)
            cells.append(Cell(cfg, point, sig))
    return cells
