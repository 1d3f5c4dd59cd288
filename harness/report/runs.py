"""The runs of a grid, read back from their folders (the report never retrains)."""
from __future__ import annotations

import copy
import itertools
from pathlib import Path

import yaml

from harness.config import set_dotted, to_dict
from harness.metrics import METRICS
from harness.registry import ConfigError
from harness.rundir import RunDir


def collect(grid_path: str | Path) -> list[dict]:
    """One row per run folder: its axes, state, resolved config and (when finished) its result."""
    grid_path = Path(grid_path)
    if not grid_path.is_dir():
        raise ConfigError(f"{grid_path}: no such folder; pass a grid's run folder, runs/<grid>")
    rows = []
    for run_dir in (RunDir(p) for p in sorted(grid_path.iterdir()) if RunDir(p).has_cell()):
        result = run_dir.read_result() or None
        config = (result or {}).get("config") or _read_yaml(run_dir.file(run_dir.CONFIG))
        rows.append({"signature": run_dir.name, "axes": run_dir.read_cell().get("axes", {}),
                     "state": run_dir.read_state(), "result": result, "config": config, "run_dir": run_dir.path})
    return rows


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def runs_table(rows: list[dict], which: str = "final") -> str:
    """A Markdown table, one line per run: its axes, then top-1 and many/medium/few accuracy."""
    axes = sorted({k for r in rows for k in r["axes"]})
    header = ["signature", *axes, "state", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        res = (r["result"] or {}).get(which, {})
        lines.append("| " + " | ".join([r["signature"], *(str(r["axes"].get(a, "")) for a in axes),
                                        r["state"]["state"], *(_fmt(res.get(m)) for m in METRICS)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# which runs belong to the grid: the grid file's cells, or the product of the axes seen

def grid_rows(rows: list[dict], grid) -> list[dict]:
    """Exactly the grid's cells: its runs found on disk, and a 'missing' row for each absent one."""
    found = {r["signature"]: r for r in rows}
    return [found.get(c.signature) or _missing(c.signature, c.axes, to_dict(c.config)) for c in grid.cells]


def complete(rows: list[dict]) -> list[dict]:
    """Add a 'missing' row for every combination of the axis values seen that has no folder."""
    keys = list(rows[0]["axes"]) if rows else []
    if any(list(r["axes"]) != keys for r in rows):
        return rows
    values = [unique(r["axes"][k] for r in rows) for k in keys]
    seen = {axes_key(r["axes"].values()) for r in rows}
    extra = []
    for point in itertools.product(*values):
        if axes_key(point) not in seen:
            axes = dict(zip(keys, point))
            config = copy.deepcopy(rows[0]["config"])
            for k, v in axes.items():
                set_dotted(config, k, v)
            extra.append(_missing("-", axes, config))
    return rows + extra


def _missing(signature: str, axes: dict, config: dict) -> dict:
    return {"signature": signature, "axes": axes, "state": {"state": "missing"}, "result": None,
            "config": config, "run_dir": None}


def axes_key(values) -> tuple:
    return tuple(repr(v) for v in values)


def unique(values) -> list:
    out, seen = [], set()
    for v in values:
        if repr(v) not in seen:
            seen.add(repr(v))
            out.append(v)
    return out


def duplicates(rows: list[dict]) -> list[list[dict]]:
    """Runs that share every axis value (left over from an older version of the grid)."""
    by_axes = {}
    for r in rows:
        by_axes.setdefault(axes_key(r["axes"].items()), []).append(r)
    return [group for group in by_axes.values() if len(group) > 1]


# ---------------------------------------------------------------------------------------
# axes, values and labels
