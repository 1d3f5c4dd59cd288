#!/usr/bin/env bash
# Set up (once) and run the whole test suite; the SLURM tests start a one-node cluster (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest -q "$@"
