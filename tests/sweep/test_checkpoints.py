"""Safe loading: checkpoints are read with weights_only; a file that is not a checkpoint of this
harness is one line naming it, the cell fails, and --retry-failed sets the file aside and resumes
from ckpt/prev.pt (kept by every save) or restarts from scratch."""
import json
import os
import pickle

import pytest
import torch

from harness.cli.sweep import main as main_sweep
from harness.data import load_card, prepare
from harness.grid import load_grid
from harness.rundir import CheckpointError, RunDir
from support import write_grid

QUICK = ["--cluster", "debug", "log.images=false"]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


def bad_files(folder):
    """Files that are not checkpoints of this harness, by what is wrong with them."""
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 1}, folder / "good.pt")
    whole = (folder / "good.pt").read_bytes()
    files = {"truncated": whole[:len(whole) // 2], "empty": b"", "garbage": b"not a checkpoint" * 10,
             "plain pickle that runs code": pickle.dumps(RunsCode())}
    for name, data in files.items():
        (folder / f"{name}.pt").write_bytes(data)
    torch.save({"model": RunsCode()}, folder / "torch file that runs code.pt")
    torch.save(torch.ones(3), folder / "a tensor.pt")
    return ["truncated", "empty", "garbage", "plain pickle that runs code", "torch file that runs code", "a tensor"]


def test_every_save_keeps_the_previous_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    for epoch in (1, 2, 3):
        run.save_checkpoint({"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch})
    assert run.load_checkpoint()["epoch"] == 3 and run.load_checkpoint(path=run.previous_checkpoint)["epoch"] == 2
    assert sorted(p.name for p in run.checkpoint.parent.iterdir()) == ["last.pt", "prev.pt"]


@pytest.mark.parametrize("index", range(6))
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it_and_runs_no_code(tmp_path, monkeypatch, index):
    monkeypatch.chdir(tmp_path)
    name = bad_files(tmp_path)[index]
    with pytest.raises(CheckpointError) as e:
        RunDir(tmp_path).load_checkpoint(path=tmp_path / f"{name}.pt")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / name}.pt: not a checkpoint of this harness (") and "\n" not in message
    assert not (tmp_path / "ran-code").exists()


@pytest.fixture
def finished(tmp_path, tiny_card):
    """A finished 2-epoch cell (debug backend) and its result."""
    prepare(load_card(str(tiny_card)), tmp_path / "data")
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data")
    args = [str(grid), "--runs", str(tmp_path / "runs"), *QUICK]
    assert main_sweep(args) == 0
    run = RunDir(tmp_path / "runs" / "g" / load_grid(grid, ["log.images=false"]).cells[0].signature)
    return args, run, run.read_result()


def same_result(a: dict, b: dict) -> bool:
    def history(r):
        return [{k: v for k, v in row.items() if k not in ("images_per_s", "time_s")} for row in r["history"]]
    return a["final"] == b["final"] and a["per_class"] == b["per_class"] and history(a) == history(b)


@pytest.mark.slow
def test_a_tampered_checkpoint_fails_the_cell_then_retry_resumes_from_the_previous_one(finished, capsys):
    args, run, result = finished
    run.file(run.RESULT).unlink()  # as if killed before its result: the next run would load last.pt
    torch.save({"model": RunsCode()}, run.checkpoint)
    assert main_sweep(args) == 1
    state = run.read_state()
    assert state["state"] == "failed" and state["bad_checkpoint"] == str(run.checkpoint)
    assert state["error"].startswith(f"CheckpointError: {run.checkpoint}: not a checkpoint of this harness (it would "
                                     f"run posix.system when loaded; refused); --retry-failed sets it aside")
    assert f"[{run.name}] FAILED: CheckpointError" in capsys.readouterr().err
    assert main_sweep(args) == 1 and "0 to run" in capsys.readouterr().out  # failed: skipped without --retry-failed

    assert main_sweep([*args, "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert f"[{run.name}] set aside last.pt.bad-" in out and "resuming from ckpt/prev.pt (epoch 1)" in out
    assert "resuming at epoch 2" in out
    assert same_result(run.read_result(), result) and not run.read_state().get("bad_checkpoint")
    assert len(list(run.checkpoint.parent.glob("last.pt.bad-*"))) == 1


@pytest.mark.slow
def test_with_no_good_checkpoint_left_the_retry_restarts_from_scratch(finished, capsys):
    args, run, result = finished
    run.file(run.RESULT).unlink()
    run.checkpoint.write_bytes(b"garbage")
    run.previous_checkpoint.write_bytes(run.previous_checkpoint.read_bytes()[:100])  # truncated
    assert main_sweep(args) == 1 and run.read_state()["state"] == "failed"
    assert main_sweep([*args, "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert "no good checkpoint left, restarting from scratch" in out and "resuming at epoch" not in out
    assert same_result(run.read_result(), result)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_one_line_and_stale_temporaries_are_removed(finished, capsys):
    args, run, _ = finished
    run.file(run.RESULT).unlink()
    state = run.load_checkpoint()
    state["model"] = {"backbone.conv1.weight": torch.zeros(1)}
    torch.save(state, run.checkpoint)
    (run.checkpoint.parent / ".last.pt.99999.tmp").write_bytes(b"half a checkpoint")
    (run.tensorboard / ".hparams.99999.tmp").mkdir(parents=True)
    assert main_sweep(args) == 1
    error = run.read_state()["error"]
    assert error.startswith(f"CheckpointError: {run.checkpoint}: not a checkpoint of this harness (it does not fit "
                            f"this run: RuntimeError") and "\n" not in error
    assert not list(run.path.rglob("*.tmp"))


@pytest.mark.slow
def test_a_second_stage_names_its_first_stages_bad_checkpoint_and_leaves_it_in_place(tmp_path, tiny_card, capsys):
    prepare(load_card(str(tiny_card)), tmp_path / "data")
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", grid="stage.kind: [train, crt]")
    grid.write_text(grid.read_text().replace("grid:\n", "  stage: {epochs: 1}\ngrid:\n"))
    train, crt = load_grid(grid, ["log.images=false"]).cells
    args = [str(grid), "--runs", str(tmp_path / "runs"), *QUICK]
    assert main_sweep([*args, "--only", train.signature]) == 0
    first = RunDir(tmp_path / "runs" / "g" / train.signature)
    first.checkpoint.write_bytes(b"garbage")
    assert main_sweep([*args, "--only", crt.signature]) == 1
    state = json.loads((tmp_path / "runs" / "g" / crt.signature / "state.json").read_text())
    assert state["error"].startswith(f"CheckpointError: {first.checkpoint}: not a checkpoint of this harness")
    assert "bad_checkpoint" not in state and "--retry-failed sets it aside" not in state["error"]
    assert main_sweep([*args, "--only", crt.signature, "--retry-failed"]) == 1
    assert first.checkpoint.read_bytes() == b"garbage"  # not this cell's to set aside


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_resumes_to_the_same_history(tmp_path, tiny_card):
    """A stop (SIGUSR2, SIGTERM) checkpoints inside an epoch; the resumed run's loss of that epoch
    still counts the steps before the stop, so the history equals an uninterrupted run's."""
    from harness.run.trainer import Preempted, Trainer
    prepare(load_card(str(tiny_card)), tmp_path / "data")
    (cell,) = load_grid(write_grid(tmp_path, tiny_card, tmp_path / "data"), ["log.images=false"]).cells
    whole = Trainer(cell.config, tmp_path / "whole").train()
    stopped = Trainer(cell.config, tmp_path / "stopped")
    stopped.stop_requested = True  # stop after the first step
    with pytest.raises(Preempted, match="stopped at epoch 0 step 1"):
        stopped.train()
    resumed = Trainer(cell.config, tmp_path / "stopped").train()
    assert same_result(resumed, whole)
