"""End to end on the CPU: a tiny grid through tools/sweep.py, the result files, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.rundir import RunDir
from support import ROOT, write_grid

SWEEP = str(ROOT / "tools" / "sweep.py")


def sweep(grid, *args, cwd, timeout=600):
    return subprocess.run([sys.executable, SWEEP, str(grid), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_local_sweep_writes_results_and_skips_finished_cells(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", grid="loss.name: [ce, balanced_softmax]")
    out = sweep(grid, "--cluster", "local", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted((tmp_path / "runs" / "g").glob("[0-9a-f]*"))
    assert len(runs) == 2
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        assert result["status"] == "finished" and result["epochs"] == 2
        assert len(result["history"]) == 2 and 0 <= result["final"]["top1"] <= 100
        assert set(result["final"]) == {"top1", "many", "medium", "few"}
        assert len(result["class_counts"]) == 10 and result["class_counts"][0] == 60
        assert list((run / "tb").glob("events.out.tfevents.*"))
        assert (run / "config.yaml").is_file() and (run / "ckpt" / "last.pt").is_file()
        assert json.loads((run / "state.json").read_text())["state"] == "finished"
    assert "epoch 2/2" in out.stdout and "| finished |" in out.stdout.replace("  ", " ")
    # the data was generated once, as FFCV files
    assert (tmp_path / "data" / "tiny" / "train.beton").is_file()

    mtimes = {r: (r / "result.json").stat().st_mtime for r in runs}
    again = sweep(grid, "--cluster", "local", cwd=tmp_path)
    assert again.returncode == 0
    assert "0 to run, 2 skipped" in again.stdout and "epoch 1/2" not in again.stdout
    assert all((r / "result.json").stat().st_mtime == m for r, m in mtimes.items())

    # killed after its last checkpoint but before its result: the saved model is evaluated again
    lost = json.loads((runs[0] / "result.json").read_text())
    (runs[0] / "result.json").unlink()
    third = sweep(grid, "--cluster", "local", cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 to run" in third.stdout and "epoch 1/2" not in third.stdout
    again = json.loads((runs[0] / "result.json").read_text())
    assert again["final"] == lost["final"] and again["history"] == lost["history"]


@pytest.mark.slow
def test_a_killed_sweep_resumes_from_the_checkpoint(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", epochs=4)
    proc = subprocess.Popen([sys.executable, SWEEP, str(grid), "--cluster", "local"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run = None
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list((tmp_path / "runs" / "g").glob("[0-9a-f]*/ckpt/last.pt"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.2)
    assert run is not None, "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process, without warning
    proc.wait()
    assert not (run / "result.json").exists()
    saved = RunDir(run).load_checkpoint()
    done = saved["epoch"]
    assert 1 <= done < 4

    dry = sweep(grid, "--dry-run", cwd=tmp_path)
    assert "resume from checkpoint" in dry.stdout
    out = sweep(grid, "--cluster", "local", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming at epoch {done + 1}" in out.stdout
    assert "epoch 1/4" not in out.stdout
    result = json.loads((run / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]
    assert result["history"][:done] == saved["history"]


def test_a_nan_loss_fails_the_cell_with_one_line(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", epochs=1)
    out = sweep(grid, "--cluster", "debug", "optim.lr=1e30", cwd=tmp_path)
    assert out.returncode != 0
    state = json.loads(next((tmp_path / "runs" / "g").glob("*/state.json")).read_text())
    assert state["state"] == "failed" and "loss is nan" in state["error"].lower()
    again = sweep(grid, "--cluster", "debug", "optim.lr=1e30", "--dry-run", cwd=tmp_path)
    assert "skip (failed)" in again.stdout


def test_a_validation_split_chooses_the_best_epoch(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", epochs=2)
    out = sweep(grid, "--cluster", "debug", "data.val=split", "data.val_fraction=0.2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(next((tmp_path / "runs" / "g").glob("*/result.json")).read_text())
    assert result["eval_split"] == "split"
    assert result["class_counts"][0] == 48  # 60 per class, 20% held out before the profile
    vals = [h["val_top1"] for h in result["history"]]
    assert result["best"]["epoch"] == 1 + vals.index(max(vals))


def test_a_dead_local_job_is_not_taken_for_a_running_one():
    """A killed training process left as an unreaped zombie, or its pid reused by another process,
    must not keep its cell 'running' for ever."""
    import socket

    from harness.rundir import local_process_alive, process_start
    child = subprocess.Popen(["sleep", "60"])
    record = {"host": socket.gethostname(), "pid": child.pid, "pid_start": process_start(child.pid)}
    assert local_process_alive(record)
    assert not local_process_alive({**record, "pid_start": "1"})  # the same pid, another process
    child.kill()
    deadline = time.time() + 10
    while process_start(child.pid) is not None and time.time() < deadline:
        time.sleep(0.05)  # not reaped on purpose: the child stays a zombie
    assert os.path.exists(f"/proc/{child.pid}")
    assert not local_process_alive(record)
    child.wait()
