"""Run a grid, watch it, stop it:

    python tools/sweep.py jobs/demo.yaml [--cluster local|debug|slurm] [key=value ...]
    python tools/sweep.py jobs/demo.yaml --dry-run        # what would run; the sbatch scripts
    python tools/sweep.py jobs/demo.yaml --status         # state, epoch, top-1, job id, requeues
    python tools/sweep.py jobs/demo.yaml --cancel         # this grid's SLURM jobs, nothing else
    python tools/sweep.py jobs/demo.yaml --retry-failed   # run failed cells again
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
