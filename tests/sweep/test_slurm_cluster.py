"""The local SLURM cluster really runs jobs, arrays, submitit, and USR2 → self-requeue."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
import cloudpickle  # noqa: E402  (comes with submitit)

from support import wait_for  # noqa: E402

# Jobs unpickle Sleeper below; send this module's code by value since the job cannot import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# A job script body: trap USR2, note it, requeue itself, and finish on the second run.
REQUEUE_SCRIPT = """\
import os, signal, subprocess, sys, time
out = sys.argv[1]
run = os.environ.get("SLURM_RESTART_COUNT", "0")
open(f"{out}/start{run}", "w").close()

def on_usr2(signum, frame):
    open(f"{out}/usr2_{run}", "w").close()
    subprocess.check_call(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]])
    sys.exit(0)

signal.signal(signal.SIGUSR2, on_usr2)
if run == "0":
    time.sleep(120)
"""



def job_field(job_id: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    for item in out.split():
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
    return ""


def test_sbatch_runs(slurm_cluster, tmp_path):
    out = tmp_path / "hostname.out"
    subprocess.run(["sbatch", "--wait", "-p", slurm_cluster.partition, "-o", str(out), "--wrap", "hostname -s"],
                   check=True, capture_output=True, timeout=60)
    assert out.read_text().strip() == socket.gethostname().split(".")[0]


def test_submitit_map_array(slurm_cluster, tmp_path):
    def square(x):  # defined here so cloudpickle sends it by value
        return x * x

    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, slurm_array_parallelism=2)
    jobs = executor.map_array(square, [1, 2, 3])
    wait_for(lambda: all(job.done() for job in jobs), 60, "the array tasks")  # result() alone could wait forever
    assert [job.result() for job in jobs] == [1, 4, 9]
    assert [job.job_id.split("_")[1] for job in jobs] == ["0", "1", "2"]


@pytest.mark.parametrize("launch", ["srun", "batch"])
def test_usr2_reaches_python_and_self_requeue_reruns(slurm_cluster, tmp_path, launch):
    """srun: python is a job step (as submitit runs it); `scancel --signal=USR2` signals steps.
    batch: python *is* the batch shell (exec); only `scancel --batch --signal=USR2` reaches it."""
    script = tmp_path / "requeue.py"
    script.write_text(REQUEUE_SCRIPT)
    command = f"{sys.executable} {script} {tmp_path}"
    wrap = f"srun {command}" if launch == "srun" else f"exec {command}"
    job_id = subprocess.run(["sbatch", "--parsable", "-p", slurm_cluster.partition, "-o", str(tmp_path / "log"),
                             "--wrap", wrap], check=True, capture_output=True, text=True).stdout.strip()
    try:
        wait_for((tmp_path / "start0").exists, 30, "the first run to start")
        scancel = ["scancel", "--signal=USR2", job_id] + (["--batch"] if launch == "batch" else [])
        subprocess.run(scancel, check=True, timeout=30)
        wait_for((tmp_path / "usr2_0").exists, 10, "the USR2 handler")
        wait_for(lambda: job_field(job_id, "JobState") == "COMPLETED", 40, "the requeued run to finish")
        assert (tmp_path / "start1").exists()
        assert job_field(job_id, "Restarts") == "1"
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)


class Sleeper(submitit.helpers.Checkpointable):
    """Sleeps on its first run; on a restart returns (rank, world size, restart count)."""

    def __call__(self, folder: str):
        env = submitit.JobEnvironment()
        run = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        Path(folder, f"rank{env.global_rank}.run{run}").touch()
        if run == 0:
            time.sleep(120)
        return env.global_rank, env.num_tasks, run


def test_submitit_checkpointable_two_tasks_requeues_on_usr2(slurm_cluster, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, tasks_per_node=2,
                               cpus_per_task=1, mem_gb=1, slurm_signal_delay_s=60)
    job = executor.submit(Sleeper(), str(tmp_path))
    try:
        wait_for(lambda: all((tmp_path / f"rank{r}.run0").exists() for r in (0, 1)), 30, "both ranks to start")
        job._interrupt()  # what preemption looks like: SIGTERM, then USR2, to the job steps
        wait_for(job.done, 60, "the requeued job")
        assert sorted(job.results()) == [(0, 2, 1), (1, 2, 1)]
    finally:
        job.cancel(check=False)
