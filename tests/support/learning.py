"""What the learning tests share: the learnable long-tailed set, its base recipe, its runs trained
once per session for every test and worker, and the table of the means over seeds.

The set (the `learn_data` fixture of tests/conftest.py): the procedural synthetic card with 300
training images per class before the imbalance (300 ... 3 at IF 100: 3 many-shot, 3 medium, 4
few-shot classes) and 50 test images per class. The base recipe: a narrow ResNet-8, batch 32 (23
steps an epoch; LDAM's margins need the steps), 15 epochs with the LDAM-DRW shape (warm-up, lr
x0.1 at 80 %), in fp32. Metrics are the last epoch's, the only one evaluated (log.eval_every 0).

The warm-up is 3 epochs of LDAM-DRW's per-epoch ramp (lr/3, 2lr/3, lr): its first two epochs give
the same total lr as the 2-epoch linear ramp from 0 that this recipe had before the ramp became
per-epoch (issue 15). With 2 epochs of the per-epoch ramp (lr/2, lr) ldam_drw lost about 5 points
of top-1 on this set (measured, mean of two seeds: 74.0 with the old ramp, 69.2 with lr/2, lr) and
no longer beat CE.

Why fp32 (dist.precision pinned, not auto). bf16 autocast does not pay for this model at batch 32
on one thread: 1201 against 1528 img/s in fp32 (channels_last both) on an Intel Xeon with
AVX512-BF16 and no AMX (bench/results/precision_resnet8_narrow_intel_no_amx.json), whole runs 15-17 s
in bf16 against 16-19 s in fp32 on an AMD EPYC. And an fp32 run ends where it ended on another CPU:
on two Intel CPUs, one with AMX, every fp32 mean of the contrastive test's table repeated to the
decimal, where in bf16 supcon ended at 61.5 top-1 on one and 58.5 on the other (under its margin).
"""
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.config import RunConfig, from_dict, signature
from harness.files import file_lock, read_json
from harness.grid.validate import validate
from harness.metrics import METRICS
from harness.run.trainer import Trainer
from harness.stages import first_stage_config
from support import write_card

SEEDS = (0, 1)

SCALED = {"optim": {"lr": 0.025}, "schedule": {"epochs": 30}}
"""The base recipe at the LDAM-DRW protocol's lr per image (0.1 at batch 128, so 0.025 at batch 32) for
30 epochs: the recipe of the loss-zoo and contrastive learning tests. At lr 0.1 (4x that per image)
LDAM-DRW's cosine head collapses onto the head classes for half a run in some seeds and ends anywhere
between 58 and 87 top-1 (bf16 and fp32, seeds 0 and 1, 15 epochs); at lr 0.025 it ends between 86.6
and 88.4 in all four (89.8 to 90.2 after 30 epochs). CE needs the 30 epochs at this lr (45 top-1
after 15; 79 after 30, above its 74 at lr 0.1 for 15)."""


def write_learn_card(folder: Path) -> Path:
    return write_card(folder, "learn", train_per_class=300, test_per_class=50)


def learn_config(card: Path, data_root: Path, seed: int, **sections) -> RunConfig:
    """The base recipe, with `sections` ({"loss": {...}, "optim": {...}}) merged into it."""
    tree = {
        "seed": seed,
        "data": {"dataset": str(card), "root": str(data_root), "loader": "memory", "imbalance_factor": 100},
        "model": {"name": "resnet8_narrow"},
        "loss": {"name": "ce"},
        "optim": {"batch_size": 32, "lr": 0.1},
        "schedule": {"epochs": 15, "warmup_epochs": 3, "decay": "step", "milestones": [0.8], "gamma": 0.1},
        "log": {"print_every": 0, "images": False, "eval_every": 0},  # the tests read the last epoch only
        "dist": {"precision": "fp32"},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    return from_dict(RunConfig, tree)


def shared_folder(tmp_path_factory) -> Path:
    """A folder that every pytest-xdist worker of this session sees (the parent of the workers' own
    base folders), or this process's base folder when it runs alone."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def one_thread():
    """One torch thread: a run's numbers are the same under tools/test.sh's workers (one thread each)
    and a plain pytest. With two threads the sums run in another order and a run ends elsewhere: the
    loss-zoo test passed at two threads and missed a margin at one on the same machine. One thread is
    also the fastest for these small models when other processes share the cores (bf16 on two
    threads was observed 7x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_final(cfg: RunConfig, wait: bool = True) -> dict | None:
    """The last epoch's top-1 and many/medium/few-shot accuracy of one validated run, trained once
    per session (CPU runs repeat exactly) on one thread, in runs/<signature> beside the card, where a
    second stage finds its first. Every worker of the session shares that folder: the first to ask
    trains the run and the others read its result. With `wait` False, None while another trains it."""
    folder = Path(cfg.data.dataset).parent / "runs" / signature(cfg)
    with file_lock(folder.parent / f"{folder.name}.lock", wait) as held:
        if not held:
            return None
        if not (folder / "result.json").is_file():
            validate(cfg)
            if cfg.stage.kind != "train":  # a second stage: its first stage first (maybe another worker's)
                train_final(first_stage_config(cfg))
            with one_thread():
                Trainer(cfg, folder).train()
        final = read_json(folder / "result.json")["final"]
    assert final["few"] is not None and final["many"] is not None  # every shot group present
    return final


def train_finals(cfgs: list[RunConfig]) -> list[dict]:
    """train_final of each config: first those that no other worker is training, then the rest,
    waiting for them, so that two tests that share a run (a CE baseline) keep both cores busy."""
    finals: dict[int, dict] = {}
    for wait in (False, True):
        for i, cfg in enumerate(cfgs):
            if i not in finals and (final := train_final(cfg, wait)) is not None:
                finals[i] = final
    return [finals[i] for i in range(len(cfgs))]


def learn(runs: dict[str, list[RunConfig]]) -> tuple[dict, str]:
    """{method: [config of each seed]} -> ({method: {metric: mean over its seeds}}, a Markdown table
    of them), every run trained by train_finals."""
    flat = train_finals([cfg for cfgs in runs.values() for cfg in cfgs])
    finals = {name: [flat.pop(0) for _ in cfgs] for name, cfgs in runs.items()}
    means = {name: {m: sum(r[m] for r in rows) / len(rows) for m in METRICS} for name, rows in finals.items()}
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |" for name, row in means.items()]
    return means, "\n".join(lines)
