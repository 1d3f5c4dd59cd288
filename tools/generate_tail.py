"""Fill the tail classes with Stable Diffusion images:
python tools/generate_tail.py jobs/generate.yaml [--cluster slurm|local|debug] [--dry-run] [--model PATH] [k=v ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cli.generate_tail import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
