#!/usr/bin/env bash
# One-time set-up on Debian 12 with Python 3.11; safe to run again (it only adds what is missing).
#   Debian packages: FFCV's build deps, a one-node SLURM for the tests, git.
#   .venv with this package and its pinned torch/torchvision pair.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev build-essential python3-venv
              slurmctld slurmd slurm-client munge git make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

STAMP=.venv/.installed
if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.py ] && [ "$STAMP" -nt tools/setup.sh ]; then
  exit 0  # the environment is up to date
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# ffcv's setup.py imports numpy and pkgconfig: install them before building it
.venv/bin/python -m pip install -q numpy pkgconfig Cython
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, torchvision, ffcv, submitit; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
touch "$STAMP"
