"""Command-line entry points: every argparse lives here; tools/*.py and the console scripts
(lt-sweep, lt-report, lt-prepare-data, lt-generate-tail) only call `main(argv)` of these modules.

    sweep          tools/sweep.py          run, watch, stop a grid
    report         tools/report.py         paper tables from a grid's runs
    prepare_data   tools/prepare_data.py   a dataset -> .beton once; counts; previews
    generate_tail  tools/generate_tail.py  Stable Diffusion images for the tail classes
"""
from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
