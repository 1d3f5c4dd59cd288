"""Runs grouped into a paper table: rows × columns of mean ± std over seeds, and the published
numbers a --compare file puts beside them."""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.config import get_dotted
from harness.grid import axis_name
from harness.registry import ConfigError
from harness.report.runs import axes_key, unique

ALIASES = {"loss": "loss.name", "dataset": "data.dataset", "imbalance_factor": "data.imbalance_factor",
           "if": "data.imbalance_factor", "imbalance": "data.imbalance", "aug": "aug.name",
           "model": "model.name"}
NAMED = {"loss.name", "aug.name", "model.name", "data.dataset", "data.imbalance", "recipe"}


def resolve_axis(name: str, rows: list[dict]) -> str:
    """'loss' or 'loss.name' -> 'loss.name'; any config key works, a grid axis by its short name."""
    name = name.strip()
    axes = unique(k for r in rows for k in r["axes"])
    for key in axes:
        if name in (key, axis_name(key)):
            return key
    key = ALIASES.get(name, name)
    try:
        get_dotted(rows[0]["config"], key)
    except (KeyError, AttributeError, TypeError, IndexError):
        known = ", ".join([axis_name(k) for k in axes] + sorted(ALIASES))
        raise ConfigError(f"unknown axis '{name}': not a grid axis nor a config key; try one of {known}") from None
    return key


def value(row: dict, key: str):
    return row["axes"][key] if key in row["axes"] else get_dotted(row["config"], key)


def label(key: str, v) -> str:
    """How a value is printed: names as they are, 'IF100' for an imbalance factor, else 'key=v'."""
    if key == "data.dataset":
        return Path(str(v)).stem if str(v).endswith((".yaml", ".yml")) else str(v)
    if key == "data.imbalance_factor":
        return f"IF{v:g}"
    if key in NAMED:
        return str(v)
    return f"{axis_name(key)}={v:g}" if isinstance(v, float) else f"{axis_name(key)}={v}"


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


# ---------------------------------------------------------------------------------------
# the table

@dataclass
class Stat:
    """A metric over the runs of one table cell."""
    values: list
    done: int
    expected: int

    @property
    def mean(self):
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self):
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        if not self.done:
            return f"— (0/{self.expected})"
        if self.mean is None:
            body = "n/a"
        else:
            body = f"{self.mean:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")
        return body + (f" ({self.done}/{self.expected})" if self.done < self.expected else "")


@dataclass
class Table:
    """Runs grouped into rows × columns, with the published numbers for --compare."""
    which: str
    row_keys: list
    col_keys: list
    row_values: list
    col_values: list
    cells: dict
    published: dict = field(default_factory=dict)
    source: str = ""

    def row_label(self, rv: tuple) -> str:
        return ", ".join(label(k, v) for k, v in zip(self.row_keys, rv))

    def col_label(self, cv: tuple) -> str:
        return " ".join(label(k, v) for k, v in zip(self.col_keys, cv))

    def stat(self, rv: tuple, cv: tuple, metric: str) -> Stat:
        runs = self.cells.get((axes_key(rv), axes_key(cv)), [])
        done = [r for r in runs if r["result"]]
        values = [r["result"][self.which][metric] for r in done if r["result"][self.which].get(metric) is not None]
        return Stat(values, len(done), len(runs))

    def published_for(self, rv: tuple, cv: tuple):
        return self.published.get((_norm(self.row_label(rv)), _norm(self.col_label(cv))))

    def published_cols(self) -> set:
        return {c for _, c in self.published}


def build_table(rows: list[dict], row_axes: list[str], col_axes: list[str], which: str = "final",
                in_order: bool = False) -> Table:
    """Group runs into rows × columns; axes that vary but are neither (except seed) join the rows.
    Rows and columns are sorted by value, or kept in the order of `rows` with in_order."""
    if not rows:
        raise ConfigError("no runs to report")
    row_keys = [resolve_axis(a, rows) for a in row_axes]
    col_keys = [resolve_axis(a, rows) for a in col_axes]
    varying = [k for k in unique(k for r in rows for k in r["axes"])
               if k != "seed" and k not in row_keys + col_keys and len(unique(r["axes"].get(k) for r in rows)) > 1]
    row_keys += varying
    cells = {}
    for r in rows:
        rv = tuple(value(r, k) for k in row_keys)
        cv = tuple(value(r, k) for k in col_keys)
        cells.setdefault((axes_key(rv), axes_key(cv)), []).append(r)
    row_values = unique(tuple(value(r, k) for k in row_keys) for r in rows)
    col_values = unique(tuple(value(r, k) for k in col_keys) for r in rows)
    if not in_order:
        row_values.sort(key=lambda t: [_sort_key(v) for v in t])
        col_values.sort(key=lambda t: [_sort_key(v) for v in t])
    return Table(which, row_keys, col_keys, row_values, col_values, cells)


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def load_published(path: str | Path) -> tuple[dict, str]:
    """{(row, column): number} and the source line from a --compare file (YAML or CSV)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: compare file not found")
    try:
        if path.suffix.lower() == ".csv":
            lines = list(csv.reader(io.StringIO(path.read_text())))
            header, body = lines[0], [ln for ln in lines[1:] if ln]
            numbers = {ln[0]: {c: v for c, v in zip(header[1:], ln[1:]) if v.strip()} for ln in body}
            source = path.name
        else:
            raw = yaml.safe_load(path.read_text()) or {}
            numbers, source = raw.get("numbers"), str(raw.get("source", path.name))
        if not isinstance(numbers, dict) or not all(isinstance(v, dict) for v in numbers.values()):
            raise ValueError("'numbers' must map row names to {column name: number}")
        table = {(_norm(r), _norm(c)): float(v) for r, cols in numbers.items() for c, v in cols.items()}
    except (ValueError, IndexError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a published-numbers file ({str(e).splitlines()[0]}); "
                          f"see the format in harness/report/__init__.py") from None
    return table, source


def unmatched(table: Table) -> list[str]:
    """Entries of the compare file that name no row or column of the table."""
    rows = {_norm(table.row_label(rv)) for rv in table.row_values}
    cols = {_norm(table.col_label(cv)) for cv in table.col_values}
    return [f"{r} / {c}" for r, c in table.published if r not in rows or c not in cols]


# ---------------------------------------------------------------------------------------
# Markdown, CSV, PNG
