"""A run folder, runs/<grid>/<signature>/, and every file in it: the one owner of their names.

    config.yaml    the resolved RunConfig                  (written once, before the run)
    cell.json      grid name, axes, signature              (written before submission)
    state.json     new | submitted | running | interrupted | cancelled | failed | finished,
                   with job id, backend, host, pid, requeue count, last error
                   (--status also shows 'lost': gone from the queue with no result)
    progress.json  epochs done, top-1 so far               (after every epoch)
    ckpt/last.pt   the last checkpoint                     (every epoch, and on a stop)
    ckpt/prev.pt   the one before it                       (kept by every save; see save_checkpoint)
    ckpt/best.pt   the model weights of the best epoch on the validation split, its epoch and
                   val top-1 (data.val split or val only: a second stage with stage.from_epoch best)
    tb/            TensorBoard events; tb/hparams/ the run's HParams session
    result.json    the finished result                     (its presence means finished)
    ldmlr/         stage.kind ldmlr: the first stage's features, the feature generator's
                   checkpoint and loss curve, the generated features

No database: a sweep decides what to do with a cell by reading these files. Every write is
atomic (harness.files). This module does not import torch; reading and writing the
checkpoint imports it when called. Checkpoints are read with torch.load(weights_only=True):
tensors and plain containers only, so a tampered file cannot run code; a file that is not a
whole checkpoint is a CheckpointError (one line naming it), and `recover_checkpoint` sets it
aside for --retry-failed.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
import warnings
from pathlib import Path

import yaml

from harness.config import RunConfig, from_dict, to_dict
from harness.files import atomic_path, atomic_write_json, atomic_write_text, read_json
from harness.registry import ConfigError


class RunDir:
    """One run's folder. `RunDir(path)`; its name is the run's signature."""

    CONFIG, CELL, STATE, PROGRESS, RESULT = "config.yaml", "cell.json", "state.json", "progress.json", "result.json"
    CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_CHECKPOINT = "ckpt/last.pt", "ckpt/prev.pt", "ckpt/best.pt"
    TENSORBOARD, HPARAMS = "tb", "tb/hparams"
    FEATURES, GENERATOR, GENERATOR_LOSS, GENERATED = (
        "ldmlr/features.pt", "ldmlr/generator.pt", "ldmlr/generator_loss.json", "ldmlr/generated.pt")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / self.PREVIOUS_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.path / self.BEST_CHECKPOINT

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def hparams(self) -> Path:
        return self.path / self.HPARAMS

    # -- config and cell ------------------------------------------------------------------
    def write_config(self, cfg: RunConfig) -> None:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 4x faster on 512-cell sweeps
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file(self.CONFIG), yaml.dump(to_dict(cfg), Dumper=dumper, sort_keys=False))

    def write_cell(self, grid_name: str, cell) -> None:
        """Before submission: the cell's config and where it comes from in its grid."""
        self.write_config(cell.config)
        atomic_write_json(self.file(self.CELL), {"grid": grid_name, "signature": cell.signature, "axes": cell.axes})

    def has_config(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def read_config(self) -> RunConfig:
        path = self.file(self.CONFIG)
        if not path.is_file():
            raise ConfigError(f"{path}: missing; this is not a run folder (run the sweep that made it again)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
        return from_dict(RunConfig, raw, f"{path}: ")

    def read_cell(self) -> dict:
        return read_json(self.file(self.CELL))

    def has_cell(self) -> bool:
        return self.file(self.CELL).is_file()

    # -- state -----------------------------------------------------------------------------
    def read_state(self) -> dict:
        """The recorded state; 'finished' exactly when a result exists, 'new' when nothing does."""
        state = read_json(self.file(self.STATE)) or {"state": "new"}
        if self.file(self.RESULT).is_file():
            state["state"] = "finished"
        elif state.get("state") == "finished":  # its result.json was lost: evaluate the checkpoint again
            state.update(state="interrupted", error=f"{self.RESULT} is missing")
        return state

    def update_state(self, **fields) -> dict:
        state = read_json(self.file(self.STATE))
        state.update(fields, updated=time.time())
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file(self.STATE), state)
        return state

    def mark_running(self, job_id: str | None) -> None:
        self.update_state(state="running", job_id=job_id, host=socket.gethostname(), pid=os.getpid(),
                          pid_start=process_start(os.getpid()))

    # -- progress and result ---------------------------------------------------------------
    def read_progress(self) -> dict:
        return read_json(self.file(self.PROGRESS))

    def write_progress(self, progress: dict) -> None:
        atomic_write_json(self.file(self.PROGRESS), progress, indent=None)

    def read_result(self) -> dict:
        """The result, or {} before the run has finished."""
        return read_json(self.file(self.RESULT))

    def write_result(self, result: dict) -> None:
        atomic_write_json(self.file(self.RESULT), result, indent=2)

    # -- checkpoint (imports torch) --------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def save_checkpoint(self, state: dict) -> None:
        """Write ckpt/last.pt and keep the one it replaces as ckpt/prev.pt. The order makes every
        moment safe to be killed in: the new file is written aside, the old last.pt is hard-linked
        to prev.pt (atomically), then the new file is renamed to last.pt, so last.pt is always a
        whole checkpoint and prev.pt the one before it."""
        import torch
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)
            if self.checkpoint.is_file():
                with atomic_path(self.previous_checkpoint) as keep:
                    keep.unlink(missing_ok=True)
                    try:
                        os.link(self.checkpoint, keep)
                    except OSError:  # a file system without hard links
                        shutil.copyfile(self.checkpoint, keep)

    def save_best_checkpoint(self, state: dict) -> None:
        """Write ckpt/best.pt: {"model": weights, "epoch": e, "val_top1": v} of a new best epoch."""
        import torch
        with atomic_path(self.best_checkpoint) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, map_location="cpu", path: str | Path | None = None) -> dict:
        """The last checkpoint (or the one at `path`), loaded without running any code from the
        file (weights_only). A file that is not a whole checkpoint of this harness (truncated,
        foreign, tampered) raises CheckpointError; a missing one FileNotFoundError."""
        path = Path(path or self.checkpoint)
        state = load_torch_file(path, map_location)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(path, f"it holds a {type(state).__name__} without model weights")
        return state

    def recover_checkpoint(self) -> str:
        """After a CheckpointError, for --retry-failed: rename ckpt/last.pt to
        ckpt/last.pt.bad-<time> and fall back to ckpt/prev.pt if that one loads (else set it aside
        too, and the run restarts from scratch). Returns one line saying what was done."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = []
        if self.checkpoint.is_file():
            os.replace(self.checkpoint, bad := self.checkpoint.with_name(f"last.pt.bad-{stamp}"))
            aside.append(bad.name)
        if self.previous_checkpoint.is_file():
            try:
                epoch = self.load_checkpoint(path=self.previous_checkpoint).get("epoch")
            except CheckpointError:
                os.replace(self.previous_checkpoint, bad := self.previous_checkpoint.with_name(f"prev.pt.bad-{stamp}"))
                aside.append(bad.name)
            else:
                os.replace(self.previous_checkpoint, self.checkpoint)
                return f"set aside {', '.join(aside)}; resuming from ckpt/prev.pt (epoch {epoch})"
        self.file(self.PROGRESS).unlink(missing_ok=True)
        return f"set aside {', '.join(aside) or 'nothing'}; no good checkpoint left, restarting from scratch"

    def remove_stale_temporaries(self) -> None:
        """Remove the temporary files a killed writer of this run left: in ckpt/ and tb/ all of
        them (only the run's own job writes there, and it calls this at its start), elsewhere in
        the folder those older than STALE_S (the sweep may be writing state.json right now)."""
        for tmp in list(self.path.glob("**/.*.tmp")):
            mine = tmp.parent in (self.checkpoint.parent, self.tensorboard)
            try:
                if mine or time.time() - tmp.stat().st_mtime > STALE_S:
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            except FileNotFoundError:
                pass

    # -- a stage's own files: FEATURES, GENERATOR, GENERATED (torch), GENERATOR_LOSS (JSON) --------
    def save_tensors(self, name: str, state: dict) -> None:
        import torch
        with atomic_path(self.file(name)) as tmp:
            torch.save(state, tmp)

    def load_tensors(self, name: str, map_location="cpu") -> dict | None:
        """The torch file `name` (weights_only), or None when there is none."""
        path = self.file(name)
        return load_torch_file(path, map_location) if path.is_file() else None

    def write_json(self, name: str, data) -> None:
        atomic_write_json(self.file(name), data, indent=None)


STALE_S = 60
"""A temporary file this old is a killed writer's: a write takes milliseconds."""


def load_torch_file(path: Path, map_location="cpu"):
    """torch.load(weights_only=True): tensors and plain containers, no code run from the file.
    CheckpointError (one line naming the file) when it is not such a file; FileNotFoundError."""
    import torch
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises many kinds on a bad file
        raise CheckpointError(path, unreadable_checkpoint(e)) from None


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be used; `path` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a checkpoint of this harness ({reason})")
        self.path = Path(path)


def unreadable_checkpoint(error: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words."""
    text = str(error)
    code = re.search(r"GLOBAL (\S+)", text)
    if code:
        return f"it would run {code.group(1)} when loaded; refused"
    if isinstance(error, EOFError) or "central directory" in text:
        return "truncated or empty"
    if "Weights only load failed" in text:
        return "it is a pickle of something other than tensors; refused"
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"not a torch checkpoint: {type(error).__name__}" + (f" {first}" if first else "")


# ---------------------------------------------------------------------------------------
# is the process recorded in state.json still alive?

def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, and None for a process that is gone or
    a zombie (a killed child whose parent never reaped it, common under container init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and brackets
    return None if fields[0] in "ZX" else fields[19]


def local_process_alive(state: dict) -> bool:
    """For a cell run on this host: is its recorded process still alive? The start time recorded
    with the pid tells a reused pid from the original process."""
    if state.get("host") != socket.gethostname() or not state.get("pid"):
        return False
    pid = int(state["pid"])
    if pid == os.getpid():  # a cell this process ran (debug backend) and no longer runs: it is asking
        return False
    if Path("/proc/self/stat").exists():
        started = process_start(pid)
        return started is not None and state.get("pid_start") in (None, started)
    try:
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False
