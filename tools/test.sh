#!/usr/bin/env bash
# Set up (once), lint, and run the whole test suite; the SLURM tests start a one-node cluster (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check .  # the linter first: ruff.toml
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"  # two workers: tests/conftest.py
