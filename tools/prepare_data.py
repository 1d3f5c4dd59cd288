"""Convert a dataset to FFCV files once, look at its long-tailed counts, preview augmentations:

    python tools/prepare_data.py datasets/cifar10.yaml --root ~/downloads          # -> data/cifar10/*.beton
    python tools/prepare_data.py datasets/cifar10.yaml --root DIR --imbalance exp:100 --dry-run
    python tools/prepare_data.py datasets/cifar10.yaml --root DIR --preview standard+randaugment
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli.prepare_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
