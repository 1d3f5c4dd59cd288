"""Training throughput (images/s) on the CPU:

    step     the harness's training step (Trainer.train_step: augmentation hook, normalisation,
             autocast context, model, registered loss, backward, SGD step) against a minimal
             hand-written PyTorch step (normalise, forward, cross-entropy, backward, SGD step)
             on the same model and initial weights and the same batches, in one process,
             alternating step by step (A B B A), `--threads` torch threads; the median step
             time of each counts.
             Target: ratio >= 0.95.
    scaling  the harness on 1 gloo rank and on 2 (weak scaling: `--rank-batch` images per rank
             and step), each rank one thread pinned to its own core, started with torchrun's
             variables; efficiency = images/s on 2 ranks / (2 x images/s on 1 rank).

Data: the synthetic card (32x32, 10 classes), balanced, sized for the steps asked; no
augmentation. No GPU is needed or used. Prints the ratios, writes bench/results/train_step.json.

    python bench/train_step.py [--model resnet32] [--batch 128] [--steps 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from harness.config import RunConfig, from_dict, to_dict  # noqa: E402
from harness.data import load_card, prepare  # noqa: E402
from harness.files import atomic_write_text  # noqa: E402
from harness.run.trainer import Trainer  # noqa: E402
from harness.rundir import RunDir  # noqa: E402

NUM_CLASSES = 10


def make_card(folder: Path, per_class: int) -> Path:
    """The synthetic card with `per_class` training images per class, its .beton files written."""
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    card["name"] = f"bench{per_class}"
    card["source"].update(train_per_class=per_class, test_per_class=10)
    path = folder / f"{card['name']}.yaml"
    path.write_text(yaml.safe_dump(card))
    threads = torch.get_num_threads()
    prepare(load_card(str(path)), folder / "data")
    torch.set_num_threads(threads)  # FFCV's writer sets torch's thread count to its own
    return path


def run_config(card: Path, model: str, batch: int) -> RunConfig:
    return from_dict(RunConfig, {
        "data": {"dataset": str(card), "root": str(card.parent / "data"), "loader": "memory",
                 "imbalance": "none"},
        "aug": {"name": "none"}, "model": {"name": model}, "optim": {"batch_size": batch, "lr": 0.05},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "decay": "constant"},
        "log": {"print_every": 0, "images": False}})


def hand_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, mean, std) -> None:
    """One step of the minimal loop."""
    logits, _ = model((x.float() - mean) / std)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_step(folder: Path, model: str, batch: int, steps: int, rounds: int) -> dict:
    """Harness vs hand-written step on the same batches, alternating A B B A so that the load of
    a busy machine falls on both alike; images/s from the median step time of each."""
    card = make_card(folder, -(-batch * steps // NUM_CLASSES))
    trainer = Trainer(run_config(card, model, batch), folder / "step")
    hand_model = copy.deepcopy(trainer.model)
    o = trainer.cfg.optim
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    data = trainer.data
    trainer.net.train()
    hand_model.train()
    x, y = next(iter(data.train))
    trainer.train_step(x, y)  # warm-up
    hand_step(hand_model, hand_opt, x, y, data.mean, data.std)
    times = {"hand": [], "harness": []}
    for _ in range(rounds):
        for i, (x, y) in enumerate(data.train):
            order = ("harness", "hand") if i % 2 == 0 else ("hand", "harness")
            for name in order:
                times[name].append(timed(trainer.train_step, x, y) if name == "harness" else
                                   timed(hand_step, hand_model, hand_opt, x, y, data.mean, data.std))
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {"steps_timed": len(times["hand"]), "hand_images_per_s": ips["hand"],
            "harness_images_per_s": ips["harness"], "ratio": ips["harness"] / ips["hand"], "target": 0.95}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cell: Path, world: int, steps: int) -> float:
    """Images/s of the harness on `world` pinned single-thread ranks (rank 0's report)."""
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank-worker", str(cell), "--steps", str(steps)],
                                      env=env,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed in {cell}")
    return json.loads(outs[0].strip().splitlines()[-1])["images_per_s"]


def rank_worker(cell: Path, steps: int) -> None:
    """One rank: pinned to core `rank`, one thread; 2 warm-up steps, then `steps` timed ones."""
    rank = int(os.environ["RANK"])
    os.sched_setaffinity(0, {rank % os.cpu_count()})
    torch.set_num_threads(1)
    trainer = Trainer(RunDir(cell).read_config(), cell)
    trainer.net.train()
    batches = list(trainer.data.train)[:steps + 2]
    for x, y in batches[:2]:
        trainer.train_step(x, y)
    t0 = time.perf_counter()
    for x, y in batches[2:]:
        trainer.train_step(x, y)
    elapsed = time.perf_counter() - t0  # the ranks move in lockstep: each step all-reduces
    if trainer.env.is_main:
        print(json.dumps({"images_per_s": trainer.cfg.optim.batch_size * steps / elapsed}), flush=True)


def bench_scaling(folder: Path, model: str, rank_batch: int, steps: int) -> dict:
    """Weak scaling from 1 to 2 ranks: the same per-rank batch and steps."""
    card = make_card(folder, -(-2 * rank_batch * (steps + 2) // NUM_CLASSES))
    ips = {}
    for world in (1, 2):
        cell = folder / f"ranks{world}"
        cell.mkdir()
        cfg = run_config(card, model, rank_batch * world)
        atomic_write_text(cell / "config.yaml", yaml.safe_dump(to_dict(cfg)))
        ips[world] = run_ranks(cell, world, steps)
    return {"per_rank_batch": rank_batch, "one_rank_images_per_s": ips[1], "two_ranks_images_per_s": ips[2],
            "efficiency": ips[2] / (2 * ips[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet32")
    p.add_argument("--batch", type=int, default=128, help="batch of the step comparison")
    p.add_argument("--rank-batch", type=int, default=64, help="per-rank batch of the scaling runs")
    p.add_argument("--steps", type=int, default=8, help="batches per round (step), timed steps (scaling)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds of the step comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the step comparison")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    p.add_argument("--rank-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_worker:
        return rank_worker(Path(args.rank_worker), args.steps)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        step = bench_step(Path(tmp) / "step", args.model, args.batch, args.steps, args.rounds)
        print(f"step   : harness {step['harness_images_per_s']:7.1f} img/s, hand-written "
              f"{step['hand_images_per_s']:7.1f} img/s, ratio {step['ratio']:.3f} (target >= 0.95)", flush=True)
        scaling = bench_scaling(Path(tmp) / "scaling", args.model, args.rank_batch, args.steps)
        print(f"scaling: 1 rank {scaling['one_rank_images_per_s']:7.1f} img/s, 2 ranks "
              f"{scaling['two_ranks_images_per_s']:7.1f} img/s, efficiency {scaling['efficiency']:.3f}", flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "note": "CPU only; measured on a shared 2-core machine busy with other work, so absolute "
                "numbers are noisy; the step comparison alternates its contenders step by step in one process",
        "config": {"model": args.model, "batch": args.batch, "rank_batch": args.rank_batch,
                   "steps": args.steps, "rounds": args.rounds, "threads": args.threads},
        "step": step, "scaling": scaling,
        "gpu": None,  # no GPU was lent to this task: the CIFAR-10-LT ResNet-32 GPU epoch is not measured
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
