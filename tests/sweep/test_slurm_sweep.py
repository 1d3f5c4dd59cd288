"""Sweeps on the real one-node SLURM: array jobs, idempotent re-runs, USR2 → checkpoint →
requeue → resume, the requeue limit, --status, --cancel, --dry-run and bad input."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.sweep import main as main_sweep
from harness.data import load_card, prepare
from harness.grid import load_grid
from harness.rundir import RunDir
from harness.sweep import slurm
from harness.sweep.status import cancel
from support import ROOT, wait_for, write_grid

SWEEP = str(ROOT / "tools" / "sweep.py")
SLURM = "launch: {cluster: slurm, profile: local}\n"
QUICK = "log.images=false"  # no TensorBoard figures: a tiny epoch takes a second, not three


@pytest.fixture(scope="module")
def data_root(tiny_card, tmp_path_factory) -> Path:
    """The tiny dataset written once, so array tasks never race to generate it."""
    root = tmp_path_factory.mktemp("data")
    prepare(load_card(str(tiny_card)), root)
    return root


@pytest.fixture
def counted_sbatch(tmp_path, monkeypatch) -> Path:
    """sbatch behind a shim on PATH that logs each call; returns the log file."""
    real = shutil.which("sbatch")
    assert real, "sbatch is not on PATH"
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> int:
    return len(log.read_text().splitlines())


def run_cli(grid: Path, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """tools/sweep.py as a user runs it (run folders under cwd/runs)."""
    return subprocess.run([sys.executable, SWEEP, str(grid), QUICK, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, **(env or {})})


def sweep_cli(grid: Path, *args, cwd: Path) -> str:
    """The same command in this process (no interpreter start-up); returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main_sweep([str(grid), QUICK, "--runs", str(cwd / "runs"), *args])
    return out.getvalue()



def states(grid: Path, runs: Path) -> dict[str, dict]:
    g = load_grid(grid)
    return {c.signature: json.loads((runs / g.name / c.signature / "state.json").read_text())
            for c in g.cells if (runs / g.name / c.signature / "state.json").is_file()}


def squeue_names(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def cancel_grid(grid: Path, runs: Path) -> None:
    cancel(load_grid(grid), runs)


def log_of(state: dict) -> str:
    return Path(state["log"]).read_text()


# --- without running anything --------------------------------------------------------------------

@pytest.mark.parametrize("launch, hide_slurm, expected", [
    ("{cluster: slurm, profile: nosuch}", False, "cluster profile 'nosuch' not found"),
    ("{cluster: slurm, profile: local, slurm: {partition: nosuch}}", False, "partition 'nosuch' does not exist"),
    ("{cluster: slurm, profile: local, slurm: {gpus_per_node: 1}}", False, "have no GPUs"),
    ("{cluster: slurm, profile: local}", True, "SLURM is not reachable (sinfo failed: sinfo not found"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_submitted(slurm_cluster, tmp_path, tiny_card, data_root,
                                                           monkeypatch, capsys, launch, hide_slurm, expected):
    name = f"bad_{os.getpid()}_{tmp_path.name[-1]}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name, extra=f"launch: {launch}\n")
    if hide_slurm:  # an unreachable scheduler: no SLURM commands on PATH
        monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    code = main_sweep([str(grid), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert squeue_names(name) == []
    assert not (tmp_path / "runs" / name).exists()


def test_dry_run_prints_one_sbatch_script_per_resource_shape(slurm_cluster, tmp_path, tiny_card, data_root,
                                                             counted_sbatch, capsys):
    # memory-loader cells need 1 CPU, FFCV cells data.num_workers + 1: two shapes, two arrays
    grid = write_grid(tmp_path, tiny_card, data_root, name="dry",
                      grid="{loss.name: [ce, focal, balanced_softmax], data.loader: [memory, ffcv]}",
                      extra="launch: {cluster: slurm, profile: local, parallel: 2, slurm: {time_min: 7}}\n")
    assert main_sweep([str(grid), "--dry-run", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "6 to run" in out and "2 sbatch call(s) for 6 cells" in out
    scripts = out.split("--- array ")[1:]
    assert len(scripts) == 2
    for script, cpus in zip(scripts, (1, 3)):
        assert "3 cells" in script and "#SBATCH --array=0-2%2" in script
        assert f"#SBATCH --cpus-per-task={cpus}" in script and "#SBATCH --partition=debug" in script
        assert "#SBATCH --time=7" in script and "#SBATCH --signal=USR2@60" in script
        assert "srun --unbuffered" in script and "submitit.core._submit" in script
    assert calls(counted_sbatch) == 0 and not (tmp_path / "runs").exists()


# --- held jobs: submission, splitting, --status, --cancel -----------------------------------------

def test_arrays_split_at_max_size_and_cancel_touches_only_this_grid(slurm_cluster, tmp_path, tiny_card, data_root,
                                                                     counted_sbatch, capsys):
    runs = tmp_path / "runs"
    mine = write_grid(tmp_path, tiny_card, data_root, name=f"mine_{os.getpid()}",
                      grid="loss.name: [ce, focal, balanced_softmax]", extra=SLURM)
    other = write_grid(tmp_path, tiny_card, data_root, name=f"other_{os.getpid()}",
                       extra="launch: {cluster: slurm, profile: local, slurm: {sbatch_extra: [--hold]}}\n")
    stranger = subprocess.run(["sbatch", "--parsable", "--hold", "-p", slurm_cluster.partition, "-o", "/dev/null",
                               "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        grid = load_grid(mine)
        run_dirs = [runs / grid.name / c.signature for c in grid.cells]
        for cell, run_dir in zip(grid.cells, run_dirs):
            RunDir(run_dir).write_cell(grid.name, cell)
        before = calls(counted_sbatch)
        ids = slurm.submit(grid, grid.cells, run_dirs, runs / grid.name / ".submitit", hold=True, max_size=2)
        assert [len(a) for a in ids] == [2, 1] and calls(counted_sbatch) == before + 2
        assert ids[0][0].endswith("_0") and ids[0][1] == f"{ids[0][0].split('_')[0]}_1"
        assert main_sweep([str(other), "--runs", str(runs)]) == 0
        assert calls(counted_sbatch) == before + 3

        assert main_sweep([str(mine), "--status", "--runs", str(runs)]) == 0
        table = capsys.readouterr().out
        for job in (ids[0][0], ids[0][1], ids[1][0]):
            assert job in table
        assert "3 cells: 3 pending" in table and "0/3" in table

        assert main_sweep([str(mine), "--cancel", "--runs", str(runs)]) == 0
        assert "cancelled 3 SLURM jobs" in capsys.readouterr().out
        assert squeue_names(grid.name) == []
        assert len(squeue_names(load_grid(other).name)) == 1
        alive = subprocess.run(["squeue", "-h", "-j", stranger, "-o", "%T"], capture_output=True, text=True)
        assert alive.stdout.strip() == "PENDING"
        assert {s["state"] for s in states(mine, runs).values()} == {"cancelled"}
        main_sweep([str(mine), "--status", "--runs", str(runs)])
        assert "3 cells: 3 cancelled" in capsys.readouterr().out
        main_sweep([str(mine), "--dry-run", "--runs", str(runs)])
        assert "3 to run" in capsys.readouterr().out  # cancelled cells run again when the sweep does
    finally:
        cancel_grid(mine, runs)
        cancel_grid(other, runs)
        subprocess.run(["scancel", stranger], capture_output=True)


# --- real training jobs ------------------------------------------------------------------------------

@pytest.mark.slow
def test_array_runs_to_results_and_reruns_submit_nothing_twice(slurm_cluster, tmp_path, tiny_card, data_root,
                                                               counted_sbatch):
    name = f"arr_{os.getpid()}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name,
                      grid="loss.name: [ce, balanced_softmax]", extra=SLURM)
    runs = tmp_path / "runs"
    try:
        stale = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_PORT": "1"}  # torchrun's, left in the shell
        out = run_cli(grid, cwd=tmp_path, env=stale)
        assert out.returncode == 0, out.stdout + out.stderr
        assert calls(counted_sbatch) == 1 and "#SBATCH --array=0-1%2" in Path(
            next((runs / name / ".submitit").glob("*/*_submission.sh"))).read_text()
        jobs = sorted(s["job_id"] for s in states(grid, runs).values())
        array = jobs[0].split("_")[0]
        assert jobs == [f"{array}_0", f"{array}_1"]

        again = sweep_cli(grid, cwd=tmp_path)  # while pending or running: left alone
        assert "0 to run, 2 skipped" in again and calls(counted_sbatch) == 1

        wait_for(lambda: all(s["state"] == "finished" for s in states(grid, runs).values()), 150,
                 "both array tasks to finish")  # state.json says so just after result.json is written
        for state in states(grid, runs).values():
            assert state["state"] == "finished" and state["backend"] == "slurm"
            assert "epoch 2/2" in log_of(state)

        status = sweep_cli(grid, "--status", cwd=tmp_path)
        assert "2 cells: 2 finished" in status and status.count("2/2") == 2 and f"{array}_1" in status
        again = sweep_cli(grid, cwd=tmp_path)
        assert "0 to run, 2 skipped" in again and calls(counted_sbatch) == 1

        bigger = write_grid(tmp_path, tiny_card, data_root, name=name, grid="loss.name: [ce, balanced_softmax, focal]",
                            extra="launch: {cluster: slurm, profile: local, slurm: {sbatch_extra: [--hold]}}\n")
        added = sweep_cli(bigger, cwd=tmp_path)
        assert "1 to run, 2 skipped" in added and calls(counted_sbatch) == 2
        new = {s["job_id"] for s in states(bigger, runs).values()} - set(jobs)
        assert len(new) == 1 and new <= set(squeue_names(name))
    finally:
        cancel_grid(grid, runs)


@pytest.mark.slow
def test_usr2_stops_both_ranks_at_one_step_requeues_and_resumes(slurm_cluster, tmp_path, tiny_card, data_root):
    """Two DDP ranks (gloo) in one array task: SIGUSR2 reaches both, they agree on the step,
    rank 0 checkpoints and requeues, and the requeued job resumes there and finishes."""
    name = f"pre_{os.getpid()}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name, epochs=8,
                      extra="launch: {cluster: slurm, profile: local, slurm: {tasks_per_node: 2}}\n")
    runs = tmp_path / "runs"
    try:
        assert "submitted 1 cells" in sweep_cli(grid, cwd=tmp_path)
        (sig, state), = states(grid, runs).items()
        run = runs / name / sig
        wait_for((run / "progress.json").is_file, 120, "the first epoch")
        subprocess.run(["scancel", "--signal=USR2", state["job_id"]], check=True, timeout=30)
        wait_for(lambda: states(grid, runs)[sig]["state"] == "finished", 150, "the requeued job to finish")

        state = json.loads((run / "state.json").read_text())
        assert state["state"] == "finished" and state["requeues"] == 1
        log, rank1 = log_of(state), Path(state["log"].replace("_0_log.out", "_1_log.out")).read_text()
        assert "received SIGUSR2" in log and "received SIGUSR2" in rank1
        assert f"requeued {state['job_id']}" in log
        stopped = re.search(r"stopped (?:at|after) epoch (\d+)", log)  # "at epoch E step S": mid-epoch
        assert stopped and 1 <= int(stopped.group(1)) < 8, log
        assert f"resuming at epoch {int(stopped.group(1)) + 1}" in log
        assert log.count("epoch 1/8 loss") == 1  # the second run did not start from epoch 0
        result = json.loads((run / "result.json").read_text())
        assert [h["epoch"] for h in result["history"]] == list(range(1, 9)) and result["world_size"] == 2
        status = sweep_cli(grid, "--status", cwd=tmp_path)
        assert "finished" in status and "1/3" in status and "8/8" in status
    finally:
        cancel_grid(grid, runs)


@pytest.mark.slow
def test_past_the_requeue_limit_the_cell_fails_with_a_clear_error(slurm_cluster, tmp_path, tiny_card, data_root):
    name = f"lim_{os.getpid()}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name, epochs=8,
                      extra="launch: {cluster: slurm, profile: local, slurm: {max_requeues: 0}}\n")
    runs = tmp_path / "runs"
    try:
        assert "submitted 1 cells" in sweep_cli(grid, cwd=tmp_path)
        (sig, state), = states(grid, runs).items()
        wait_for((runs / name / sig / "progress.json").is_file, 90, "the first epoch")
        subprocess.run(["scancel", "--signal=USR2", state["job_id"]], check=True, timeout=30)
        wait_for(lambda: not squeue_names(name), 60, "the job to end")
        state = json.loads((runs / name / sig / "state.json").read_text())
        assert state["state"] == "failed" and "max_requeues=0" in state["error"]
        assert not (runs / name / sig / "result.json").exists()
        assert "skip (failed)" in sweep_cli(grid, "--dry-run", cwd=tmp_path)
        assert "1 to run" in sweep_cli(grid, "--dry-run", "--retry-failed", cwd=tmp_path)
    finally:
        cancel_grid(grid, runs)
