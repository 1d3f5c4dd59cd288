"""Cluster profiles: loading, validation, submitit parameters, and checks against the real scheduler."""
from __future__ import annotations

import textwrap
import time

import pytest

from harness.registry import ConfigError
from harness.sweep.profiles import CLEAR_RANKS, ClusterProfile, check_cluster, load_profile
from harness.sweep.scheduler import max_array_size


def write(tmp_path, text: str):
    path = tmp_path / "profile.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_local_profile_loads():
    profile = load_profile("local", {})
    assert (profile.partition, profile.gpus_per_node, profile.cpus_per_task) == ("debug", 0, 1)
    assert (profile.mem_gb, profile.time_min, profile.signal_delay_s()) == (1, 30, 60)
    assert profile.source.endswith("slurm/local.yaml")


def test_overrides_apply_and_numbers_given_as_strings_are_converted():
    profile = load_profile("local", {"time_min": "90", "mem_gb": 2.5, "qos": "high"})
    assert (profile.time_min, profile.mem_gb, profile.qos) == (90, 2.5, "high")


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, """\
        partition: debug
        gpus: 2
        """)
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'gpus'"):
        load_profile(path, {})


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match=r"local.yaml \(override\): unknown key 'partiton'"):
        load_profile("local", {"partiton": "gpu"})


@pytest.mark.parametrize("text, message", [
    ("nodes: two", "'nodes' must be a number"),
    ("nodes: 0", "'nodes' must be at least 1"),
    ("signal: TERM@60", "submitit checkpoints on USR2"),
    ("signal: USR2", "not of the form USR2@<seconds>"),
    ("signal: USR2@7200", "comes before the job starts"),
    ("sbatch_extra: ['-p gpu']", "must look like --name or --name=value"),
    ("setup: [1, 2]", "'setup' must be a list of strings"),
])
def test_bad_values_are_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(write(tmp_path, text), {})


def test_missing_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*example-gpu.*local"):
        load_profile("nope", {})


def test_executor_params_of_a_gpu_profile():
    params = load_profile("example-gpu", {}).executor_params()
    assert params == {
        "slurm_partition": "gpu", "nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8,
        "mem_gb": 480, "timeout_min": 1440, "slurm_account": "my-lab", "slurm_qos": "normal",
        "slurm_constraint": "a100|h100", "slurm_signal_delay_s": 120, "slurm_array_parallelism": 16,
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_additional_parameters": {"exclusive": True},
        "slurm_setup": [CLEAR_RANKS, "module load cuda/12.4", "source .venv/bin/activate"],
    }


def test_executor_params_leave_out_what_is_not_asked_for():
    params = ClusterProfile().executor_params()
    assert "gpus_per_node" not in params
    assert not {"slurm_account", "slurm_qos", "slurm_constraint", "slurm_additional_parameters"} & set(params)
    assert params["slurm_setup"] == [CLEAR_RANKS]


def test_submitit_writes_the_gpu_profile_into_sbatch(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**load_profile("example-gpu", {}).executor_params())
    text = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --mem=480GB", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120",
                 "#SBATCH --account=my-lab", "#SBATCH --qos=normal", "#SBATCH --constraint='a100|h100'",
                 "#SBATCH --exclusive", "module load cuda/12.4"]:
        assert line in text


def test_local_profile_runs_a_job(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")
    profile = load_profile("local", {})
    check_cluster(profile)
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm",
                                     slurm_max_num_timeout=profile.max_requeues)
    executor.update_parameters(**profile.executor_params())
    job = executor.submit(divmod, 7, 2)
    deadline = time.monotonic() + 60  # without sacct, result() alone would wait forever on a lost job
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.result() == (3, 1)


def test_missing_partition_is_reported(slurm_cluster):
    with pytest.raises(ConfigError, match="partition 'gpu' does not exist on this cluster \\(partitions: debug\\)"):
        check_cluster(load_profile("local", {"partition": "gpu"}))


def test_gpus_on_a_cpu_only_cluster_are_reported(slurm_cluster):
    with pytest.raises(ConfigError, match="gpus_per_node=1 but the nodes of partition 'debug' have no GPUs"):
        check_cluster(load_profile("local", {"gpus_per_node": 1}))


def test_unreachable_scheduler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no scontrol
    with pytest.raises(ConfigError,
                       match=r"SLURM is not reachable \(sinfo failed: .*\); start it or use --cluster local"):
        check_cluster(load_profile("local", {}))
    with pytest.raises(ConfigError, match="SLURM is not reachable"):
        max_array_size()


def test_max_array_size(slurm_cluster):
    assert max_array_size() == 1001
