"""Code snapshots: a submission's jobs run the code as it was when it was submitted.

    snap = take(runs_root)        # runs/.code/<hash>/: once per content, read-only
    planned(runs_root)            # where `take` would put it now, without writing (--dry-run)
    with snap.active():           # jobs started meanwhile (local processes, sbatch) import from it
        ...
    snap.setup_lines()            # the same for a SLURM job script (exported PYTHONPATH)
    working_tree_hash()           # the hash a snapshot of the working tree would get now

A snapshot is a copy of the `harness` package (every file but bytecode caches) and of the
dataset cards it reads (datasets/*.yaml, found next to the package), plus SNAPSHOT.json: its
hash, the git commit of the working tree and whether tracked files differed from it, when and
from where it was taken. Its folder is named by the hash of its content, so sweeps of the same
code share one, and it is written aside and renamed into place, so it is whole or absent.

Jobs import harness from it: submitit starts them as `python -m submitit.core._submit`, with
PYTHONPATH=<snapshot> first and PYTHONSAFEPATH=1 (the job's working directory, perhaps the
checkout, is then not on sys.path). A requeued SLURM job runs the same script, so the same
snapshot; a cell that the sweep resumes later is a new submission and runs the code of then.
harness.files.code_info tells a job which snapshot it runs; result.json records it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.files import CODE_INFO
from harness.topology import environment

PACKAGE = Path(__file__).resolve().parents[1]
"""The harness package this process runs: what a snapshot copies."""
SOURCE = PACKAGE.parent
SNAPSHOTS = ".code"
"""runs/.code/<hash>/: the snapshots, next to the grids' folders."""


@dataclass(frozen=True)
class Snapshot:
    hash: str
    path: Path

    def environment(self) -> dict[str, str]:
        """The variables that make a job's Python import harness from this snapshot."""
        inherited = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([str(self.path)] + ([inherited] if inherited else [])),
                "PYTHONSAFEPATH": "1"}

    def active(self):
        """The environment of this process set for the jobs it starts meanwhile (they inherit it)."""
        return environment(self.environment())

    def setup_lines(self) -> list[str]:
        """Job-script lines with the same effect, for SLURM (visible in --dry-run's sbatch scripts)."""
        return [f"export PYTHONPATH={shlex.quote(str(self.path))}${{PYTHONPATH:+:$PYTHONPATH}}",
                "export PYTHONSAFEPATH=1"]


def source_files() -> list[tuple[str, Path]]:
    """(name in the snapshot, file) for everything a job needs: the package and the cards."""
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and not p.name.endswith((".pyc", ".nbi", ".nbc")) and not p.name.startswith(".")]
    files += sorted((SOURCE / "datasets").glob("*.yaml"))
    return sorted((p.relative_to(SOURCE).as_posix(), p) for p in files)


def content_hash(files: list[tuple[str, Path]]) -> str:
    """sha256 over the names and bytes of the files, 12 hex digits."""
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def working_tree_hash() -> str:
    """The hash a snapshot taken now would get (reads the files, copies nothing)."""
    return content_hash(source_files())


def snapshot_dir(runs_root: str | Path, digest: str) -> Path:
    return Path(runs_root).resolve() / SNAPSHOTS / digest


def planned(runs_root: str | Path) -> Snapshot:
    """The snapshot `take` would use now, without writing it (for --dry-run)."""
    digest = working_tree_hash()
    return Snapshot(digest, snapshot_dir(runs_root, digest))


def take(runs_root: str | Path) -> Snapshot:
    """The snapshot of the code this process runs, under runs_root/.code/ (copied once per content)."""
    files = source_files()
    digest = content_hash(files)
    folder = snapshot_dir(runs_root, digest)
    if (folder / CODE_INFO).is_file():
        return Snapshot(digest, folder)
    tmp = folder.with_name(f".{digest}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, path in files:
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o444)  # read-only: the code a submission ran is not edited by accident
    (tmp / CODE_INFO).write_text(json.dumps({"hash": digest, **git_state(), "source": str(SOURCE),
                                             "taken": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    try:
        os.rename(tmp, folder)
    except OSError:  # another sweep put the same snapshot there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / CODE_INFO).is_file():
            raise
    return Snapshot(digest, folder)


def git_state() -> dict:
    """The working tree's git commit ('-dirty' when tracked files differ from it), if it is a checkout."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"git_commit": (commit + ("-dirty" if dirty else "")) or None}
