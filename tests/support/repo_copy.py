"""A copy of the repository's code that a test may edit (the checkout itself is never touched):
for showing that queued jobs run their submission's code snapshot."""
import shutil
import subprocess
import sys
from pathlib import Path

from support import ROOT

MARKER = "EDITED-AFTER-SUBMISSION"
"""What jobs of the edited copy print."""


def repo_copy(folder: Path) -> Path:
    """The parts of the repository a sweep needs, copied to `folder`."""
    for part in ("harness", "tools", "datasets", "slurm"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nb?"))
    return folder


def edit(repo: Path) -> None:
    """Change the copy's code: every job that imports it prints MARKER."""
    job = repo / "harness" / "sweep" / "job.py"
    job.write_text(job.read_text() + f"\nprint({MARKER!r}, flush=True)\n")


def run_copy(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """The copy's tools/sweep.py (it puts the copy first on sys.path), run from the copy: without a
    snapshot, jobs started from there would import the copy's harness, edits and all."""
    return subprocess.run([sys.executable, str(repo / "tools" / "sweep.py"), *args], capture_output=True,
                          text=True, cwd=repo, timeout=600)
