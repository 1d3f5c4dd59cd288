"""Grid files -> cells: `expand` reads and expands (no torch), `validate` checks a cell's parts."""
from harness.grid.expand import GRID_KEYS, Cell, Grid, axis_name, expand, load_grid

__all__ = ["GRID_KEYS", "Cell", "Grid", "axis_name", "expand", "load_grid"]
