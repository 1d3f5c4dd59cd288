"""Paper tables from a grid's runs: python tools/report.py runs/<grid> [--best] [--compare FILE] [--rows AXIS]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
