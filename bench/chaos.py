"""Chaos: kill a sweep's cells with SIGKILL at random moments, run the sweep again until it ends,
and check that nothing was lost, duplicated or changed.

Local: a sweep of short CPU cells (ResNet-8 on a tiny generated dataset, fp32, one thread per
cell so results repeat exactly) runs as local processes while a helper thread SIGKILLs cell
processes, at random moments or right as one starts writing a checkpoint (it watches the
checkpoint folders with inotify for the temporary file `.last.pt.<pid>.tmp`, or
`.prev.pt.<pid>.tmp`, and kills that pid). The sweep is run again until every cell has finished.
SLURM (--slurm, the one-node test cluster): the same grid as an array job, `scancel
--signal=KILL` on running array tasks, then the sweep again until it ends.

Each cell is then compared with an uninterrupted local run of the same cell: result.json
(metrics, per-class accuracy, history without timings), the final checkpoint's weights
(bit for bit), TensorBoard (read back with tensorboard's EventAccumulator: every tag's steps
unique and the same as the reference's, its metric values equal; one HParams session), and no
temporary file left behind. Writes bench/results/chaos.json (kills, re-runs, cells,
mismatches: must be 0). tests/sweep/test_chaos.py runs a smaller version.

    python bench/chaos.py [--cells 6] [--epochs 3] [--kills 10] [--slurm] [--out bench/results/chaos.json]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.rundir import RunDir, process_start  # noqa: E402

SWEEP = ROOT / "tools" / "sweep.py"
VOLATILE = ("images_per_s", "time_s")
"""History fields that measure time, not the run: left out of the comparison."""
CHECKPOINT_TEMP = re.compile(r"\.(last|prev)\.pt\.(\d+)\.tmp")


# ---------------------------------------------------------------------------------------
# the grid

def write_grid(work: Path, name: str, cells: int, epochs: int, cluster: str) -> Path:
    """A grid of `cells` short cells (losses x seeds) on a tiny generated dataset under `work`."""
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    card.update(name="chaos_tiny")
    card["source"].update(train_per_class=60, test_per_class=20)
    (work / "chaos_tiny.yaml").write_text(yaml.safe_dump(card))
    losses = ["ce", "balanced_softmax", "focal"][:max(1, min(3, cells))]
    seeds = list(range(-(-cells // len(losses))))  # above 3, cells are rounded up to a multiple of 3
    grid = {
        "name": name,
        "base": {"data": {"dataset": str(work / "chaos_tiny.yaml"), "root": str(work / "data"), "loader": "memory",
                          "imbalance_factor": 10},
                 "model": {"name": "resnet8"}, "optim": {"batch_size": 32, "lr": 0.05},
                 "schedule": {"epochs": epochs, "warmup_epochs": 0, "decay": "cosine"},
                 "dist": {"precision": "fp32"}, "log": {"print_every": 0}},
        "grid": {"loss.name": losses, "seed": seeds},
        "launch": {"cluster": cluster, "parallel": max(1, os.cpu_count() or 1), "profile": "local"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def sweep(grid: Path, runs: Path, log: Path, *args: str, env: dict | None = None) -> int:
    """tools/sweep.py, its output appended to `log`; returns its exit status."""
    with open(log, "a") as out:
        return subprocess.run([sys.executable, str(SWEEP), str(grid), "--runs", str(runs), *args],
                              stdout=out, stderr=subprocess.STDOUT, cwd=grid.parent, timeout=1800,
                              env={**os.environ, **(env or {})}).returncode


def cell_dirs(runs: Path, name: str) -> list[Path]:
    return sorted(p for p in (runs / name).glob("[0-9a-f]" * 10) if p.is_dir())


def all_finished(runs: Path, name: str, count: int) -> bool:
    done = [d for d in cell_dirs(runs, name) if (d / RunDir.RESULT).is_file()]
    return len(done) == count


# ---------------------------------------------------------------------------------------
# killing

class Inotify:
    """IN_CREATE events of some folders (Linux inotify through libc)."""
    IN_CREATE = 0x100
    HEADER = struct.Struct("iIII")

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.folders: dict[int, Path] = {}  # watch descriptor -> folder

    def watch(self, folder: Path) -> None:
        if folder not in self.folders.values() and folder.is_dir():
            wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_CREATE)
            if wd >= 0:
                self.folders[wd] = folder

    def created(self, timeout: float) -> list[tuple[Path, str]]:
        """(folder, name) of what was created since the last call, waiting up to `timeout` s for one."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        found, i = [], 0
        while i < len(data):
            wd, _, _, size = self.HEADER.unpack_from(data, i)
            name = data[i + self.HEADER.size:i + self.HEADER.size + size].rstrip(b"\0").decode()
            found.append((self.folders.get(wd), name))
            i += self.HEADER.size + size
        return found

    def close(self) -> None:
        os.close(self.fd)


class Killer(threading.Thread):
    """SIGKILLs `target` cell processes of a local sweep: at random moments, or as one begins to
    write a checkpoint. Only processes this sweep started: the pid a cell recorded in state.json
    (checked against its recorded start time), or the pid in a temporary checkpoint's name."""

    def __init__(self, grid_dir: Path, target: int, seed: int = 0, checkpoint_share: float = 0.5):
        super().__init__(daemon=True)
        self.grid_dir, self.target, self.rng = grid_dir, target, random.Random(seed)
        self.checkpoint_share = checkpoint_share
        self.kills: list[dict] = []
        self.stopping = threading.Event()

    @property
    def done(self) -> bool:
        return len(self.kills) >= self.target

    def run(self) -> None:
        inotify = Inotify()
        try:
            while not self.done and not self.stopping.is_set():
                if self.rng.random() < self.checkpoint_share:
                    self.kill_on_checkpoint(inotify)
                else:
                    self.kill_at_random(inotify)
        finally:
            inotify.close()

    def running(self) -> list[tuple[Path, int]]:
        """(run folder, pid) of the cells whose recorded process is alive now."""
        found = []
        for state_file in self.grid_dir.glob("*/state.json"):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            pid = state.get("pid")
            if state.get("state") == "running" and pid and process_start(pid) == state.get("pid_start"):
                found.append((state_file.parent, int(pid)))
        return found

    def kill_at_random(self, inotify: Inotify) -> None:
        """Once a cell runs, wait a random moment and kill a cell still running (or, if one starts
        writing a checkpoint first, that one). Waiting for a running cell rather than a fixed pause,
        and never letting a checkpoint write pass, keep the supply of kills: a killed cell has work
        to redo, so the sweep cannot end while the killer is still short of its target."""
        while not self.stopping.is_set() and not self.running():
            self.stopping.wait(0.05)
        if not self.kill_on_checkpoint(inotify, timeout=self.rng.uniform(0.0, 0.5)):
            running = self.running()
            if running:
                run_dir, pid = self.rng.choice(running)
                self.kill(pid, run_dir, "random moment")

    def kill_on_checkpoint(self, inotify: Inotify, timeout: float = float("inf")) -> bool:
        """Kill the next cell that starts writing a checkpoint within `timeout` s. Every epoch ends
        with a write and a kill makes its cell redo an epoch, so without a timeout one always comes."""
        deadline = time.monotonic() + timeout
        inotify.created(0)  # drop what was created before: those writes are over
        while not self.stopping.is_set() and time.monotonic() < deadline:
            for run_dir in self.grid_dir.glob("[0-9a-f]*"):
                inotify.watch(run_dir / "ckpt")
            for folder, name in inotify.created(min(0.05, max(0.0, deadline - time.monotonic()))):
                match = CHECKPOINT_TEMP.fullmatch(name)
                if match and folder is not None:
                    self.kill(int(match.group(2)), folder.parent, f"writing a checkpoint ({match.group(1)}.pt)",
                              temp=name)
                    return True
        return False

    def kill(self, pid: int, run_dir: Path | None, moment: str, temp: str | None = None) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(100):  # until it is gone (a zombie until its parent reaps it)
            if process_start(pid) is None:
                break
            time.sleep(0.02)
        during = bool(temp and run_dir and (run_dir / "ckpt" / temp).exists())  # left half-written
        self.kills.append({"cell": run_dir.name if run_dir else None, "pid": pid, "moment": moment,
                           "mid_write": during})


def scancel_while_queued(grid_dir: Path, name: str, target: int, rng: random.Random) -> list[dict]:
    """SLURM: `scancel --signal=KILL` on up to `target` running array tasks of this grid, at random
    moments, while any of its jobs is queued."""
    kills = []
    while len(kills) < target and queued(name):
        time.sleep(rng.uniform(1.0, 5.0))
        out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-t", "RUNNING", "-o", "%i"], capture_output=True,
                             text=True, timeout=30)
        running = set(out.stdout.split())
        running_cells = []
        for state_file in grid_dir.glob("*/state.json"):
            state = json.loads(state_file.read_text())
            if state.get("state") == "running" and state.get("job_id") in running:
                running_cells.append((state_file.parent.name, state["job_id"]))
        if running_cells:
            cell, job = rng.choice(sorted(running_cells))
            subprocess.run(["scancel", "--signal=KILL", job], check=True, timeout=30)
            kills.append({"cell": cell, "job": job, "moment": "scancel --signal=KILL"})
    return kills


def queued(name: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return out.returncode != 0 or bool(out.stdout.strip())


def wait_for_queue(name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while queued(name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"SLURM jobs of {name} still queued after {timeout} s")
        time.sleep(1)


# ---------------------------------------------------------------------------------------
# comparing

def history(result: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in result["history"]]


def tensorboard(folder: Path) -> dict:
    """{tag: [(step, value)]} of the scalars and {tag: [steps]} of the images, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # it warns of each purge it makes: expected here
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"]}
    return {"scalars": scalars, "images": images}


def compare(ref: Path, run: Path) -> dict[str, list[str]]:
    """What differs between a cell's reference run and its chaos run: mismatches (results,
    weights, metrics), lost files, duplicated events or files."""
    import torch
    out = {"mismatches": [], "lost": [], "duplicated": []}
    name = run.name
    a, b = RunDir(ref).read_result(), RunDir(run).read_result()
    if not b:
        out["lost"].append(f"{name}: result.json")
        return out
    for key in ("final", "best", "per_class", "class_counts", "epochs"):
        if a[key] != b[key]:
            out["mismatches"].append(f"{name}: result.json '{key}' {b[key]} != {a[key]}")
    if history(a) != history(b):
        out["mismatches"].append(f"{name}: result.json history differs")
    try:
        wa, wb = RunDir(ref).load_checkpoint()["model"], RunDir(run).load_checkpoint()["model"]
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            out["mismatches"].append(f"{name}: final checkpoint weights differ")
    except (OSError, ValueError) as e:
        out["lost"].append(f"{name}: ckpt/last.pt ({e})")
    ta, tb = tensorboard(ref / "tb"), tensorboard(run / "tb")
    for kind in ("scalars", "images"):
        if set(ta[kind]) != set(tb[kind]):
            out["lost"].append(f"{name}: TensorBoard {kind} tags {sorted(set(ta[kind]) ^ set(tb[kind]))}")
    for tag, events in tb["scalars"].items():
        steps = [s for s, _ in events]
        if len(steps) != len(set(steps)):
            out["duplicated"].append(f"{name}: TensorBoard {tag} steps {steps}")
        elif steps != [s for s, _ in ta["scalars"].get(tag, [])]:
            out["lost"].append(f"{name}: TensorBoard {tag} steps {steps}")
        elif tag.startswith(("test/", "per_class/", "train/loss")) and events != ta["scalars"][tag]:
            out["mismatches"].append(f"{name}: TensorBoard {tag} values differ")
    for tag, steps in tb["images"].items():
        if len(steps) != len(set(steps)):
            out["duplicated"].append(f"{name}: TensorBoard image {tag} steps {steps}")
    sessions = list((run / "tb" / "hparams").glob("events.out.tfevents.*"))
    if len(sessions) != 1:
        (out["lost"] if not sessions else out["duplicated"]).append(f"{name}: {len(sessions)} HParams sessions")
    left = [str(p.relative_to(run)) for p in run.rglob("*.tmp")]
    if left:
        out["duplicated"].append(f"{name}: temporary files left {left}")
    return out


def compare_all(ref_grid: Path, grid: Path) -> dict:
    """compare() for every cell of the reference grid folder and its namesake in `grid`."""
    found = {"mismatches": [], "lost": [], "duplicated": []}
    for ref in cell_dirs(ref_grid.parent, ref_grid.name):
        for key, items in compare(ref, grid / ref.name).items():
            found[key] += items
    return found


# ---------------------------------------------------------------------------------------
# the runs

def reference(work: Path, cells: int, epochs: int) -> tuple[Path, str]:
    """The uninterrupted run of every cell: in one process (debug backend), one thread, as the
    local cells run (launch.parallel = the CPU count gives each one thread)."""
    grid = write_grid(work, "chaos", cells, epochs, "local")
    runs = work / "reference"
    code = sweep(grid, runs, work / "reference.log", "--cluster", "debug", env={"LT_THREADS": "1"})
    if code != 0 or not all_finished(runs, "chaos", len(cell_dirs(runs, "chaos"))):
        raise RuntimeError(f"the reference sweep failed; see {work / 'reference.log'}")
    return runs, "chaos"


def local_chaos(work: Path, cells: int, epochs: int, kills: int, seed: int = 0, max_runs: int = 40) -> dict:
    """Kill local cells `kills` times while the sweep runs; run it again until it ends; compare."""
    t0 = time.time()
    ref_runs, name = reference(work, cells, epochs)
    count = len(cell_dirs(ref_runs, name))
    grid, runs = work / f"{name}.yaml", work / "chaos"
    killer = Killer(runs / name, kills, seed)
    killer.start()
    reruns = -1
    try:
        while reruns < max_runs:
            reruns += 1
            sweep(grid, runs, work / "chaos.log")
            if all_finished(runs, name, count):
                break
    finally:
        killer.stopping.set()
        killer.join(30)
    found = compare_all(ref_runs / name, runs / name)
    return {"cells": count, "epochs": epochs, "kills": len(killer.kills),
            "kills_mid_checkpoint_write": sum(k["mid_write"] for k in killer.kills),
            "kills_at_checkpoint_start": sum(k["moment"].startswith("writing") for k in killer.kills),
            "reruns": reruns, "finished": all_finished(runs, name, count),
            **{key: len(items) for key, items in found.items()}, "details": found, "kill_log": killer.kills,
            "wall_s": round(time.time() - t0, 1)}


def slurm_chaos(work: Path, ref_runs: Path, kills: int, seed: int = 0, max_runs: int = 10) -> dict:
    """The reference's cells as SLURM array tasks: `scancel --signal=KILL` some while they run, run the
    sweep again until it ends, compare."""
    t0, rng = time.time(), random.Random(seed)
    name = f"chaos_slurm_{os.getpid()}"
    count = len(cell_dirs(ref_runs, "chaos"))
    epochs = json.loads(next(ref_runs.glob("chaos/*/result.json")).read_text())["epochs"]
    grid, runs, log = write_grid(work, name, count, epochs, "slurm"), work / "chaos", work / "slurm.log"
    killed, reruns = [], 0
    if sweep(grid, runs, log) != 0:
        raise RuntimeError(f"submitting to SLURM failed; see {log}")
    while True:
        killed += scancel_while_queued(runs / name, name, kills - len(killed), rng)
        wait_for_queue(name)
        if all_finished(runs, name, count) or reruns >= max_runs:
            break
        reruns += 1
        sweep(grid, runs, log)  # resubmits the killed cells: their jobs are gone, with no result
    found = compare_all(ref_runs / "chaos", runs / name)
    return {"cells": count, "kills": len(killed), "reruns": reruns, "finished": all_finished(runs, name, count),
            **{key: len(items) for key, items in found.items()}, "details": found, "kill_log": killed,
            "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs of local cell processes")
    p.add_argument("--slurm", action="store_true", help="also on the local SLURM (slurm/local-cluster/up)")
    p.add_argument("--slurm-kills", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder (default: a temporary one, removed)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "chaos.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": "SIGKILL a local sweep's cells at random moments and while they write checkpoints, "
                               "re-run it until it ends, compare every cell with an uninterrupted run",
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                  "local": local_chaos(work, args.cells, args.epochs, args.kills, args.seed)}
        if args.slurm:
            result["slurm"] = slurm_chaos(work, work / "reference", args.slurm_kills, args.seed)
    parts = [result["local"], *([result["slurm"]] if "slurm" in result else [])]
    result["mismatches"] = sum(r["mismatches"] + r["lost"] + r["duplicated"] for r in parts)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for label, r in zip(("local", "slurm"), parts):
        print(f"{label}: {r['cells']} cells, {r['kills']} kills, {r['reruns']} re-runs, finished {r['finished']}, "
              f"mismatches {r['mismatches']}, lost {r['lost']}, duplicated {r['duplicated']} ({r['wall_s']} s)")
    print(f"wrote {args.out}")
    sys.exit(0 if result["mismatches"] == 0 and all(r["finished"] for r in parts) else 1)


if __name__ == "__main__":
    main()
