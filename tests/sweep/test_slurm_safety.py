"""On the real one-node SLURM: queued jobs run the code snapshot of their submission, second
stages wait for their first stages (job dependencies), and array tasks killed with
`scancel --signal=KILL` are resumed by the next sweep to the same results as uninterrupted runs."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.data import load_card, prepare
from harness.grid import load_grid
from harness.sweep.status import cancel
from support import load_script, wait_for, write_grid
from support.repo_copy import MARKER, edit, repo_copy, run_copy

HOLD = "launch: {cluster: slurm, profile: local, slurm: {sbatch_extra: [--hold]}}\n"


@pytest.fixture(scope="module")
def data_root(tiny_card, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare(load_card(str(tiny_card)), root)
    return root



def state(runs: Path, grid: str, sig: str) -> dict:
    return json.loads((runs / grid / sig / "state.json").read_text())


@pytest.mark.slow
def test_a_held_job_runs_the_code_it_was_submitted_with(slurm_cluster, tmp_path, tiny_card, data_root):
    repo = repo_copy(tmp_path / "repo")
    name = f"snap_{os.getpid()}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name, extra=HOLD)
    runs = tmp_path / "runs"
    try:
        out = run_copy(repo, str(grid), "--runs", str(runs), "log.images=false")
        assert out.returncode == 0 and "submitted 1 cells" in out.stdout, out.stdout + out.stderr
        (cell,) = load_grid(grid, ["log.images=false"]).cells
        submitted = state(runs, name, cell.signature)
        (taken,) = (runs / ".code").iterdir()
        assert submitted["code"] == taken.name and f"export PYTHONPATH={taken}" in Path(submitted["script"]).read_text()
        edit(repo)  # while the job waits in the queue
        subprocess.run(["scontrol", "release", submitted["job_id"].split("_")[0]], check=True, timeout=30)
        wait_for(lambda: state(runs, name, cell.signature)["state"] == "finished", 180, "the job to finish")
        log = Path(submitted["log"]).read_text()
        assert MARKER not in log and f"code: snapshot {taken.name}" in log
        result = json.loads((runs / name / cell.signature / "result.json").read_text())
        assert result["code_snapshot"] == taken.name
        status = run_copy(repo, str(grid), "--runs", str(runs), "log.images=false", "--status")
        assert f"{taken.name}*" in status.stdout
    finally:
        cancel(load_grid(grid, check=False), runs)


def test_second_stages_wait_for_their_first_stages_with_a_dependency(slurm_cluster, tmp_path, tiny_card, data_root,
                                                                    capsys):
    from harness.cli.sweep import main as main_sweep
    name = f"dep_{os.getpid()}"
    grid = write_grid(tmp_path, tiny_card, data_root, name=name, grid="stage.kind: [crt, train]", extra=HOLD)
    runs = tmp_path / "runs"
    crt, train = load_grid(grid).cells
    try:
        assert main_sweep([str(grid), "--runs", str(runs), "--dry-run"]) == 0
        dry = capsys.readouterr().out
        assert "2 sbatch call(s)" in dry and "#SBATCH --dependency=afterok:FIRST_STAGE_TASKS" in dry
        assert main_sweep([str(grid), "--runs", str(runs)]) == 0
        first, second = state(runs, name, train.signature), state(runs, name, crt.signature)
        assert second["after"] == [first["job_id"]] and first["after"] == []
        script = Path(second["script"]).read_text()
        assert f"#SBATCH --dependency=afterok:{first['job_id']}" in script and "--kill-on-invalid-dep=yes" in script
        shown = subprocess.run(["scontrol", "show", "job", second["job_id"]], capture_output=True, text=True).stdout
        assert f"Dependency=afterok:{first['job_id']}" in shown
    finally:
        cancel(load_grid(grid, check=False), runs)



@pytest.mark.slow
def test_array_tasks_killed_by_scancel_are_resumed_to_the_same_results(slurm_cluster, tmp_path):
    chaos = load_script("bench/chaos.py")
    ref_runs, _ = chaos.reference(tmp_path, cells=2, epochs=3)
    found = chaos.slurm_chaos(tmp_path, ref_runs, kills=2)
    assert found["kills"] == 2 and found["finished"], found
    assert (found["mismatches"], found["lost"], found["duplicated"]) == (0, 0, 0), found["details"]
    assert found["reruns"] >= 1

