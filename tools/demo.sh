#!/usr/bin/env bash
# Set up (once) and run the demo sweep: 2 losses x 2 imbalance factors on generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python tools/sweep.py jobs/demo.yaml --cluster local "$@"
