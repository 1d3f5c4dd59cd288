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

import sys
from pathlib import Path

from harness.files import atomic_write_text
from harness.registry import ConfigError
from harness.report.render import WHICH, csv_text, markdown, plot
from harness.report.runs import collect, complete, duplicates, grid_rows, runs_table
from harness.report.table import build_table, load_published, unmatched
from harness.rundir import RunDir

__all__ = ["build_table", "collect", "complete", "load_published", "report", "runs_table"]


def write_missing_hparams(rows: list[dict]) -> int:
    """Give every finished run without an HParams session one (e.g. runs made by older code)."""
    from harness.run import tensorboard
    written = 0
    for r in rows:
        if r["result"] and r["run_dir"] and not tensorboard.has_hparams(r["run_dir"]):
            written += tensorboard.write_hparams(r["run_dir"]) is not None
    return written


def report(runs: str | Path, rows_axes: str = "loss", cols_axes: str = "dataset,imbalance_factor",
           best: bool = False, compare: str | None = None, grid: str | None = None,
           out: str | Path | None = None) -> tuple[str, dict]:
    """Build the report of a grid's run folder; returns the Markdown and the files written."""
    runs = Path(runs)
    rows = collect(runs)
    if grid:
        from harness.grid import load_grid
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
    name = next((RunDir(r["run_dir"]).read_cell().get("grid") for r in rows if r["run_dir"]), None) or runs.name
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
