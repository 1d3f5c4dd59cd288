"""Distributed training on the CPU with real processes: gloo ranks started with torchrun's
variables, DeepSpeed ZeRO-1 over gloo, and a 2-task job on the real local SLURM.

Equivalence setting: batch norm normalises with its stored statistics (eval-mode BN inside a
training step). SyncBatchNorm has no CPU kernel, and plain BN in train mode normalises over
each rank's 64 samples instead of the global 128, so it would differ by design; with stored
statistics the loss is a mean of per-sample terms and the averaged gradients must agree.
The runs are in float64: in float32, summing 2 x 64 instead of 128 per-sample gradients differs
by ~3e-6 (relative) and three steps at lr 0.1 grow that to ~1e-4, too loose to tell a bug
from noise; in float64 DDP agrees to 1e-12. DeepSpeed's ZeRO steps fp32 master copies of the
weights whatever their dtype, so its tolerance is float32's. The steps run at lr 0.02: at 0.1,
with the Kaiming-initialised classifier (LDAM-DRW's init) the three steps move the weights by up to
0.4 and amplify ZeRO's float32 rounding to ~2e-5 (measured; at 0.02 it is ~1e-7 and they move 0.07).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig, from_dict, signature
from harness.data import load_card, prepare
from harness.dist import DistEnv
from harness.grid import Cell, load_grid
from harness.models import build_model
from harness.registry import ConfigError
from harness.run.trainer import Trainer
from harness.run.wrap import COMPILE_MIN_STEPS, Precision, bf16_pays, choose_precision, compiles, cpu_info, native_bf16
from harness.rundir import RunDir
from harness.topology import Topology, environment, first_host, master_port, topology
from support import ROOT
from support.dist_worker import run_steps

WORKER = ROOT / "tests" / "support" / "dist_worker.py"
STEPS = 3


def cell_config(card: Path, data_root: Path, **overrides) -> RunConfig:
    """ResNet-8 on the tiny card: 600 images, no augmentation, global batch 128 (4 steps, 1 epoch)."""
    tree = {"data": {"dataset": str(card), "root": str(data_root), "loader": "memory", "imbalance_factor": 1},
            "model": {"name": "resnet8"}, "aug": {"name": "none"}, "optim": {"batch_size": 128, "lr": 0.02},
            "schedule": {"epochs": 1, "warmup_epochs": 0, "decay": "constant"},
            "log": {"print_every": 0, "images": False}, "dist": {"precision": "fp32"}}  # exact comparisons
    for section, values in overrides.items():
        tree.setdefault(section, {}).update(values)
    return from_dict(RunConfig, tree)


def make_cell(folder: Path, cfg: RunConfig) -> Path:
    RunDir(folder).write_cell("dist", Cell(cfg, {}, signature(cfg)))
    return folder


@contextmanager
def float64():
    """Build models in float64 in this process."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(world: int, *args, log_dir: Path, env: dict | None = None, timeout_s: float = 300) -> list[dict]:
    """`world` worker processes with torchrun's variables; each one's exit code, exit time and output."""
    port, procs, files = free_port(), [], []
    for rank in range(world):
        out, err = open(log_dir / f"out{rank}.txt", "w"), open(log_dir / f"err{rank}.txt", "w")
        files += [out, err]
        rank_env = {**os.environ, **(env or {}), "RANK": str(rank), "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                    "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=rank_env,
                                      stdout=out, stderr=err, cwd=ROOT))
    ended, deadline = {}, time.monotonic() + timeout_s
    while len(ended) < world and time.monotonic() < deadline:
        for rank, p in enumerate(procs):
            if rank not in ended and p.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for f in files:
        f.close()
    assert len(ended) == world, f"ranks still running after {timeout_s} s: {sorted(set(range(world)) - set(ended))}"
    return [{"code": p.returncode, "ended": ended[r], "out": (log_dir / f"out{r}.txt").read_text(),
             "err": (log_dir / f"err{r}.txt").read_text()} for r, p in enumerate(procs)]


def assert_ok(ranks: list[dict]) -> None:
    for rank, r in enumerate(ranks):
        assert r["code"] == 0, f"rank {rank} failed:\n{r['err'][-3000:]}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_card) -> Path:
    """The tiny card's .beton files, written once here so that ranks never race to write them."""
    root = tmp_path_factory.mktemp("data")
    prepare(load_card(str(tiny_card)), root)
    return root


def steps_run(tmp_path_factory, tiny_card, data_root, name: str, world: int, loss: str = "ce", **dist) -> Path:
    """STEPS float64 steps of a `world`-rank run; its folder holds the cell and the worker's outputs."""
    folder = make_cell(tmp_path_factory.mktemp(name),
                       cell_config(tiny_card, data_root, dist=dist, loss={"name": loss}))
    if world == 1:
        with float64():
            run_steps(folder, STEPS, folder)
    else:
        assert_ok(launch_ranks(world, "steps", folder, STEPS, folder, log_dir=folder,
                               env={"LT_DEFAULT_DTYPE": "float64"}))
    return folder


# The equivalence runs train a sigmoid loss: its head bias is a second parameter group without
# weight decay, so the ranks and ZeRO-1's shards must keep two groups apart as well as one.
EQUIVALENCE_LOSS = "cb_sigmoid"


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, tiny_card, data_root) -> Path:
    return steps_run(tmp_path_factory, tiny_card, data_root, "one", 1, loss=EQUIVALENCE_LOSS)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_card, data_root) -> Path:
    return steps_run(tmp_path_factory, tiny_card, data_root, "ddp", 2, loss=EQUIVALENCE_LOSS)


@pytest.fixture(scope="module")
def zero1(tmp_path_factory, tiny_card, data_root) -> Path:
    return steps_run(tmp_path_factory, tiny_card, data_root, "zero1", 2, loss=EQUIVALENCE_LOSS,
                     engine="deepspeed", zero_stage=1)


def checkpoint(folder: Path) -> dict:
    return torch.load(folder / "ckpt" / "last.pt", weights_only=True)


def assert_same_state(a: dict, b: dict, rtol: float, atol: float) -> None:
    """Model weights, buffers and momentum buffers agree."""
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=rtol, atol=atol,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, s in a["optimizer"]["state"].items():
        torch.testing.assert_close(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"],
                                   rtol=rtol, atol=atol, msg=lambda m, i=i: f"momentum of parameter {i}: {m}")


# --- environment ---------------------------------------------------------------------------

def test_topology_from_torchrun_and_slurm_variables():
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert topology(torchrun) == Topology(3, 1, 4, "n1", 1234)
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "123456",
             "SLURM_JOB_NODELIST": "gpu[07-09],cpu1"}
    t = topology(slurm)
    assert (t.rank, t.local_rank, t.world_size, t.master_addr) == (5, 1, 8, "gpu07")
    assert t.master_port == master_port("123456") != master_port("123457")
    assert 20000 <= t.master_port < 40000
    assert topology({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1
    assert topology({}).world_size == 1
    assert first_host("vm") == "vm"



def test_a_process_confined_to_one_cpu_counts_one_usable_cpu():
    """usable_cpus (the local backend divides it among its cells) reads the affinity mask that srun
    --cpus-per-task or taskset sets, not the machine's CPU count."""
    code = "from harness.topology import usable_cpus; print(usable_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert out.stdout.strip() == "1", out.stdout



def test_a_sweeps_environment_for_its_jobs_is_undone_after(monkeypatch):
    """What the local backend sets for the cells it starts (LT_THREADS, the snapshot's PYTHONPATH)
    does not stay in the submitting process, where a later in-process run would take it."""
    monkeypatch.setenv("PYTHONPATH", "/mine")
    monkeypatch.delenv("LT_THREADS", raising=False)
    with environment({"LT_THREADS": "1", "PYTHONPATH": "/snapshot"}):
        assert (os.environ["LT_THREADS"], os.environ["PYTHONPATH"]) == ("1", "/snapshot")
    assert "LT_THREADS" not in os.environ and os.environ["PYTHONPATH"] == "/mine"

def test_each_test_worker_trains_on_one_thread():
    """tools/test.sh's two pytest-xdist workers share two cores: one torch thread each (tests/conftest.py),
    not the two a worker inherits from the controller, which oversubscribe the cores."""
    expected = 1 if os.environ.get("PYTEST_XDIST_WORKER") else int(os.environ["OMP_NUM_THREADS"])
    assert torch.get_num_threads() == expected

def test_global_batch_must_split_evenly_over_the_ranks(tmp_path, tiny_card, data_root):
    cfg = cell_config(tiny_card, data_root)
    with pytest.raises(ConfigError, match=r"optim.batch_size 128 .* world size 3"):
        Trainer(cfg, tmp_path, env=DistEnv(world_size=3))


def test_sync_bn_on_the_cpu_is_refused(tmp_path, tiny_card, data_root):
    cfg = cell_config(tiny_card, data_root, dist={"sync_bn": True})
    with pytest.raises(ConfigError, match="dist.sync_bn"):
        Trainer(cfg, tmp_path, env=DistEnv(rank=0, world_size=2))


def test_auto_precision_is_bf16_where_it_pays_on_the_cpu_and_fp32_stays_one_key_away(tmp_path):
    vendor, flags = cpu_info()
    words = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    assert native_bf16() == bool((words | flags) & {"avx512_bf16", "amx_bf16", "bf16"})
    intel, amd = "GenuineIntel", "AuthenticAMD"  # what bench/precision.py measured (bf16_pays)
    assert bf16_pays(intel, {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert bf16_pays(amd, {"avx512f", "avx512_bf16"})
    assert not bf16_pays(intel, {"avx512f", "avx512_bf16"})  # bf16 kernels that lose to fp32
    assert not bf16_pays(amd, {"avx2"}) and not bf16_pays("", {"bf16"})  # no bf16; Arm: unmeasured
    cpu = torch.device("cpu")
    auto, fp32 = from_dict(RunConfig, {}), from_dict(RunConfig, {"dist": {"precision": "fp32"}})
    assert choose_precision(auto, cpu) == Precision("cpu", bf16_pays(vendor, flags), True)
    assert choose_precision(fp32, cpu) == Precision("cpu", False, True)
    nchw = from_dict(RunConfig, {"dist": {"precision": "bf16"}, "model": {"channels_last": False}})
    assert choose_precision(nchw, cpu) == Precision("cpu", True, False)
    for grid in ("cifar_lt_paper.yaml", "cifar_lt_decoupled.yaml"):  # the paper protocol computes in fp32
        assert {c.config.dist.precision for c in load_grid(ROOT / "jobs" / grid).cells} == {"fp32"}


def test_bf16_and_channels_last_on_the_cpu_and_compile_auto_leaves_a_short_run_eager(tmp_path, tiny_card, data_root):
    """bf16 asked for on the CPU autocasts there, in channels_last; model.compile auto compiles only
    runs of COMPILE_MIN_STEPS steps (this one has 4)."""
    cfg = cell_config(tiny_card, data_root, dist={"precision": "bf16"},
                      model={"name": "resnet8", "channels_last": True, "compile": "auto"})
    trainer = Trainer(cfg, tmp_path)
    assert trainer.net is trainer.model  # neither wrapped nor compiled
    assert compiles(cfg, COMPILE_MIN_STEPS) and not compiles(cfg, COMPILE_MIN_STEPS - 1)
    assert not compiles(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compile=False)), 10 ** 6)
    x, y = next(iter(trainer.data.train))
    with trainer.precision.autocast():
        logits, _ = trainer.net(trainer.inputs(x))
    assert logits.dtype == torch.bfloat16
    assert trainer.inputs(x).is_contiguous(memory_format=torch.channels_last)
    before = trainer.model.head.weight.detach().clone()
    loss = trainer.train_step(x, y)
    assert torch.isfinite(loss)
    assert trainer.model.head.weight.dtype == torch.float32
    assert not torch.equal(before, trainer.model.head.weight)


@pytest.mark.slow
def test_a_compiled_run_trains_on_the_cpu_and_matches_the_eager_run(tmp_path, tiny_card, data_root):
    """model.compile true compiles on the CPU too (inductor); the compiled step computes what the
    eager one does, to float32's rounding of reordered kernels."""
    results = {}
    for compile_ in (False, True):
        cfg = cell_config(tiny_card, data_root, model={"name": "resnet8_narrow", "compile": compile_})
        trainer = Trainer(cfg, tmp_path / str(compile_))
        assert (trainer.net is not trainer.model) == compile_
        results[compile_] = trainer.train()
    eager, compiled = (results[k]["history"][0] for k in (False, True))
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert abs(compiled["top1"] - eager["top1"]) <= 2.0


# --- equivalence, shares, checkpoints -------------------------------------------------------

@pytest.mark.slow
def test_ddp_two_ranks_match_one_rank(one_rank, ddp):
    """2 ranks x 64 and 1 rank x 128 reach the same weights and momentum after STEPS steps."""
    reference, two = checkpoint(one_rank), checkpoint(ddp)
    assert two["world_size"] == 2 and two["step_in_epoch"] == STEPS and len(two["generators"]) == 2
    assert two["model"]["head.weight"].dtype == torch.float64
    assert_same_state(reference, two, rtol=1e-9, atol=1e-12)
    init = torch.load(one_rank / "init.pt")
    moved = max((init[k] - two["model"][k]).abs().max().item() for k in init if init[k].is_floating_point())
    assert moved > 1e-2  # the steps did change the weights, far beyond the tolerance


@pytest.mark.slow
def test_deepspeed_zero1_matches_one_rank(one_rank, zero1):
    """ZeRO-1 shards the momentum over the ranks; gathered into the checkpoint it equals one rank's."""
    assert_same_state(checkpoint(one_rank), checkpoint(zero1), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_ranks_keep_a_sigmoid_losss_bias_out_of_weight_decay(one_rank, ddp, zero1):
    """Two parameter groups (the head bias without weight decay) under DDP and ZeRO-1: checkpoints that
    name both groups and resume with them (the steps themselves match one rank's: the tests above)."""
    names = [name for name, _ in build_model("resnet8", 10, "linear").named_parameters()]
    last = len(names) - 1
    assert names[last] == "head.bias"
    for state in [checkpoint(f) for f in (one_rank, ddp, zero1)] + [torch.load(f / "reloaded.pt", weights_only=True)
                                                                   for f in (ddp, zero1)]:
        groups = [(g["weight_decay"], g["params"]) for g in state["optimizer"]["param_groups"]]
        assert groups == [(2e-4, list(range(last))), (0.0, [last])]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["ddp", "zero1"])
def test_a_fresh_two_rank_trainer_resumes_the_checkpoint_exactly(run, request):
    folder = request.getfixturevalue(run)
    reloaded = torch.load(folder / "reloaded.pt", weights_only=True)
    assert (reloaded["epoch"], reloaded["step_in_epoch"]) == (0, STEPS)
    assert_same_state(checkpoint(folder), reloaded, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(checkpoint(folder)["generators"], reloaded["generators"]))


@pytest.mark.slow
def test_ranks_read_disjoint_shares_of_one_global_order(one_rank, ddp):
    """Rank r's k-th training sample is the (2k + r)-th of the one-rank order, every epoch; the
    test set is read exactly once over the ranks."""
    one, r0, r1 = (torch.load(f / name) for f, name in
                   ((one_rank, "shares0.pt"), (ddp, "shares0.pt"), (ddp, "shares1.pt")))
    for epoch in (0, 1):
        interleaved = [i for pair in zip(r0["train"][epoch], r1["train"][epoch]) for i in pair]
        assert interleaved == one["train"][epoch][:len(interleaved)]
        assert len(interleaved) == len(one["train"][epoch]) == 600
    assert r0["train"][0] != r0["train"][1]
    assert sorted(r0["test"] + r1["test"]) == sorted(one["test"]) == list(range(200))


@pytest.mark.slow
@pytest.mark.parametrize("run", ["ddp", "zero1"])
def test_a_two_rank_checkpoint_resumes_on_one_rank(run, request, tmp_path):
    saved = request.getfixturevalue(run)
    folder = tmp_path / saved.name  # the cell's config and its checkpoint, nothing else
    shutil.copytree(saved / "ckpt", folder / "ckpt")
    shutil.copy(saved / "config.yaml", folder)
    with float64():
        trainer = Trainer(RunDir(folder).read_config(), folder)
        assert trainer.env.world_size == 1 and (trainer.epoch, trainer.step_in_epoch) == (0, STEPS)
        state = checkpoint(saved)
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, state["model"][key]), key
        result = trainer.train()
    assert result["world_size"] == 1 and result["epochs"] == 1 and len(result["history"]) == 1
    assert (folder / "result.json").is_file()


@pytest.mark.slow
def test_the_tau_search_over_two_ranks_chooses_as_one_rank(tmp_path, tiny_card, data_root):
    """τ-norm's search on a validation split shared out over 2 ranks: the per-class counts summed
    over the ranks give every candidate's accuracy, the chosen τ and the test result of one rank."""
    from harness.models import build_model
    first_cfg = cell_config(tiny_card, data_root, data={"val": "split"})
    first = RunDir(tmp_path / "first")  # a finished first stage: a fresh ResNet-8 as its best epoch
    first.write_config(first_cfg)
    torch.manual_seed(0)
    first.save_best_checkpoint({"model": build_model("resnet8", 10, "linear").state_dict(), "epoch": 1,
                                "val_top1": 0.0})
    first.write_result({"best": {"epoch": 1}})
    stage = {"kind": "tau_norm", "tau": "search", "from_epoch": "best", "from_run": str(first.path)}
    cfg = dataclasses.replace(first_cfg, stage=from_dict(RunConfig, {"stage": stage}).stage)
    one = Trainer(cfg, make_cell(tmp_path / "one", cfg)).train()
    assert_ok(launch_ranks(2, "job", make_cell(tmp_path / "two", cfg), log_dir=tmp_path))
    two = RunDir(tmp_path / "two").read_result()
    assert two["world_size"] == 2 and two["tau_search"] == one["tau_search"] and two["final"] == one["final"]
    assert len(set(one["tau_search"]["val_top1"].values())) > 1  # the candidates differ: a real choice


@pytest.fixture(scope="module")
def ddp_views(tmp_path_factory, tiny_card, data_root) -> Path:
    """STEPS float64 steps of a 2-rank BCL run with three views of each image (the projection, the
    cosine classifier and the class centres all train), then a checkpoint and a fresh trainer."""
    cfg = cell_config(tiny_card, data_root, loss={"name": "bcl"}, aug={"name": "standard,standard,standard"})
    folder = make_cell(tmp_path_factory.mktemp("views"), cfg)
    assert_ok(launch_ranks(2, "steps", folder, STEPS, folder, log_dir=folder, env={"LT_DEFAULT_DTYPE": "float64"}))
    return folder


@pytest.mark.slow
def test_a_multi_view_contrastive_run_trains_and_resumes_under_ddp(ddp_views):
    """Each rank contrasts the views of its own share; DDP averages the gradients of every part,
    the class centres' MLP included, and a fresh trainer resumes the checkpoint exactly."""
    saved = checkpoint(ddp_views)
    reloaded = torch.load(ddp_views / "reloaded.pt", weights_only=True)
    assert saved["world_size"] == 2 and saved["step_in_epoch"] == STEPS
    assert_same_state(saved, reloaded, rtol=0, atol=0)
    init = torch.load(ddp_views / "init.pt")
    for part in ("backbone.", "head.", "projection.", "centres."):
        moved = max((init[k] - saved["model"][k]).abs().max().item() for k in init
                    if k.startswith(part) and init[k].is_floating_point())
        assert moved > 1e-4, part


# --- failures and SLURM -------------------------------------------------------------------

@pytest.mark.slow
def test_a_failing_rank_ends_the_whole_job_quickly(tmp_path, tiny_card, data_root):
    timeout_s = 120
    folder = make_cell(tmp_path / "cell", cell_config(tiny_card, data_root, dist={"timeout_s": timeout_s}))
    ranks = launch_ranks(2, "job", folder, log_dir=tmp_path, env={"LT_FAIL_RANK": "1", "LT_FAIL_STEP": "2"})
    assert ranks[1]["code"] != 0 and "injected failure on rank 1 at step 2" in ranks[1]["err"]
    assert ranks[0]["code"] != 0 and "Connection closed by peer" in ranks[0]["err"]
    assert ranks[0]["ended"] - ranks[1]["ended"] < timeout_s / 4  # it did not wait for the collective timeout
    state = RunDir(folder).read_state()
    assert state["state"] == "failed"  # with the cause, not rank 0's lost connection
    assert state["error"] == "rank 1: RuntimeError: injected failure on rank 1 at step 2"
    assert not (folder / "result.json").exists()


@pytest.mark.slow
def test_a_two_task_slurm_job_trains_logs_once_and_writes_one_result(slurm_cluster, tmp_path, tiny_card, data_root):
    import submitit

    from harness.sweep.job import TrainJob
    from harness.sweep.profiles import load_profile

    cfg = cell_config(tiny_card, data_root, data={"imbalance_factor": 10}, optim={"batch_size": 64, "lr": 0.05},
                      schedule={"epochs": 2})
    folder = make_cell(tmp_path / "cell", cfg)
    profile = load_profile("local", {"tasks_per_node": 2, "mem_gb": 4, "time_min": 10,
                                     "setup": [f"export PYTHONPATH={ROOT}"]})
    executor = submitit.AutoExecutor(folder=tmp_path / "slurm" / "%j", cluster="slurm")
    executor.update_parameters(**profile.executor_params())
    job = executor.submit(TrainJob(folder))
    deadline = time.monotonic() + 300
    while not job.done() and time.monotonic() < deadline:
        time.sleep(1)
    assert job.done(), "the 2-task job did not finish in 300 s"
    outputs = [Path(job.task(t).paths.stdout).read_text() for t in range(2)]
    assert job.num_tasks == 2 and [r["signature"] for r in job.results()] == [folder.name] * 2, outputs
    assert outputs[0].count("epoch 2/2") == 1 and f"[{folder.name}]" not in outputs[1]
    result = (folder / "result.json").read_text()
    assert '"world_size": 2' in result and RunDir(folder).read_state()["state"] == "finished"
    assert len(list((folder / "tb").glob("events.out.tfevents.*"))) == 1
