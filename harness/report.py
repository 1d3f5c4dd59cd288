"""Read finished runs back from their folders and print the tables papers print.

    python tools/report.py runs/<grid> [--rows loss] [--cols dataset,imbalance_factor] [--best]
                                       [--compare published.yaml] [--grid jobs/<grid>.yaml]

Rows are the values of one or more axes (default: the loss), columns the values of others
(default: dataset × imbalance factor); a cell is the mean ± sample std over the seeds (and
over nothing else: every other axis that varies joins the rows). A cell with fewer finished
runs than the grid has says so, `mean ± std (2/3)` or `— (0/3)`; it is never dropped. The
report never retrains: it reads cell.json, config.yaml and result.json of every run folder,
and writes report.md, report.csv and report.png (report_best.* with --best) next to the runs.

A published-numbers file for --compare (YAML; the row and column names as this report prints them):

    source: "Cao et al. 2019 (LDAM-DRW), Table 2; best epoch"
    numbers:
      ce:       {cifar10 IF100: 70.4, cifar10 IF10: 86.4}
      ldam_drw: {cifar10 IF100: 77.0, cifar10 IF10: 88.2}

or the same table as CSV: a header `loss,cifar10 IF100,cifar10 IF10`, then one line per row.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.config import axis_name, get_dotted, set_dotted
from harness.registry import ConfigError
from harness.state import CELL, CONFIG, RESULT, read_json, read_state

METRICS = ("top1", "many", "medium", "few")
GROUPS = ("many", "medium", "few")
ALIASES = {"loss": "loss.name", "dataset": "data.dataset", "imbalance_factor": "data.imbalance_factor",
           "if": "data.imbalance_factor", "imbalance": "data.imbalance", "aug": "aug.name",
           "model": "model.name"}
NAMED = {"loss.name", "aug.name", "model.name", "data.dataset", "data.imbalance"}
WHICH = {"final": "final epoch",
         "best": "best epoch (the epoch of highest test top-1 in each run; optimistic, as LDAM-DRW reports)"}


def collect(grid_path: str | Path) -> list[dict]:
    """One row per run folder: its axes, state, resolved config and (when finished) its result."""
    grid_path = Path(grid_path)
    if not grid_path.is_dir():
        raise ConfigError(f"{grid_path}: no such folder; pass a grid's run folder, runs/<grid>")
    rows = []
    for run_dir in sorted(p for p in grid_path.iterdir() if (p / CELL).is_file()):
        cell = read_json(run_dir / CELL)
        result = read_json(run_dir / RESULT) or None
        config = (result or {}).get("config") or _read_yaml(run_dir / CONFIG)
        rows.append({"signature": run_dir.name, "axes": cell.get("axes", {}), "state": read_state(run_dir),
                     "result": result, "config": config, "run_dir": run_dir})
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
    from harness.config import to_dict
    found = {r["signature"]: r for r in rows}
    return [found.get(c.signature) or _missing(c.signature, c.axes, to_dict(c.config)) for c in grid.cells]


def complete(rows: list[dict]) -> list[dict]:
    """Add a 'missing' row for every combination of the axis values seen that has no folder."""
    keys = list(rows[0]["axes"]) if rows else []
    if any(list(r["axes"]) != keys for r in rows):
        return rows
    values = [_unique(r["axes"][k] for r in rows) for k in keys]
    seen = {_key(r["axes"].values()) for r in rows}
    extra = []
    for point in itertools.product(*values):
        if _key(point) not in seen:
            axes = dict(zip(keys, point))
            config = copy.deepcopy(rows[0]["config"])
            for k, v in axes.items():
                set_dotted(config, k, v)
            extra.append(_missing("-", axes, config))
    return rows + extra


def _missing(signature: str, axes: dict, config: dict) -> dict:
    return {"signature": signature, "axes": axes, "state": {"state": "missing"}, "result": None,
            "config": config, "run_dir": None}


def _key(values) -> tuple:
    return tuple(repr(v) for v in values)


def _unique(values) -> list:
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
        by_axes.setdefault(_key(r["axes"].items()), []).append(r)
    return [group for group in by_axes.values() if len(group) > 1]


# ---------------------------------------------------------------------------------------
# axes, values and labels

def resolve_axis(name: str, rows: list[dict]) -> str:
    """'loss' or 'loss.name' -> 'loss.name'; any config key works, a grid axis by its short name."""
    name = name.strip()
    axes = _unique(k for r in rows for k in r["axes"])
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
        runs = self.cells.get((_key(rv), _key(cv)), [])
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
    varying = [k for k in _unique(k for r in rows for k in r["axes"])
               if k != "seed" and k not in row_keys + col_keys and len(_unique(r["axes"].get(k) for r in rows)) > 1]
    row_keys += varying
    cells = {}
    for r in rows:
        rv = tuple(value(r, k) for k in row_keys)
        cv = tuple(value(r, k) for k in col_keys)
        cells.setdefault((_key(rv), _key(cv)), []).append(r)
    row_values = _unique(tuple(value(r, k) for k in row_keys) for r in rows)
    col_values = _unique(tuple(value(r, k) for k in col_keys) for r in rows)
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
                          f"see the format in harness/report.py") from None
    return table, source


def unmatched(table: Table) -> list[str]:
    """Entries of the compare file that name no row or column of the table."""
    rows = {_norm(table.row_label(rv)) for rv in table.row_values}
    cols = {_norm(table.col_label(cv)) for cv in table.col_values}
    return [f"{r} / {c}" for r, c in table.published if r not in rows or c not in cols]


# ---------------------------------------------------------------------------------------
# Markdown, CSV, PNG

def _md(header: list, body: list) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in body)]


def top1_lines(t: Table) -> list[str]:
    pub = t.published_cols()
    header = [" / ".join(axis_name(k) for k in t.row_keys)]
    for cv in t.col_values:
        header.append(t.col_label(cv))
        if _norm(t.col_label(cv)) in pub:
            header.append(f"{t.col_label(cv)} (published)")
    body = []
    for rv in t.row_values:
        line = [t.row_label(rv)]
        for cv in t.col_values:
            line.append(t.stat(rv, cv, "top1").text())
            if _norm(t.col_label(cv)) in pub:
                p = t.published_for(rv, cv)
                line.append("—" if p is None else f"{p:.1f}")
        body.append(line)
    return _md(header, body)


def groups_lines(t: Table) -> list[str]:
    header = [" / ".join(axis_name(k) for k in t.row_keys)]
    header += [f"{t.col_label(cv)} {g}" for cv in t.col_values for g in GROUPS]
    body = [[t.row_label(rv), *(t.stat(rv, cv, g).text() for cv in t.col_values for g in GROUPS)]
            for rv in t.row_values]
    return _md(header, body)


def unfinished_lines(rows: list[dict]) -> list[str]:
    body = []
    for r in sorted(rows, key=lambda r: [_sort_key(v) for v in r["axes"].values()]):
        if r["result"]:
            continue
        axes = " ".join(f"{axis_name(k)}={v}" for k, v in r["axes"].items())
        error = (r["state"].get("error") or "").replace("|", "/")[:80]
        body.append([axes, r["signature"], r["state"]["state"], error])
    return _md(["cell", "signature", "state", "error"], body) if body else ["every run finished"]


def markdown(t: Table, rows: list[dict], title: str) -> str:
    n_seeds = len(_unique(r["axes"].get("seed", r["config"].get("seed")) for r in rows))
    splits = sorted({r["result"].get("eval_split", "test") for r in rows if r["result"]}) or ["test"]
    lines = [f"# {title}", "",
             f"Top-1 accuracy (%) on the balanced {'/'.join(splits)} set, **{WHICH[t.which]}**; "
             f"mean ± sample std over {n_seeds} seed(s).", "", *top1_lines(t), "",
             "`(k/n)`: only k of the n runs of this cell finished; `—`: none did."]
    if t.published:
        lines += [f"Published numbers: {t.source}."]
    lines += ["", f"## Many / medium / few-shot accuracy (%), {t.which} epoch", "",
              "many: > 100 training images, medium: 20-100, few: < 20; n/a: no class of that kind.", "",
              *groups_lines(t), "", "## Runs not finished", "", *unfinished_lines(rows), ""]
    return "\n".join(lines)


def csv_text(t: Table) -> str:
    """One line per (row, column, metric): mean, std, runs finished, runs expected, published."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([*(axis_name(k) for k in t.row_keys), *(axis_name(k) for k in t.col_keys),
                "which", "metric", "mean", "std", "finished", "expected", "published"])
    for rv in t.row_values:
        for cv in t.col_values:
            for m in METRICS:
                s = t.stat(rv, cv, m)
                pub = t.published_for(rv, cv) if m == "top1" else None
                w.writerow([*rv, *cv, t.which, m, _num(s.mean), _num(s.std), s.done, s.expected, _num(pub)])
    return out.getvalue()


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


def plot(rows: list[dict], t: Table, path: Path) -> None:
    """Top-1 against the imbalance factor (log scale), one line per row (loss), one panel per dataset."""
    from matplotlib.figure import Figure
    done = [r for r in rows if r["result"]]
    datasets = sorted(_unique(value(r, "data.dataset") for r in rows), key=str)
    fig = Figure(figsize=(5 * len(datasets), 4), dpi=110)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    others = [k for k in t.col_keys if k not in ("data.dataset", "data.imbalance_factor")]
    for ax, dataset in zip(axes, datasets):
        lines = {}
        for r in done:
            if value(r, "data.dataset") != dataset:
                continue
            name = ", ".join([t.row_label(tuple(value(r, k) for k in t.row_keys)),
                              *(label(k, value(r, k)) for k in others)])
            x = float(value(r, "data.imbalance_factor"))
            lines.setdefault(name, {}).setdefault(x, []).append(r["result"][t.which]["top1"])
        colours = {}
        for name, points in sorted(lines.items()):
            xs = sorted(points)
            means = [statistics.fmean(points[x]) for x in xs]
            stds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            bars = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
            colours[name] = bars.lines[0].get_color()
        published = _published_points(t, dataset, others)
        for name, points in sorted(published.items()):
            ax.scatter(*zip(*points), marker="x", s=60, color=colours.get(name, "black"), label=f"{name} (published)")
        ax.set_xscale("log")
        ticks = sorted({x for points in lines.values() for x in points}
                       | {x for points in published.values() for x, _ in points})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.set_xlabel("imbalance factor")
        ax.set_ylabel(f"top-1 (%), {t.which} epoch")
        ax.set_title(label("data.dataset", dataset))
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _published_points(t: Table, dataset, others: list) -> dict:
    """{line name: [(imbalance factor, published top-1)]} for one dataset's panel."""
    points = {}
    for rv in t.row_values:
        for cv in t.col_values:
            number, runs = t.published_for(rv, cv), t.cells.get((_key(rv), _key(cv)))
            if number is None or not runs or value(runs[0], "data.dataset") != dataset:
                continue
            name = ", ".join([t.row_label(rv), *(label(k, value(runs[0], k)) for k in others)])
            points.setdefault(name, []).append((float(value(runs[0], "data.imbalance_factor")), number))
    return points


# ---------------------------------------------------------------------------------------
# the command

def write_missing_hparams(rows: list[dict]) -> int:
    """Give every finished run without an HParams session one (e.g. runs made by older code)."""
    from harness import tblog
    written = 0
    for r in rows:
        if r["result"] and r["run_dir"] and not tblog.has_hparams(r["run_dir"]):
            written += tblog.write_hparams(r["run_dir"]) is not None
    return written


def report(runs: str | Path, rows_axes: str = "loss", cols_axes: str = "dataset,imbalance_factor",
           best: bool = False, compare: str | None = None, grid: str | None = None,
           out: str | Path | None = None) -> tuple[str, dict]:
    """Build the report of a grid's run folder; returns the Markdown and the files written."""
    from harness.data import atomic_write_text
    runs = Path(runs)
    rows = collect(runs)
    if grid:
        from harness.config import load_grid
        rows = grid_rows(rows, load_grid(grid))
    elif not rows:
        raise ConfigError(f"{runs}: no run folders (with cell.json) here; pass a grid's folder, runs/<grid>")
    else:
        rows = complete(rows)
    for group in duplicates(rows):
        print(f"warning: {len(group)} runs share the axes of {group[0]['signature']} "
              f"({', '.join(r['signature'] for r in group)}), perhaps from an older grid; "
              f"pass --grid FILE to report only the grid's cells", file=sys.stderr)
    table = build_table(rows, rows_axes.split(","), cols_axes.split(","), "best" if best else "final",
                        in_order=bool(grid))
    if compare:
        table.published, table.source = load_published(compare)
        for entry in unmatched(table):
            print(f"warning: {compare}: '{entry}' matches no row / column of this report", file=sys.stderr)
    name = next((read_json(r["run_dir"] / CELL).get("grid") for r in rows if r["run_dir"]), None) or runs.name
    text = markdown(table, rows, f"{name}: {WHICH[table.which].split(' (')[0]}")
    out = Path(out) if out else runs
    out.mkdir(parents=True, exist_ok=True)
    stem = "report_best" if best else "report"
    files = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    atomic_write_text(files["md"], text)
    atomic_write_text(files["csv"], csv_text(table))
    plot(rows, table, files["png"])
    files["hparams_written"] = write_missing_hparams(rows)
    return text, files


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tools/report.py", description="Paper tables from a grid's finished runs.")
    p.add_argument("runs", help="a grid's run folder, e.g. runs/demo")
    p.add_argument("--rows", default="loss", help="axis (or axes, comma-separated) of the rows (default: loss)")
    p.add_argument("--cols", default="dataset,imbalance_factor",
                   help="axes of the columns, comma-separated (default: dataset,imbalance_factor)")
    p.add_argument("--best", action="store_true", help="best-epoch accuracy instead of the final epoch's")
    p.add_argument("--compare", help="YAML or CSV of published top-1 numbers to put beside ours")
    p.add_argument("--grid", help="grid file: report exactly its cells (missing ones marked, others left out)")
    p.add_argument("--out", help="folder for report.md/.csv/.png (default: the run folder)")
    args = p.parse_args(argv)
    try:
        text, files = report(args.runs, args.rows, args.cols, args.best, args.compare, args.grid, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {files['md']}, {files['csv']}, {files['png']}")
    if files["hparams_written"]:
        print(f"wrote HParams entries for {files['hparams_written']} run(s) (tensorboard --logdir {args.runs})")
    return 0
