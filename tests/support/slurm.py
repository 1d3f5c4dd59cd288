"""The real one-node SLURM cluster on localhost, for tests (import with `from fixtures_slurm import *`).

`slurm_cluster` runs `slurm/local-cluster/up` once per session. If `up` fails (not root,
packages missing) the fixture fails with the script's message: tests that need SLURM never
skip silently. At the end of the session `down` runs only if this session started the
cluster, no jobs are left in the queue (another pytest may be using it) and LT_SLURM_KEEP
is not set.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "slurm_cluster"]

CLUSTER_SCRIPTS = Path(__file__).resolve().parents[2] / "slurm" / "local-cluster"


@dataclass(frozen=True)
class SlurmCluster:
    partition: str
    """The partition to submit to."""
    state_dir: Path
    """Where the cluster keeps its config, state and daemon logs (log/slurmctld.log, ...)."""
    started: bool
    """True if this session started the cluster (and will stop it), False if it was already up."""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    up = subprocess.run([str(CLUSTER_SCRIPTS / "up")], capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        pytest.fail(f"slurm/local-cluster/up failed: {(up.stderr or up.stdout).strip()}", pytrace=False)
    last_line = up.stdout.strip().splitlines()[-1]
    cluster = SlurmCluster(partition="debug",
                           state_dir=Path(os.environ.get("LT_SLURM_DIR", "/tmp/lt-slurm")),
                           started=last_line.startswith("lt-slurm: started"))
    yield cluster
    if cluster.started and not os.environ.get("LT_SLURM_KEEP"):
        queue = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30)
        if queue.returncode == 0 and not queue.stdout.strip():
            subprocess.run([str(CLUSTER_SCRIPTS / "down")], capture_output=True, timeout=60)
