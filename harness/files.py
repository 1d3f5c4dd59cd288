"""Files the harness writes and reads back.

Every write goes to a temporary name in the same folder and is then renamed into place
(`os.replace` is atomic on one file system), so a process killed half-way never leaves a
half-written file under the real name: a reader sees the old file or the new one. Temporary
names start with a dot and end in `.<pid>.tmp`, so two processes never share one.

Names that become folders (a grid's, a generator job's) pass `check_name`, so a path built from
one stays inside its root. `code_info` says which code snapshot this process runs
(harness.sweep.snapshot writes them).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.registry import ConfigError


def temp_path(path: str | Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed.

        with atomic_path(run_dir / "ckpt/last.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path) -> dict:
    """The JSON object in `path`, or {} when it is missing or not JSON (never half-written: see above)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (created if missing): ranks and array tasks that build the
    same file wait for one another. With `wait` False it yields False at once, holding nothing,
    when another process holds the lock; else True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# names that become folders

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
"""A grid's or a job's name: ASCII letters, digits and . _ + -, not starting with a dot, at
most 100 characters. It names a folder under --runs (or data.root), the SLURM job name and a
line in a shell script, so `..`, slashes, spaces, NUL and other characters are refused."""


def check_name(name: str, what: str) -> str:
    """`name` when it is a safe folder name (see NAME), else ConfigError saying what to write."""
    if isinstance(name, str) and NAME.fullmatch(name):
        return name
    suggestion = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._") or "my_grid"
    raise ConfigError(f"{what} {name!r} cannot be a folder name: use letters, digits and . _ + - "
                      f"(not starting with a dot), e.g. '{suggestion[:100]}'")


# ---------------------------------------------------------------------------------------
# which code this process runs

CODE_INFO = "SNAPSHOT.json"
"""Written next to the `harness` package of a code snapshot (runs/.code/<hash>/)."""


def code_info() -> dict:
    """{hash, git_commit, ...} when this `harness` was imported from a sweep's code snapshot,
    {} when it runs from a working tree."""
    return read_json(Path(__file__).resolve().parents[1] / CODE_INFO)
