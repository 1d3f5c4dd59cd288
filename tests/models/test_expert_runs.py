"""A multi-expert model through the one Trainer on the tiny card: each expert's metrics in the
history, result.json and TensorBoard; a stop in the middle of an epoch (the flag TrainJob's
signal handler sets) resumes to exactly the result of an uninterrupted run, SADE's test-time
aggregation weights included."""
from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.config import RunConfig, from_dict
from harness.data import load_card, prepare
from harness.grid.validate import validate
from harness.metrics import METRICS
from harness.run.trainer import Preempted, Trainer
from harness.rundir import RunDir

VARYING = ("time_s", "images_per_s", "loss")
"""History fields that a resume changes: the wall clock, and the mean training loss of the resumed
epoch (the trainer averages it over the steps after the resume)."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_card):
    root = tmp_path_factory.mktemp("data")
    prepare(load_card(str(tiny_card)), root)
    return root


def sade_config(card, root) -> RunConfig:
    """SADE with its test-time aggregation on the small expert model: 240 images, 3 steps an epoch."""
    cfg = from_dict(RunConfig, {
        "data": {"dataset": str(card), "root": str(root), "loader": "memory", "imbalance_factor": 10},
        "model": {"name": "resnet8_narrow_experts"},
        "loss": {"name": "sade", "params": {"test_time_aggregation": True}},
        "optim": {"batch_size": 64, "lr": 0.05},
        "schedule": {"epochs": 2, "warmup_epochs": 0, "decay": "cosine"},
        "log": {"print_every": 0, "images": False}, "dist": {"precision": "fp32"}})  # exact comparisons
    validate(cfg)
    return cfg


def stop_after_steps(trainer: Trainer, steps: int) -> None:
    """Ask the trainer to stop after `steps` training steps, as a signal would."""
    step, done = trainer.train_step, [0]

    def counted(x, y):
        loss = step(x, y)
        done[0] += 1
        trainer.stop_requested = done[0] >= steps
        return loss
    trainer.train_step = counted


def comparable(history: list) -> list:
    return [{k: v for k, v in row.items() if k not in VARYING} for row in history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_card, data_root):
    """The same SADE cell trained straight through, and stopped in its second epoch then resumed."""
    cfg = sade_config(tiny_card, data_root)
    straight = tmp_path_factory.mktemp("straight")
    result = Trainer(cfg, straight).train()
    resumed = tmp_path_factory.mktemp("resumed")
    trainer = Trainer(cfg, resumed)
    stop_after_steps(trainer, 4)  # epoch 1 has 3 steps: the stop comes after step 1 of epoch 2
    with pytest.raises(Preempted, match="epoch 1 step 1"):
        trainer.train()
    again = Trainer(cfg, resumed)
    assert (again.epoch, again.step_in_epoch) == (1, 1)
    return cfg, (straight, result), (resumed, again.train())


@pytest.mark.slow
def test_each_expert_is_reported_next_to_the_ensemble(runs):
    _, (folder, result), _ = runs
    assert len(result["experts"]) == 3 and all(set(e) == set(METRICS) for e in result["experts"])
    assert [len(row["experts"]) for row in result["history"]] == [3, 3]
    assert set(result["final"]) == set(METRICS)  # the ensemble's, as the report reads them
    acc = EventAccumulator(str(RunDir(folder).tensorboard), size_guidance={"scalars": 0})
    acc.Reload()
    for k in range(3):
        assert [e.value for e in acc.Scalars(f"test/expert_{k}/top1")] == pytest.approx(
            [row["experts"][k]["top1"] for row in result["history"]])


@pytest.mark.slow
def test_a_stopped_expert_run_resumes_to_the_same_result(runs):
    _, (straight, a), (resumed, b) = runs
    assert (a["final"], a["experts"], a["best"]) == (b["final"], b["experts"], b["best"])
    assert comparable(a["history"]) == comparable(b["history"])
    saved = [torch.load(RunDir(f).checkpoint, weights_only=False) for f in (straight, resumed)]
    for key, value in saved[0]["model"].items():
        assert torch.equal(value, saved[1]["model"][key]), key
    aggregation = [s["criterion"]["aggregation"] for s in saved]
    assert torch.equal(*aggregation) and not torch.equal(aggregation[0], torch.full((3,), 1 / 3))
    assert all(bool(s["criterion"]["aggregated"]) for s in saved)


@pytest.mark.slow
def test_a_finished_run_evaluates_again_with_its_saved_aggregation(runs):
    """A run killed after its last checkpoint but before its result: the weights are not fitted again."""
    cfg, (straight, result), _ = runs
    trainer = Trainer(cfg, straight)
    assert trainer.epoch == 2 and bool(trainer.criterion.aggregated)
    assert trainer.train()["final"] == result["final"]


@pytest.mark.slow
def test_the_expert_metrics_are_each_experts_own_accuracy(runs):
    cfg, (straight, _), _ = runs
    trainer = Trainer(cfg, straight)
    metrics = trainer.evaluate()
    correct, ensemble, total = torch.zeros(3), 0, 0
    for x, y in trainer.data.test:
        logits = trainer.test_logits(x)  # [B, 3, C]
        correct += (logits.argmax(2) == y.unsqueeze(1)).sum(0)
        weights = torch.softmax(trainer.criterion.aggregation, 0).view(1, 3, 1)
        ensemble += ((weights * logits).sum(1).argmax(1) == y).sum().item()
        total += len(y)
    assert [e["top1"] for e in metrics["experts"]] == pytest.approx((100 * correct / total).tolist())
    assert metrics["top1"] == pytest.approx(100 * ensemble / total)  # the test set is balanced
