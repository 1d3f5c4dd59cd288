"""Cluster profiles: where a sweep's jobs run on SLURM and what each job asks for.

A profile is a small YAML file in `slurm/<name>.yaml` (e.g. `slurm/local.yaml` for the
single-node test cluster that `slurm/local-cluster/up` starts). `load_profile` reads one,
applies overrides and rejects unknown keys; `ClusterProfile.executor_params` turns it into
the keyword arguments of submitit's `AutoExecutor.update_parameters`; `check_cluster` asks
the real scheduler (harness.sweep.scheduler) whether the partition exists, has the GPUs asked
for and allows the time limit, before anything is submitted.

    profile = load_profile("local", {"time_min": 60})
    check_cluster(profile)
    executor.update_parameters(**profile.executor_params())    # see harness.sweep.slurm
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import read_yaml
from harness.registry import ConfigError
from harness.sweep import scheduler

PROFILE_DIR = Path(__file__).resolve().parents[2] / "slurm"
PREEMPT_SIGNAL = "USR2"  # the signal submitit traps to checkpoint and requeue (SUBMITIT_PREEMPT_SIGNAL)


# sbatch copies the submitting shell's environment into the job; torchrun's variables left in that
# shell would take priority over SLURM's own and give every task a stale rank and world size
CLEAR_RANKS = "unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT TORCHELASTIC_RUN_ID"


@dataclass
class ClusterProfile:
    """What every job of a sweep asks SLURM for. Field names are the keys of the YAML file."""

    partition: str = "debug"
    """SLURM partition to submit to (`sbatch --partition`)."""
    nodes: int = 1
    """Nodes per job (each array task gets this many)."""
    tasks_per_node: int = 1
    """Processes per node, one per rank (usually one per GPU)."""
    gpus_per_node: int = 0
    """GPUs per node (`--gpus-per-node`); 0 asks for none and sends no GPU flag at all."""
    cpus_per_task: int = 1
    """CPU cores per process (data-loading workers + 1)."""
    mem_gb: float = 1
    """Memory per node in GB (`--mem`)."""
    time_min: int = 30
    """Wall-clock limit per job in minutes (`--time`); a requeued job starts a fresh limit."""
    account: str | None = None
    """Account to charge (`--account`); None sends none."""
    qos: str | None = None
    """Quality of service (`--qos`); None sends none."""
    constraint: str | None = None
    """Node features required (`--constraint`, e.g. "a100|h100"); None sends none."""
    signal: str = "USR2@90"
    """"USR2@90": SLURM sends SIGUSR2 90 s before the time limit so the job can checkpoint and requeue."""
    array_parallelism: int = 256
    """Most array tasks of one sweep running at once (`--array=...%N`)."""
    max_requeues: int = 3
    """Times a job may hit its time limit and requeue itself (submitit's max_num_timeout)."""
    sbatch_extra: list[str] = field(default_factory=list)
    """Extra sbatch options, one per item, as "--name" or "--name=value" (e.g. "--exclusive")."""
    setup: list[str] = field(default_factory=list)
    """Shell lines the job script runs before the job (module loads, venv activation)."""
    source: str = field(default="<defaults>", compare=False)
    """Where the profile came from (set by load_profile; not a key of the file)."""

    def signal_delay_s(self) -> int:
        """Seconds before the time limit at which SLURM sends the preemption signal."""
        return _parse_signal(self.signal, self.source)

    def executor_params(self) -> dict[str, Any]:
        """Keyword arguments for submitit's `AutoExecutor.update_parameters`."""
        params: dict[str, Any] = {
            "slurm_partition": self.partition,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "timeout_min": self.time_min,
            "slurm_signal_delay_s": self.signal_delay_s(),
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_srun_args": ["--kill-on-bad-exit=1"],  # one failed rank ends the whole task
        }
        if self.gpus_per_node > 0:  # a GPU flag of any kind is an error on a cluster without GPU gres
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("account", "qos", "constraint"):
            if getattr(self, key) is not None:
                params[f"slurm_{key}"] = getattr(self, key)
        if self.sbatch_extra:
            params["slurm_additional_parameters"] = _sbatch_options(self.sbatch_extra, self.source)
        params["slurm_setup"] = [CLEAR_RANKS, *self.setup]
        return params


def load_profile(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> ClusterProfile:
    """Read `slurm/<name>.yaml` (or a path to a YAML file), apply `overrides`, and validate.

    Unknown keys, wrong types and impossible values raise ConfigError naming the file and key.
    """
    path = _profile_path(name_or_path)
    data = read_yaml(path, "a cluster profile", "the fields of ClusterProfile")

    profile = ClusterProfile(source=str(path))
    _apply(profile, data, str(path))
    _apply(profile, dict(overrides or {}), f"{path} (override)")
    _validate(profile)
    return profile


def check_cluster(profile: ClusterProfile) -> None:
    """Ask the scheduler whether `profile` can run: the partition exists, has the GPUs asked for,
    and allows the time limit asked for.

    Raises ConfigError (one line) if SLURM is unreachable, the partition is unknown, GPUs
    are requested on a partition whose nodes have no GPU gres (or fewer than asked for), or
    time_min is above the partition's MaxTime (sbatch would leave the jobs pending for ever).
    """
    found = scheduler.partitions()
    if profile.partition not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"{profile.source}: partition '{profile.partition}' does not exist on this "
                          f"cluster (partitions: {known}); set 'partition' to one of them")
    limit = found[profile.partition].max_time_min
    if limit is not None and profile.time_min > limit:
        raise ConfigError(f"{profile.source}: time_min={profile.time_min} is above the MaxTime of partition "
                          f"'{profile.partition}' ({limit} min); lower time_min (jobs requeue themselves "
                          f"at the limit) or pick another partition")
    if profile.gpus_per_node > 0:
        gres = found[profile.partition].gres
        most = max(_gpu_count(g) for g in gres)
        if most == 0:
            raise ConfigError(f"{profile.source}: gpus_per_node={profile.gpus_per_node} but the nodes of "
                              f"partition '{profile.partition}' have no GPUs (gres: {', '.join(gres)}); "
                              f"set gpus_per_node: 0 or pick a GPU partition")
        if most < profile.gpus_per_node:
            raise ConfigError(f"{profile.source}: gpus_per_node={profile.gpus_per_node} but nodes of partition "
                              f"'{profile.partition}' have at most {most} GPUs; lower gpus_per_node")


# --- helpers ---------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(ClusterProfile) if f.name != "source"}
_OPTIONAL_STR = ("account", "qos", "constraint")
_LISTS = ("sbatch_extra", "setup")


def _profile_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
    else:
        path = PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(f"cluster profile '{text}' not found ({path}); known profiles: {known}")
    return path


def _apply(profile: ClusterProfile, values: dict[str, Any], where: str) -> None:
    """Set each key of `values` on `profile`, checking the key exists and the type fits."""
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys: {', '.join(sorted(_FIELDS))}")
        setattr(profile, key, _coerce(key, value, where))


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check the type of one value; numbers given as strings (command-line overrides) are converted."""
    default = _FIELDS[key].default
    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of strings, got {value!r}")
        return list(value)
    if key in _OPTIONAL_STR:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    kind = float if key == "mem_gb" else int
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"{where}: '{key}' must be a whole number, got {value!r}")
    return number


def _validate(p: ClusterProfile) -> None:
    minimum = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
               "time_min": 1, "array_parallelism": 1, "max_requeues": 0}
    for key, low in minimum.items():
        if getattr(p, key) < low:
            raise ConfigError(f"{p.source}: '{key}' must be at least {low}, got {getattr(p, key)}")
    if p.mem_gb <= 0:
        raise ConfigError(f"{p.source}: 'mem_gb' must be positive, got {p.mem_gb}")
    if not p.partition:
        raise ConfigError(f"{p.source}: 'partition' must not be empty")
    if p.signal_delay_s() >= p.time_min * 60:
        raise ConfigError(f"{p.source}: signal '{p.signal}' comes before the job starts "
                          f"(time_min={p.time_min}); lower the delay or raise time_min")
    _sbatch_options(p.sbatch_extra, p.source)


def _parse_signal(signal: str, where: str) -> int:
    """'USR2@90' -> 90. Only USR2 sent to the job steps: that is what submitit traps."""
    match = re.fullmatch(r"(?:SIG)?([A-Z0-9]+)@(\d+)", signal.strip())
    if not match:
        raise ConfigError(f"{where}: signal '{signal}' is not of the form USR2@<seconds> (e.g. USR2@90)")
    if match.group(1) != PREEMPT_SIGNAL:
        raise ConfigError(f"{where}: signal '{signal}' uses {match.group(1)} but submitit checkpoints on "
                          f"{PREEMPT_SIGNAL}; write {PREEMPT_SIGNAL}@{match.group(2)}")
    return int(match.group(2))


def _sbatch_options(lines: list[str], where: str) -> dict[str, Any]:
    """["--exclusive", "--mail-type=END"] -> {"exclusive": True, "mail-type": "END"} (submitit's form)."""
    options: dict[str, Any] = {}
    for line in lines:
        match = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", line.strip())
        if not match:
            raise ConfigError(f"{where}: sbatch_extra item '{line}' must look like --name or --name=value")
        options[match.group(1)] = True if match.group(2) is None else match.group(2)
    return options


def _gpu_count(gres: str) -> int:
    """GPUs per node in a sinfo gres string: 'gpu:8', 'gpu:a100:4(S:0-1)', '(null)' -> 0."""
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
