"""lt-harness: long-tailed image classification studies, from one grid file to a paper table.

The public API; everything else is reachable through these names.
"""
import os

# Idle OpenMP threads sleep instead of spinning: with FFCV's workers on a few cores, spinning
# makes epochs 10-30x slower at random. It only works when set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness.config import Cell, Grid, RunConfig, from_dict, load_grid, signature  # noqa: E402
from harness.registry import ConfigError, Registry  # noqa: E402
from harness.report import report  # noqa: E402

__all__ = ["Cell", "ConfigError", "Grid", "Registry", "RunConfig", "from_dict", "load_grid", "report",
           "signature"]
