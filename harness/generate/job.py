"""A tail-generation job: the job file, its plan for a dataset, its shards on a launcher.

    python tools/generate_tail.py jobs/generate.yaml [--cluster slurm|local|debug] [--dry-run]

read_job (file + key=value overrides, validated) -> plan_job (dataset card, imbalance profile
on the prepared training labels, fill policy) -> check_model -> shards over array tasks x
ranks (submitit on SLURM or as local processes, or this process) -> finalize (manifest.jsonl,
generated.beton + labels, the real+generated file that a grid's data.generated reads).
Shard `task * ranks + rank` of `array_size * ranks`; any split gives the same images, and a
re-run skips the images (and the array tasks) already done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import submitit

from harness.config import DataConfig, from_dict, parse_override, read_yaml, set_dotted
from harness.files import check_name
from harness.generate.plan import GenerateConfig, Plan, shard
from harness.generate.run import is_done
from harness.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]
JOB_KEYS = ("name", "description", "dataset", "generate", "launch", "out_dir")
BARRIER_TIMEOUT_S = 7 * 24 * 3600  # ranks wait for each other at the end; resumed shards can differ by hours
POLL_S = 2.0  # how often the submitter looks at its jobs (one squeue call on SLURM)
PROGRESS_S = 60.0  # how often the submitter prints a progress line


@dataclass
class GenerateLaunch:
    """How a generation job's shards run; shards = array_size * ranks."""

    cluster: Literal["slurm", "local", "debug"] = "local"
    """slurm: a SLURM array; local: processes on this machine (submitit); debug: this process."""
    profile: str = "local"
    """Cluster profile, slurm/<profile>.yaml (partition, GPUs, account)."""
    slurm: dict = field(default_factory=dict)
    """Overrides of the profile's keys for this job (time_min, mem_gb, ...)."""
    array_size: int = 1
    """Array tasks (on SLURM, one node each)."""
    ranks: int = 1
    """Processes per array task, one per GPU; each generates its own shard."""
    threads: int = 1
    """torch CPU threads per shard process; on the CPU, images are byte-identical only with the same count."""


@dataclass
class Job:
    """A validated job file."""

    name: str
    path: Path
    data: DataConfig
    gen: GenerateConfig
    launch: GenerateLaunch
    out_dir: Path


@dataclass
class ShardSpec:
    """Everything a shard process needs (absolute paths; pickled to SLURM tasks)."""

    gen: GenerateConfig
    class_names: list
    counts: list
    real_counts: list
    out_dir: str
    data: DataConfig
    array_size: int
    ranks: int
    threads: int

    @property
    def num_shards(self) -> int:
        return self.array_size * self.ranks

    def plan(self) -> Plan:
        return Plan(self.gen, self.class_names, self.counts)


# --- the job file --------------------------------------------------------------------------------

def read_job(path: str | Path, overrides: list[str] = (), values: dict | None = None) -> Job:
    """Read and validate a job file; `overrides` are dotted key=value strings (generate.steps=10),
    `values` dotted keys with values already parsed (from command-line options)."""
    path = Path(path)
    raw = read_yaml(path, "a job file", ", ".join(JOB_KEYS))
    for key, value in [parse_override(o) for o in overrides] + list((values or {}).items()):
        set_dotted(raw, key, value)
    unknown = sorted(set(raw) - set(JOB_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'; known: {', '.join(JOB_KEYS)}")
    for section in ("dataset", "generate", "launch"):
        if not isinstance(raw.get(section) or {}, dict):
            raise ConfigError(f"{path}: '{section}' must be a mapping")
    name = check_name(str(raw.get("name") or path.stem), f"{path}: job name")  # out_dir: <root>/generated/<name>
    data = from_dict(DataConfig, raw.get("dataset") or {}, f"{path}: ", "dataset.")
    gen = GenerateConfig.from_dict(raw.get("generate") or {}, f"{path}: generate")
    launch = from_dict(GenerateLaunch, raw.get("launch") or {}, f"{path}: ", "launch.")
    for key in ("array_size", "ranks", "threads"):
        if getattr(launch, key) < 1:
            raise ConfigError(f"{path}: key 'launch.{key}' must be at least 1, got {getattr(launch, key)}")
    out_dir = Path(raw.get("out_dir") or Path(data.root) / "generated" / name)
    data = dataclasses.replace(data, root=str(Path(data.root).resolve()),
                               dataset=str(Path(data.dataset).resolve()) if Path(data.dataset).suffix else data.dataset)
    return Job(name, path, data, _absolute_paths(gen), launch, out_dir.resolve())


def _absolute_paths(gen: GenerateConfig) -> GenerateConfig:
    """The model (when a local path) and the prompts file as absolute paths: tasks run elsewhere."""
    model = Path(gen.model).expanduser()
    prompts = gen.prompts_file and str(Path(gen.prompts_file).resolve())
    return dataclasses.replace(gen, model=str(model.resolve()) if model.exists() else gen.model,
                               prompts_file=prompts)


# --- the plan ------------------------------------------------------------------------------------

def assumed_balanced(data: DataConfig) -> bool:
    """True when a dry run plans from the card's n_max because the dataset is not prepared yet."""
    from harness.data import load_card
    from harness.data.conversion import data_dir, read_manifest

    card = load_card(data.dataset)
    unprepared = read_manifest(data_dir(card, data.root)) is None
    return bool(card.n_max) and card.source.get("kind") != "synthetic" and unprepared


def train_split(data: DataConfig, dry_run: bool = False):
    """(card, train.beton as a Beton, long-tailed split) exactly as training builds them from `data`.

    A dry run on a dataset not prepared yet plans from n_max images per class (the card's);
    train.beton is then None.
    """
    from harness.data import Beton, load_card, prepare
    from harness.data.imbalance import long_tail

    card = load_card(data.dataset)
    if dry_run and assumed_balanced(data):
        train, labels = None, np.repeat(np.arange(card.num_classes), card.n_max)
    else:
        train = Beton(prepare(card, data.root) / "train.beton")
        labels = train.labels
    split = long_tail(labels, card.num_classes, data.imbalance, data.imbalance_factor,
                      data.imbalance_params, data.val_fraction if data.val == "split" else 0.0)
    return card, train, split


def plan_job(job: Job, dry_run: bool = False) -> ShardSpec:
    """The dataset's long-tailed training counts and the images each class needs."""
    card, _, split = train_split(job.data, dry_run)
    plan = Plan.from_train_counts(job.gen, card.classes, split.counts)
    return ShardSpec(gen=job.gen, class_names=list(card.classes), counts=plan.counts, real_counts=split.counts,
                     out_dir=str(job.out_dir), data=job.data, array_size=job.launch.array_size,
                     ranks=job.launch.ranks, threads=job.launch.threads)


def pending_tasks(spec: ShardSpec) -> list[int]:
    """Array tasks with at least one image not yet on disk."""
    batches = spec.plan().batches()

    def task_done(task: int) -> bool:
        return all(is_done(spec.out_dir, item) for k in range(task * spec.ranks, (task + 1) * spec.ranks)
                   for batch in shard(batches, k, spec.num_shards) for item in batch)
    return [t for t in range(spec.array_size) if not task_done(t)]


def describe(job: Job, spec: ShardSpec) -> str:
    """The dry-run listing: images per class, then the shards."""
    lines = [f"job {job.name}: {Path(job.data.dataset).stem}, {job.data.imbalance} IF {job.data.imbalance_factor:g}, "
             f"fill {job.gen.fill} -> {sum(spec.counts)} images into {spec.out_dir}",
             f"{'class':>5}  {'name':<16} {'real':>6} {'generate':>8} {'total':>6}"]
    for c, (name, n, g) in enumerate(zip(spec.class_names, spec.real_counts, spec.counts)):
        lines.append(f"{c:>5}  {name:<16} {n:>6} {g:>8} {n + g:>6}")
    plan = spec.plan()
    per_shard = [sum(len(b) for b in shard(plan.batches(), k, spec.num_shards)) for k in range(spec.num_shards)]
    done = sum(is_done(spec.out_dir, item) for item in plan.items)
    lines.append(f"shards: {spec.num_shards} ({spec.array_size} array tasks x {spec.ranks} ranks), "
                 f"{len(plan.batches())} batches of up to {job.gen.batch_size}; images per shard: "
                 + " ".join(map(str, per_shard)))
    lines.append(f"already on disk: {done} of {len(plan)}")
    if assumed_balanced(job.data):
        lines.append(f"note: {job.data.dataset} is not prepared under {job.data.root}; planned from the card's "
                     f"n_max images per class (prepare it before a real run)")
    return "\n".join(lines)


# --- shard processes -----------------------------------------------------------------------------

def join_ranks():
    """This process's place among its task's ranks (submitit's, else torchrun's), joined by gloo/NCCL."""
    from harness import dist

    try:
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    except RuntimeError:  # not a submitit job
        pass
    return dist.init(BARRIER_TIMEOUT_S)


def _real_images(spec: ShardSpec) -> dict[int, list[np.ndarray]]:
    """img2img: class -> the class's images in the long-tailed training subset (HWC uint8)."""
    _, train, split = train_split(spec.data)
    images, labels = train.read(split.indices)
    images, labels = images.permute(0, 2, 3, 1).numpy(), labels.numpy()
    return {c: list(images[labels == c]) for c in range(len(spec.counts))}


def run_shards(spec: ShardSpec, tasks: list[int], log_every: float = 60.0) -> list[dict]:
    """This process's shard of each array task in `tasks`; all ranks meet in a barrier at the end."""
    import torch

    from harness import dist
    from harness.generate.model import load_pipeline_for
    from harness.generate.run import generate_shard

    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        env = join_ranks()
        rank, world = env.rank, env.world_size
        backend = torch.distributed.get_backend() if env.distributed else "none"
        summaries = []
        if tasks:
            pipe = load_pipeline_for(spec.gen, env.device)
            init = _real_images(spec) if spec.gen.mode == "img2img" else None
            plan = spec.plan()
            for task in tasks:
                summary = generate_shard(spec.gen, plan, spec.out_dir, task * world + rank, spec.array_size * world,
                                         pipe, init_images=init, log_every=log_every)
                summaries.append({**summary, "task": task, "rank": rank, "world": world, "backend": backend})
        dist.barrier()
    finally:
        torch.set_num_threads(threads)
    return summaries


class ShardTask(submitit.helpers.Checkpointable):
    """One array task: run `spec` for task index `task` in each of its rank processes.

    Checkpointable: preempted or out of time, the task is requeued as it was; it skips the
    images already written.
    """

    def __init__(self, spec: ShardSpec):
        self.spec = spec

    def __call__(self, task: int) -> list[dict]:
        from harness import dist

        try:
            return run_shards(self.spec, [task])
        finally:
            dist.shutdown()


# --- launchers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _importable():
    """PYTHONPATH with the repository root while jobs are submitted (they inherit the environment)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _executor(job: Job, spec: ShardSpec, n_tasks: int):
    """A submitit executor for the job's cluster: `ranks` processes per task, one GPU each if any."""
    import torch

    folder = Path(spec.out_dir) / ".submitit"
    if job.launch.cluster == "local":
        executor = submitit.LocalExecutor(folder=str(folder / "%j"))
        executor.update_parameters(timeout_min=7 * 24 * 60, tasks_per_node=spec.ranks,
                                   gpus_per_node=min(spec.ranks, torch.cuda.device_count()))
        return executor
    from harness.sweep.profiles import check_cluster, load_profile
    from harness.sweep.slurm import executor

    profile = load_profile(job.launch.profile, job.launch.slurm)
    check_cluster(profile)
    params = {**profile.executor_params(), "nodes": 1, "tasks_per_node": spec.ranks, "name": f"gen-{job.name}",
              "slurm_array_parallelism": min(profile.array_parallelism, n_tasks)}
    if profile.gpus_per_node > 0:
        params["gpus_per_node"] = spec.ranks
    return executor(folder, profile, params)


def submit(job: Job, spec: ShardSpec, tasks: list[int]) -> list[dict]:
    """Submit one array task per pending task, wait for all, return every rank's summaries."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = _executor(job, spec, len(tasks))
    try:
        with _importable():
            jobs = executor.map_array(ShardTask(spec), tasks)
    except (FailedJobError, FailedSubmissionError, OSError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"submitting {len(tasks)} array tasks failed: {lines[-1] if lines else e}; "
                          f"fix launch.profile / launch.slurm") from None
    ids = [j.job_id for j in jobs]
    _jobs_file(spec).write_text(json.dumps({"cluster": job.launch.cluster, "job_ids": ids}))
    print(f"submitted {len(jobs)} array task(s) x {spec.ranks} rank(s) ({job.launch.cluster}): {' '.join(ids)}",
          flush=True)
    try:
        _wait(lambda: _running(job.launch.cluster, jobs), spec)
    except KeyboardInterrupt:
        if job.launch.cluster == "local":
            for j in jobs:
                j.cancel(check=False)
        else:
            print(f"the SLURM jobs keep running ({' '.join(ids)}); run the same command again to wait for "
                  f"them and pack, or scancel them", file=sys.stderr)
        raise
    return [s for task, j in zip(tasks, jobs) for s in _task_summaries(task, j, spec.ranks)]


def _jobs_file(spec: ShardSpec) -> Path:
    return Path(spec.out_dir) / ".submitit" / "jobs.json"


def _running(cluster: str, jobs: list) -> int:
    """How many of `jobs` are still queued or running (SLURM: one squeue call)."""
    if cluster == "slurm":
        from harness.sweep.scheduler import queued

        return len(queued([j.job_id for j in jobs]))
    return sum(not j.done() for j in jobs)


def wait_for_earlier(spec: ShardSpec) -> None:
    """If SLURM jobs of an earlier submission of this output folder are still queued, wait for them."""
    from harness.sweep.scheduler import queued

    path = _jobs_file(spec)
    if not path.is_file() or json.loads(path.read_text())["cluster"] != "slurm":
        return
    ids = json.loads(path.read_text())["job_ids"]
    if queued(ids):
        print(f"waiting for the SLURM jobs of an earlier run: {' '.join(ids)}", flush=True)
        _wait(lambda: len(queued(ids)), spec)


def _wait(running, spec: ShardSpec) -> None:
    """Poll until running() is 0, printing a progress line now and then."""
    last = time.monotonic()
    while (left := running()) > 0:
        time.sleep(POLL_S)
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            done = len(list(Path(spec.out_dir).glob("images/*/*.png")))
            print(f"{left} task(s) running, {done}/{sum(spec.counts)} images on disk", flush=True)


def _task_summaries(task: int, job, ranks: int) -> list[dict]:
    """Every rank's summaries from its result file; a failed or vanished rank is a one-line error."""
    from submitit.core.utils import pickle_load

    out = []
    for rank in range(ranks):
        paths = job.task(rank).paths if ranks > 1 else job.paths
        if not paths.result_pickle.is_file():
            raise ConfigError(f"array task {task} (job {job.job_id}) rank {rank} ended without a result "
                              f"(killed, out of memory or out of time?); log: {paths.stderr}")
        outcome, value = pickle_load(paths.result_pickle)
        if outcome != "success":
            lines = [line for line in str(value).splitlines() if line.strip()]
            raise ConfigError(f"array task {task} (job {job.job_id}) rank {rank} failed: "
                              f"{lines[-1] if lines else outcome}; log: {paths.stderr}")
        out.extend(value)
    return out


def finalize(spec: ShardSpec) -> dict:
    """After all shards: drop stale temp files, write manifest.jsonl, pack the .beton files."""
    from harness.data.generated import mixed_beton
    from harness.generate.pack import pack
    from harness.generate.run import write_manifest

    for tmp in Path(spec.out_dir).glob("images/*/.*.tmp"):
        tmp.unlink(missing_ok=True)  # left by a killed process; no shard is running now
    write_manifest(spec.out_dir)
    info = pack(spec.out_dir)
    if info["images"]:
        mixed_beton(train_split(spec.data)[1], spec.out_dir)
    return info


def run_job(job: Job, spec: ShardSpec) -> list[dict]:
    """Generate every pending shard on the job's cluster; finalize; return the shard summaries."""
    if job.launch.cluster == "debug":
        from harness import dist

        try:
            spec = dataclasses.replace(spec, ranks=join_ranks().world_size)  # under torchrun: its ranks
            summaries = run_shards(spec, pending_tasks(spec))
            if join_ranks().is_main:
                finalize(spec)
            dist.barrier()  # every rank returns once the output is packed
        finally:
            dist.shutdown()
        return summaries
    if job.launch.cluster == "slurm":
        wait_for_earlier(spec)
    tasks = pending_tasks(spec)
    summaries = submit(job, spec, tasks) if tasks else []
    finalize(spec)
    return summaries
