"""python tools/report.py runs/<grid> [--best] [--compare FILE] [--rows AXIS] [--cols AXES] [--grid FILE]"""
from __future__ import annotations

import argparse
import sys

from harness.cli import fail
from harness.registry import ConfigError
from harness.report import report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/report.py", description="Paper tables from a grid's finished runs.")
    p.add_argument("runs", help="a grid's run folder, e.g. runs/demo")
    p.add_argument("--rows", default="loss", help="axis (or axes, comma-separated) of the rows (default: loss)")
    p.add_argument("--cols", default="dataset,imbalance_factor",
                   help="axes of the columns, comma-separated (default: dataset,imbalance_factor)")
    p.add_argument("--best", action="store_true", help="best-epoch accuracy instead of the final epoch's")
    p.add_argument("--compare", help="YAML or CSV of published top-1 numbers to put beside ours")
    p.add_argument("--grid", help="grid file: report exactly its cells (missing ones marked, others left out)")
    p.add_argument("--out", help="folder for report.md/.csv/.png (default: the run folder)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        text, files = report(args.runs, args.rows, args.cols, args.best, args.compare, args.grid, args.out)
    except ConfigError as e:
        return fail(str(e))
    print(text)
    print(f"wrote {files['md']}, {files['csv']}, {files['png']}")
    if files["hparams_written"]:
        print(f"wrote HParams entries for {files['hparams_written']} run(s) (tensorboard --logdir {args.runs})")
    return 0
