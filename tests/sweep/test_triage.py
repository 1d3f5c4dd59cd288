"""Triage: --why SIG|JOB and --failed say what happened to a cell, where its logs are, and the
command that reruns it in this process."""
import json
import shlex
import subprocess
import sys

import pytest

from harness.grid import load_grid
from support import ROOT, write_grid

SWEEP = str(ROOT / "tools" / "sweep.py")


def sweep(*args, cwd):
    return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_why_explains_a_failed_cell_and_its_rerun_command_works(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", epochs=1, grid="loss.name: [ce, focal]",
                      extra="launch: {cluster: local, parallel: 2}\n")
    bad = ["optim.lr=1e30", "log.images=false"]  # the loss becomes nan: both cells fail
    out = sweep(str(grid), *bad, cwd=tmp_path)
    assert out.returncode == 1 and f"why: python tools/sweep.py {grid} --failed" in out.stderr
    ce, focal = load_grid(grid, bad).cells
    state = json.loads((tmp_path / "runs" / "g" / ce.signature / "state.json").read_text())

    why = sweep(str(grid), *bad, "--why", ce.signature, cwd=tmp_path)
    assert why.returncode == 0, why.stderr
    text = why.stdout
    assert text.startswith(f"cell {ce.signature}  loss=ce\n  state       failed\n")
    assert f"  job         {state['job_id']} on local; requeues 0" in text
    assert "  error       TrainingError: loss is nan at epoch 1" in text
    assert f"  log         {state['log']}" in text and f"  errors      {state['log_err']}" in text
    assert f"  traceback   runs/g/{ce.signature}/state.json" in text
    assert "  last lines of the log:" in text and "[" + ce.signature + "] training ce" in text
    assert "  last lines of the errors:" in text and "TrainingError" in text.split("last lines of the errors:")[1]
    rerun = next(line for line in text.splitlines() if line.startswith("  rerun here  ")).split("  rerun here  ")[1]
    assert rerun == (f"python {SWEEP} {grid} optim.lr=1e30 log.images=false --cluster debug "
                     f"--only {ce.signature} --retry-failed")

    by_job = sweep(str(grid), *bad, "--why", state["job_id"], cwd=tmp_path)
    assert by_job.stdout.startswith(f"cell {ce.signature}")
    failed = sweep(str(grid), *bad, "--failed", cwd=tmp_path)
    assert failed.stdout.count("\ncell ") + failed.stdout.startswith("cell ") == 2

    again = subprocess.run([sys.executable, *shlex.split(rerun)[1:]], capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)  # the printed command, pasted where --why ran
    assert "grid g: 2 cells, 1 to run, 1 skipped (debug)" in again.stdout, again.stdout + again.stderr
    assert f"[{ce.signature}] FAILED: TrainingError: loss is nan" in again.stderr


def test_why_for_an_unknown_cell_is_one_line(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data")
    out = sweep(str(grid), "--why", "123456_7", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"error: --why 123456_7: no cell of grid 'g' has that signature or job id (python tools/sweep.py {grid} "
        f"--status lists them)")
    assert sweep(str(grid), "--failed", cwd=tmp_path).stdout.strip() == "grid g: no failed cells"
