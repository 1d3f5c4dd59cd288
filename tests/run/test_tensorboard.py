"""TensorBoard files of real runs, read back with TensorBoard's own reader and HParams plugin,
and the training progress: plain lines in logs, a bar on a terminal."""
import io
import json
import os
import pty
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.plugins.hparams import metadata as hp_metadata
from werkzeug.test import Client

from harness.config import RunConfig, from_dict
from harness.console import Progress, track
from harness.report import report
from harness.run import tensorboard
from harness.run.trainer import Trainer
from support import ROOT, write_grid
from support.results import FINAL, GRID, result_for

SWEEP = str(ROOT / "tools" / "sweep.py")


def sweep(grid, *args, cwd, **kw):
    return subprocess.run([sys.executable, SWEEP, str(grid), "--cluster", "debug", *args], cwd=cwd,
                          timeout=600, **kw)


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory, tiny_card):
    """Two real cells (ce, balanced_softmax), 2 epochs each, trained by tools/sweep.py, output to a file."""
    folder = tmp_path_factory.mktemp("tb")
    grid = write_grid(folder, tiny_card, folder / "data", grid="loss.name: [ce, balanced_softmax]")
    out = sweep(grid, "log.print_every=2", cwd=folder, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p for p in (folder / "runs" / "g").iterdir() if (p / "result.json").is_file())
    assert len(runs) == 2
    return folder, runs, out


def events(path, **guidance) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, **guidance})
    acc.Reload()
    return acc


def png(event) -> Image.Image:
    return Image.open(io.BytesIO(event.encoded_image_string))


@pytest.mark.slow
def test_scalars_of_a_run_match_its_result(grid_runs):
    _, runs, _ = grid_runs
    result = json.loads((runs[0] / "result.json").read_text())
    acc = events(runs[0] / "tb")
    scalars = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/images_per_s", "test/top1", "test/medium", "test/few"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    for key in ("loss", "top1", "medium", "few"):
        tag = f"train/{key}" if key == "loss" else f"test/{key}"
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx([h[key] for h in result["history"]])
    assert all(e.value > 0 for e in acc.Scalars("train/images_per_s"))
    per_class = sorted(t for t in scalars if t.startswith("per_class/"))
    assert len(per_class) == 10 and per_class[0].startswith("per_class/000_")
    assert [acc.Scalars(t)[-1].value for t in per_class] == pytest.approx(result["per_class"])
    assert "test/many" not in scalars  # the tiny set (60 images at most) has no many-shot class


@pytest.mark.slow
def test_figures_and_augmentation_samples(grid_runs):
    _, runs, _ = grid_runs
    acc = events(runs[0] / "tb")
    for tag in ("figures/per_class_vs_count", "figures/confusion"):
        shots = acc.Images(tag)
        assert [e.step for e in shots] == [1, 2], tag
        img = png(shots[-1])
        assert img.format == "PNG" and img.width >= 300 and len(img.convert("RGB").getcolors(1 << 20)) > 20
    original, augmented = acc.Images("augment/original"), acc.Images("augment/augmented")
    assert [e.step for e in original] == [0] and [e.step for e in augmented] == [0]
    a, b = np.asarray(png(original[0]).convert("RGB")), np.asarray(png(augmented[0]).convert("RGB"))
    assert a.shape == b.shape and a.shape[0] >= 32 * 4  # a grid of 32 images of 32x32
    assert (a != b).mean() > 0.05  # crops and flips changed the pictures
    assert "generated/samples" not in acc.Tags()["images"]  # this run uses no generated images


@pytest.mark.slow
def test_each_run_has_an_hparams_session(grid_runs):
    _, runs, _ = grid_runs
    for run in runs:
        cell = json.loads((run / "cell.json").read_text())
        result = json.loads((run / "result.json").read_text())
        acc = events(run / "tb" / "hparams")
        content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
        start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
        assert start.hparams["loss"].string_value == cell["axes"]["loss.name"]
        end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
        assert end.status == 1  # STATUS_SUCCESS
        assert acc.Scalars("final/top1")[-1].value == pytest.approx(result["final"]["top1"])
        assert acc.Scalars("best/top1")[-1].value == pytest.approx(result["best"]["top1"])
        assert sorted(acc.Tags()["scalars"]) == sorted(tensorboard.run_metrics(result))


def hparams_dashboard(logdir):
    """The HParams plugin as `tensorboard --logdir logdir` serves it: (experiment, session groups)."""
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    ctx = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                                data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    apps = hparams_plugin.HParamsPlugin(ctx).get_plugin_apps()
    experiment = Client(apps["/experiment"]).post("/experiment", json={"experimentName": ""})
    assert experiment.status_code == 200, experiment.get_data()
    groups = Client(apps["/session_groups"]).post("/session_groups", json={
        "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [],
        "startIndex": 0, "sliceSize": 1000, "aggregationType": "AGGREGATION_AVG"})
    assert groups.status_code == 200, groups.get_data()
    return json.loads(experiment.get_data()), json.loads(groups.get_data())["sessionGroups"]


@pytest.mark.slow
def test_the_hparams_dashboard_compares_the_grid(grid_runs):
    folder, runs, _ = grid_runs
    experiment, groups = hparams_dashboard(folder / "runs" / "g")
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert list(hparams) == ["loss"] and sorted(hparams["loss"]["domainDiscrete"]) == ["balanced_softmax", "ce"]
    metrics = sorted(m["name"]["tag"] for m in experiment["metricInfos"])
    assert metrics == ["best/few", "best/medium", "best/top1", "final/few", "final/medium", "final/top1"]
    assert len(groups) == 2
    for group in groups:
        run = folder / "runs" / "g" / group["name"].split("/")[0]
        result = json.loads((run / "result.json").read_text())
        assert group["hparams"]["loss"] == result["config"]["loss"]["name"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["final/top1"] == pytest.approx(result["final"]["top1"])


@pytest.mark.slow
def test_report_of_real_runs(grid_runs):
    folder, runs, _ = grid_runs
    text, files = report(folder / "runs" / "g")
    assert files["hparams_written"] == 0  # the trainer wrote them
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        line = f"| {result['config']['loss']['name']} | {result['final']['top1']:.1f} |"
        assert line in text
    assert "| loss | tiny IF10 |" in text and "every run finished" in text
    with Image.open(files["png"]) as img:
        assert img.format == "PNG"


def test_report_gives_hparams_to_runs_without_them(tmp_path):
    """Result files made elsewhere (no tb/ at all) join the dashboard when the report runs."""

    from harness.grid import load_grid
    from harness.rundir import RunDir
    (tmp_path / "paper.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "paper.yaml")
    folder = tmp_path / "runs" / "paper"
    finished = 0
    for cell in grid.cells:
        top1 = FINAL[(cell.axes["loss.name"], cell.axes["data.imbalance_factor"])][cell.axes["seed"]]
        RunDir(folder / cell.signature).write_cell(grid.name, cell)
        if isinstance(top1, float):
            (folder / cell.signature / "result.json").write_text(json.dumps(result_for(cell, top1)))
            finished += 1
    _, files = report(folder)
    assert files["hparams_written"] == finished
    experiment, groups = hparams_dashboard(folder)
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert sorted(hparams) == ["imbalance_factor", "loss", "seed"]
    assert sorted(hparams["loss"]["domainDiscrete"]) == ["ce", "ldam_drw"]
    assert len(experiment["metricInfos"]) == 8 and len(groups) == finished
    assert report(folder)[1]["hparams_written"] == 0  # written once


def test_a_lone_run_gets_a_few_config_fields_as_hparams(tmp_path):
    """A run trained outside a sweep (no cell.json) still has an HParams entry."""

    from harness.grid import load_grid
    (tmp_path / "paper.yaml").write_text(GRID)
    cell = load_grid(tmp_path / "paper.yaml").cells[0]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(json.dumps(result_for(cell, 50.0)))
    acc = events(tensorboard.write_hparams(tmp_path / "run"))
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    hparams = hp_metadata.parse_session_start_info_plugin_data(content).hparams
    assert sorted(hparams) == ["aug", "dataset", "imbalance_factor", "loss", "seed"]
    assert hparams["loss"].string_value == cell.axes["loss.name"] and hparams["seed"].number_value == 0
    assert acc.Scalars("best/few")[-1].value == pytest.approx(31.0)
    assert tensorboard.write_hparams(tmp_path / "nothing") is None


@pytest.mark.slow
def test_confusion_matrix_and_generated_samples(grid_runs, tmp_path):
    """evaluate() returns a confusion matrix; a run with generated images logs them."""
    from harness.data import load_card
    from harness.data.beton import write_beton
    from harness.data.generated import BETON, INFO
    from harness.run.trainer import Trainer
    folder, runs, _ = grid_runs
    base = json.loads((runs[0] / "result.json").read_text())["config"]
    classes = load_card(base["data"]["dataset"]).classes
    gen_dir = tmp_path / "generated"  # a packed generator output: 3 pure red images for each of the 2 last classes
    gen_dir.mkdir()
    counts = [0] * 8 + [3, 3]
    images = np.zeros((6, 32, 32, 3), np.uint8)
    images[..., 0] = 255
    write_beton(gen_dir / BETON, images, np.array([8, 8, 8, 9, 9, 9]))
    (gen_dir / INFO).write_text(json.dumps({"class_names": classes, "counts": counts, "images": 6,
                                            "size": [32, 32], "manifest_sha256": "test"}))
    base["aug"] = {"name": "standard+synthetic", "params": {"synthetic": {"path": str(gen_dir), "max_share": 1.0}}}
    cfg = from_dict(RunConfig, base)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.record.start(trainer.run_config, False, 0, trainer.device)  # what train() does first
    metrics = trainer.evaluate()
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (10, 10) and (confusion.sum(1) == 20).all()
    assert np.diag(confusion) / 20 * 100 == pytest.approx(metrics["per_class"])
    trainer.record.writer.close()
    acc = events(tmp_path / "run" / "tb")
    shots = acc.Images("generated/samples")
    assert [e.step for e in shots] == [0]
    pixels = np.asarray(png(shots[0]).convert("RGB")).reshape(-1, 3)
    assert (pixels == [255, 0, 0]).all(1).sum() == 6 * 32 * 32  # the 6 generated images, nothing else red
    # logging the samples does not touch the training run's random stream
    logged_rng = torch.random.get_rng_state()
    cfg.log.images = False
    quiet = Trainer(cfg, tmp_path / "quiet")
    assert torch.equal(torch.random.get_rng_state(), logged_rng)
    assert torch.equal(quiet.gen.get_state(), trainer.gen.get_state())
    assert not (tmp_path / "quiet" / "tb").glob("*") or not events(tmp_path / "quiet" / "tb").Tags()["images"]


# ---------------------------------------------------------------------------------------
# progress

@pytest.mark.slow
def test_training_prints_plain_lines_in_logs(grid_runs):
    _, runs, out = grid_runs
    for run in runs:
        lines = [l for l in out.stdout.splitlines() if l.startswith(f"[{run.name}] epoch")]
        assert any(" step 2/" in l and " loss " in l for l in lines)
        assert f"[{run.name}] epoch 2/2 loss" in out.stdout
    assert "\r" not in out.stdout and "step:" not in out.stderr  # no bars in a log file


@pytest.mark.slow
def test_training_shows_a_bar_on_a_terminal(grid_runs, tiny_card, tmp_path):
    folder, _, _ = grid_runs
    grid = write_grid(tmp_path, tiny_card, folder / "data", name="tty", epochs=1)
    leader, follower = pty.openpty()
    chunks = []
    reader = threading.Thread(target=lambda: _drain(leader, chunks))
    reader.start()
    proc = sweep(grid, "log.print_every=1", cwd=tmp_path, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    reader.join(timeout=30)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "epoch 1/1 step:" in text and "%|" in text and "\r" in text  # tqdm redrawing in place
    assert " step 1/" not in text  # no plain step lines on a terminal
    assert "epoch 1/1 loss" in text  # the epoch summary stays


def _drain(fd, chunks):
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        chunks.append(data)


def test_progress_lines_every_n_steps(capsys):
    lines, asked = [], []
    bar = Progress(5, "convert", every=2, log=lines.append)
    for done in range(1, 6):
        bar.update(done, lambda: asked.append(done) or "ok")
    bar.close()
    assert lines == ["convert 2/5 ok", "convert 4/5 ok"] and asked == [2, 4]  # status only when shown
    silent = Progress(5, "x", every=0, log=lines.append)
    silent.update(4, lambda: asked.append("never"))
    assert len(lines) == 2 and "never" not in asked
    assert list(track(range(4), desc="items", every=3, log=lines.append)) == [0, 1, 2, 3]
    assert lines[-1] == "items 3/4"
    assert capsys.readouterr().err == ""  # pytest's stderr is no terminal: no bar


def test_eval_every_evaluates_those_epochs_and_the_last(tmp_path, tiny_card):
    """log.eval_every 2 over 3 epochs: epochs 2 and 3 are evaluated, epoch 1 only trains. Its history
    row has no metrics, TensorBoard its training scalars only, and the best epoch is an evaluated one;
    eval_every 0 evaluates after the last epoch only."""
    def run(every: int, name: str) -> dict:
        cfg = from_dict(RunConfig, {
            "data": {"dataset": str(tiny_card), "root": str(tmp_path / "data"), "loader": "memory",
                     "imbalance_factor": 1},
            "model": {"name": "resnet8"}, "aug": {"name": "none"}, "optim": {"batch_size": 128},
            "schedule": {"epochs": 3, "warmup_epochs": 0}, "log": {"print_every": 0, "eval_every": every}})
        return Trainer(cfg, tmp_path / name).train()

    result = run(2, "every2")
    assert [row["top1"] is not None for row in result["history"]] == [False, True, True]
    assert result["final"]["top1"] == result["history"][-1]["top1"]
    assert result["best"]["epoch"] in (2, 3)
    acc = events(tmp_path / "every2" / "tb")
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("test/top1")] == [2, 3]
    assert [e.step for e in acc.Images("figures/confusion")] == [2, 3]  # figures: the evaluated epochs
    progress = json.loads((tmp_path / "every2" / "progress.json").read_text())
    assert progress["best_top1"] == max(row["top1"] for row in result["history"][1:])
    last_only = run(0, "last")
    assert [row["top1"] is not None for row in last_only["history"]] == [False, False, True]
    assert last_only["best"]["epoch"] == 3
