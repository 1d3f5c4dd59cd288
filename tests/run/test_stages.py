"""Second stages (cRT, τ-norm, SupCon's linear stage, weight balancing's maxnorm, LDMLR) end to
end in one grid, class-aware sampling, heads that follow losses, and the paper grid. The parts of
maxnorm and ldmlr are tested on their own in tests/stages/."""
import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from harness.cli.sweep import main as main_sweep
from harness.config import RunConfig, StageConfig, from_dict, signature
from harness.data import build_data, load_card
from harness.data.beton import Beton
from harness.data.loaders import MemoryLoader
from harness.data.sampling import SampledMemoryLoader, class_draws, draw_epoch, with_sampler
from harness.files import read_json
from harness.grid import load_grid
from harness.grid.validate import validate
from harness.losses import LOSSES
from harness.models import build_model, resolve_head
from harness.registry import ConfigError
from harness.run.optim import lr_factor
from harness.run.trainer import Trainer
from harness.rundir import RunDir
from harness.stages import first_stage_config, first_stage_dir, load_first_stage, stage_config, tau_normalise
from harness.stages.diffusion import FeatureDiffusion
from harness.sweep.preflight import first_stage_problem
from support import ROOT, write_grid

COUNTS = np.array([60, 20, 6, 2])


def tail_labels(counts=COUNTS) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


# ---------------------------------------------------------------------------------------
# class-aware sampling

def test_class_draws_are_proportional_to_counts_to_the_power_q():
    assert class_draws(COUNTS, 1.0).tolist() == COUNTS.tolist()
    assert class_draws(COUNTS, 0.0).tolist() == [22, 22, 22, 22]
    root = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum() * COUNTS.sum()
    draws = class_draws(COUNTS, 0.5)
    assert draws.sum() == COUNTS.sum() and np.abs(draws - root).max() < 1


def test_a_class_balanced_epoch_cycles_through_each_class_evenly():
    labels = tail_labels()
    drawn = draw_epoch(labels, 0.0, seed=3, epoch=0)
    assert len(drawn) == len(labels)
    assert np.bincount(labels[drawn]).tolist() == [22, 22, 22, 22]
    visits = np.bincount(drawn, minlength=len(labels))
    for c, n in enumerate(COUNTS):  # 22 draws over n images: every image 22 // n or one more times
        mine = visits[labels == c]
        assert mine.min() == 22 // n and mine.max() == -(-22 // n), c
    assert np.array_equal(drawn, draw_epoch(labels, 0.0, seed=3, epoch=0))
    assert not np.array_equal(drawn, draw_epoch(labels, 0.0, seed=3, epoch=1))


def test_the_memory_loader_draws_class_balanced_batches_shared_over_ranks():
    labels = torch.from_numpy(tail_labels())
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    cfg = from_dict(RunConfig, {"stage": {"sampler": "class"}})
    seen = []
    for rank in (0, 1):
        base = MemoryLoader(images, labels, 11, shuffle=True, seed=5, rank=rank, world=2, drop_last=True)
        loader = with_sampler(base, cfg, labels.numpy())
        assert isinstance(loader, SampledMemoryLoader) and len(loader) == len(base) == 4
        loader.set_epoch(2)
        for x, y in loader:
            assert torch.equal(labels[x[:, 0, 0, 0].long()], y)
            seen.append(y)
    assert torch.bincount(torch.cat(seen)).tolist() == [22, 22, 22, 22]
    plain = from_dict(RunConfig, {})
    assert with_sampler(base, plain, labels.numpy()) is base  # instance-balanced: the plain loader


@pytest.mark.slow
def test_the_ffcv_loader_draws_class_balanced_epochs(tmp_path, tiny_card):
    cfg = from_dict(RunConfig, {"data": {"dataset": str(tiny_card), "root": str(tmp_path), "loader": "ffcv",
                                         "num_workers": 1, "imbalance_factor": 10},
                                "optim": {"batch_size": 16}, "stage": {"sampler": "class"}})
    data = build_data(cfg, torch.device("cpu"))
    assert data.counts[0] == 60 and data.counts[-1] == 6
    epochs = []
    for epoch in (0, 1):
        data.train.set_epoch(epoch)
        epochs.append(torch.cat([y.clone() for _, y in data.train]))  # FFCV reuses its batch buffers
    for labels in epochs:
        per_class = torch.bincount(labels, minlength=10)
        assert len(labels) == len(data.train) * 16 == 240 and per_class.tolist() == [24] * 10
    assert not torch.equal(epochs[0], epochs[1])


# ---------------------------------------------------------------------------------------
# heads follow losses

def test_supcon_gets_a_projection_head_and_the_others_their_features():
    x = torch.randn(4, 3, 32, 32)
    supcon = build_model("resnet8", 10, resolve_head("auto", LOSSES.get("supcon")))
    logits, z = supcon(x)
    assert logits.shape == (4, 10) and z.shape == (4, 128)
    logits, f = build_model("resnet8", 10, resolve_head("auto", LOSSES.get("ce")))(x)
    assert f.shape == (4, 64) and build_model("resnet8", 10, "linear").projection is None
    ldam = build_model("resnet8", 10, resolve_head("auto", LOSSES.get("ldam_drw")))
    cos, _ = ldam(x)
    assert cos.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("tree, key", [
    ({"loss": {"name": "ldam"}, "model": {"head": "linear"}}, "model.head"),
    ({"loss": {"name": "supcon"}, "model": {"head": "cosine"}}, "model.head"),
    ({"loss": {"name": "ce"}, "model": {"head": "cosine"}}, "model.head"),
    ({"loss": {"name": "ce"}, "model": {"head": "projection"}}, "model.head"),
    ({"loss": {"name": "ldam_drw"}, "stage": {"kind": "tau_norm"}}, "stage.kind"),
    ({"loss": {"name": "supcon", "params": {"mode": "pretrain"}}, "stage": {"kind": "tau_norm"}}, "stage.kind"),
    ({"stage": {"from_run": "0123456789"}}, "stage.from_run"),
    ({"stage": {"kind": "crt", "epochs": 0}}, "stage.epochs"),
    ({"loss": {"name": "ldam_drw"}, "stage": {"kind": "maxnorm"}}, "stage.kind"),
    ({"loss": {"name": "ldam_drw"}, "stage": {"kind": "ldmlr"}}, "stage.kind"),
    ({"stage": {"kind": "maxnorm", "loss": "ldam"}}, "stage.loss"),
    ({"stage": {"kind": "maxnorm", "loss": "no_such_loss"}}, "stage.loss"),
    ({"stage": {"kind": "maxnorm", "maxnorm_thresh": -0.1}}, "stage.maxnorm_thresh"),
    ({"stage": {"kind": "maxnorm"}, "dist": {"engine": "deepspeed"}}, "dist.engine"),
    ({"stage": {"kind": "ldmlr"}, "dist": {"engine": "deepspeed"}}, "dist.engine"),
    ({"stage": {"kind": "ldmlr", "ldmlr": {"steps": 2000}}}, "stage.ldmlr.steps"),
    ({"stage": {"kind": "ldmlr", "ldmlr": {"hidden": 63}}}, "stage.ldmlr.hidden"),
])
def test_incompatible_combinations_are_config_errors_naming_the_key(tree, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        validate(from_dict(RunConfig, tree))


def test_compatible_heads_and_stages_validate():
    for tree in ({"loss": {"name": "supcon"}, "model": {"head": "linear"}},
                 {"loss": {"name": "supcon"}, "model": {"head": "projection"}},
                 {"loss": {"name": "ldam_drw"}, "stage": {"kind": "crt"}},
                 {"loss": {"name": "supcon", "params": {"mode": "pretrain"}}, "stage": {"kind": "linear"}},
                 {"loss": {"name": "balanced_softmax"}, "stage": {"kind": "tau_norm", "tau": 0.5}},
                 {"stage": {"kind": "maxnorm", "loss": "cb_softmax", "maxnorm_every": "step"}},
                 {"stage": {"kind": "ldmlr", "ldmlr": {"sampler": "ddpm", "below": 100}}}):
        validate(from_dict(RunConfig, tree))


def test_a_default_stage_leaves_the_signature_alone_and_a_second_stage_finds_its_first():
    plain = from_dict(RunConfig, {"loss": {"name": "ce"}})
    crt = from_dict(RunConfig, {"loss": {"name": "ce"}, "stage": {"kind": "crt"}})
    assert signature(crt) != signature(plain) == signature(first_stage_config(crt))
    # fields a kind does not use are reset, so they split no signatures
    unused = from_dict(RunConfig, {"loss": {"name": "ce"}, "stage": {"kind": "train", "epochs": 3, "tau": 0.5}})
    assert unused.stage == StageConfig() and signature(unused) == signature(plain)
    assert first_stage_dir(crt, "runs/g/abc").path.as_posix() == f"runs/g/{signature(plain)}"
    by_sig = dataclasses.replace(crt, stage=StageConfig(kind="crt", from_run="0123abcdef"))
    assert first_stage_dir(by_sig, "runs/g/abc").path.as_posix() == "runs/g/0123abcdef"
    # a second stage trains CE on a linear head on its own short schedule
    run = stage_config(crt)
    assert (run.loss.name, run.model.head, run.schedule.epochs, run.schedule.decay) == ("ce", "linear", 10, "cosine")
    assert stage_config(plain) is plain
    assert stage_config(dataclasses.replace(crt, stage=StageConfig(kind="tau_norm"))).schedule.epochs == 0


def test_tau_normalise_divides_each_row_by_its_norm_to_the_tau():
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 2.0]])
    assert torch.allclose(tau_normalise(w, 1.0), torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]]))
    assert torch.allclose(tau_normalise(w, 0.0), w)
    half = tau_normalise(w, 0.5)
    assert torch.allclose(half.norm(dim=1), w.norm(dim=1) ** 0.5)


# ---------------------------------------------------------------------------------------
# end to end: a grid with stage.kind [train, crt, tau_norm] through the sweep, in process

DECOUPLED = "stage.kind: [train, crt, tau_norm, maxnorm, ldmlr]"
SMALL_GENERATOR = ("  stage.ldmlr.epochs: [3]\n  stage.ldmlr.hidden: [32]\n  stage.ldmlr.blocks: [1]\n"
                   "  stage.ldmlr.steps: [10]\n")
"""A feature generator that trains in a second: the end-to-end runs test the plumbing, not its samples."""


@pytest.fixture(scope="module")
def decoupled(tmp_path_factory, tiny_card):
    """A 2-epoch first stage, then a 1-epoch cRT, a τ-norm, a 1-epoch maxnorm and a 1-epoch ldmlr,
    in fp32 (the τ-norm test recomputes the predictions in fp32), run by tools/sweep.py --cluster debug."""
    folder = tmp_path_factory.mktemp("decoupled")
    grid = write_grid(folder, tiny_card, folder / "data", grid=DECOUPLED,
                      extra="  stage.epochs: [1]\n  log.images: [false]\n  dist.precision: [fp32]\n" + SMALL_GENERATOR)
    assert main_sweep([str(grid), "--cluster", "debug", "--runs", str(folder / "runs")]) == 0
    runs = {RunDir(p).read_config().stage.kind: p for p in (folder / "runs" / "g").glob("[0-9a-f]*")}
    return folder, grid, runs


def load(path):
    return RunDir(path).load_checkpoint()


def result(path):
    return yaml.safe_load((path / "result.json").read_text())


def test_each_stage_stores_its_own_config_under_its_signature(decoupled):
    _, grid, runs = decoupled
    assert set(runs) == {"train", "crt", "tau_norm", "maxnorm", "ldmlr"}
    for kind, path in runs.items():
        cfg = RunDir(path).read_config()
        assert signature(cfg) == path.name and cfg.loss.name == "ce"
        assert result(path)["config"]["stage"]["kind"] == kind
    assert first_stage_dir(RunDir(runs["crt"]).read_config(), runs["crt"]).path == runs["train"]
    assert {kind: result(path)["epochs"] for kind, path in runs.items()} == {
        "train": 2, "crt": 1, "tau_norm": 0, "maxnorm": 1, "ldmlr": 1}


def test_crt_keeps_the_first_stage_features_and_retrains_a_new_classifier(decoupled):
    _, _, runs = decoupled
    first, crt = load(runs["train"])["model"], load(runs["crt"])["model"]
    backbone = {k: v for k, v in first.items() if k.startswith("backbone.")}
    assert backbone and "running_mean" in "".join(backbone)  # BatchNorm statistics included
    for key, value in backbone.items():
        assert torch.equal(crt[key.replace("backbone.", "backbone.module.", 1)], value), key
    assert not torch.allclose(crt["head.weight"], first["head.weight"])


def test_tau_norm_predicts_with_the_normalised_first_stage_classifier(decoupled, tiny_card):
    folder, _, runs = decoupled
    cfg = RunDir(runs["train"]).read_config()
    model = build_model("resnet8", 10, "linear").eval()
    model.load_state_dict(load(runs["train"])["model"])
    x, y = Beton(folder / "data" / "tiny" / "test.beton").read()
    card = load_card(str(tiny_card))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (card.mean, card.std))
    with torch.no_grad():
        features = model.backbone((x.float() - mean) / std)
        w = model.head.weight
        pred = (features @ (w / w.norm(dim=1, keepdim=True)).T).argmax(1)
    expected = 100 * (pred == y).float().mean().item()
    assert result(runs["tau_norm"])["final"]["top1"] == pytest.approx(expected, abs=1e-6)
    assert cfg.stage.kind == "train"


def test_maxnorm_fine_tunes_the_first_stage_classifier_inside_the_norm_ball(decoupled):
    _, _, runs = decoupled
    first, maxnorm = load(runs["train"])["model"], load(runs["maxnorm"])["model"]
    norms = first["head.weight"].norm(dim=1)
    radius = norms.min() + 0.1 * (norms.max() - norms.min())  # MaxNorm_via_PGD with the code's thresh 0.1
    after = maxnorm["head.weight"].norm(dim=1)
    assert after.max() <= radius * (1 + 1e-6) and after.max() == pytest.approx(radius.item(), rel=1e-5)
    assert not torch.equal(maxnorm["head.bias"], first["head.bias"])  # trained, from the first stage's
    for key, value in first.items():
        if key.startswith("backbone."):
            assert torch.equal(maxnorm[key.replace("backbone.", "backbone.module.", 1)], value), key
    # its loss is cb_softmax_bce, a BCE averaged over the classes: about CE / C
    assert result(runs["maxnorm"])["history"][0]["loss"] < math.log(10) / 2


def test_ldmlr_retrains_the_classifier_on_real_and_generated_features(decoupled):
    _, _, runs = decoupled
    run, res = RunDir(runs["ldmlr"]), result(runs["ldmlr"])
    counts = res["class_counts"]
    expected = [max(round(0.2 * n), 5) for n in counts]  # LDMLR main.py: max(round(n * feature_ratio), 5)
    assert res["generated_features"] == expected and res["generated_counts"] is None
    real, made = run.load_tensors(run.FEATURES), run.load_tensors(run.GENERATED)
    assert real["features"].shape == (res["train_images"], 64) and torch.bincount(real["labels"]).tolist() == counts
    assert made["features"].shape == (sum(expected), 64) and made["counts"] == expected
    low, high = real["features"].min(0).values, real["features"].max(0).values
    assert (made["features"] >= low - 1e-4).all() and (made["features"] <= high + 1e-4).all()  # x0 clipped
    assert len(read_json(run.file(run.GENERATOR_LOSS))["loss"]) == 3 == run.load_tensors(run.GENERATOR)["epoch"]
    first, ldmlr = load(runs["train"])["model"], load(runs["ldmlr"])["model"]
    assert not torch.equal(ldmlr["head.weight"], first["head.weight"])
    assert torch.equal(ldmlr["backbone.module.conv.weight"], first["backbone.conv.weight"])


def test_an_ldmlr_run_again_reuses_its_finished_generator(decoupled, monkeypatch):
    _, _, runs = decoupled
    source = RunDir(runs["ldmlr"])
    again = RunDir(runs["ldmlr"].parent / "ldmlr_again")  # next to its first stage, which it finds there
    shutil.copytree(source.path, again.path)
    for name in (again.RESULT, again.CHECKPOINT, again.GENERATED):
        again.file(name).unlink()

    def retrained(*args):
        raise AssertionError("the finished generator was trained again")

    monkeypatch.setattr(FeatureDiffusion, "loss", retrained)
    cfg = source.read_config()
    assert Trainer(cfg, again.path).train()["generated_features"] == result(runs["ldmlr"])["generated_features"]
    assert torch.equal(again.load_tensors(again.GENERATED)["features"],
                       source.load_tensors(source.GENERATED)["features"])
    shutil.rmtree(again.path)


def test_a_second_stage_by_signature_or_path_and_its_errors(decoupled):
    folder, grid, runs = decoupled
    base = RunDir(runs["crt"]).read_config()
    sig, path = runs["train"].name, str(runs["train"])
    for source in (sig, path):
        cfg = dataclasses.replace(base, stage=StageConfig(kind="tau_norm", from_run=source))
        trainer = Trainer(cfg, folder / "runs" / "g" / "by_source")
        assert trainer.model.head.weight.norm(dim=1).allclose(torch.ones(10))
    missing = dataclasses.replace(base, stage=StageConfig(kind="crt", from_run="0000000000"))
    with pytest.raises(ConfigError, match="first-stage run .*0000000000 not found"):
        Trainer(missing, folder / "runs" / "g" / "x")
    unfinished = folder / "runs" / "g" / "1111111111"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs["train"] / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="is new, not finished"):
        Trainer(dataclasses.replace(missing, stage=StageConfig(kind="crt", from_run="1111111111")),
                folder / "runs" / "g" / "x")
    other = dataclasses.replace(base, data=dataclasses.replace(base.data, imbalance_factor=20.0),
                                stage=StageConfig(kind="crt", from_run=sig))
    with pytest.raises(ConfigError, match="data.imbalance_factor 10.0, this run 20.0"):
        Trainer(other, folder / "runs" / "g" / "x")


# ---------------------------------------------------------------------------------------
# Kang et al.'s protocol: a validation split, cRT with BatchNorm in train mode from the best epoch,
# τ-norm with τ chosen on val

KANG = ("  data.val: [split]\n  stage.epochs: [1]\n  stage.tau: [search]\n  stage.bn: [train]\n"
        "  stage.from_epoch: [best]\n  stage.weight_decay: [5.0e-4]\n  log.images: [false]\n  dist.precision: [fp32]\n")


@pytest.fixture(scope="module")
def kang(tmp_path_factory, tiny_card):
    """A 2-epoch first stage with a validation split, then a 1-epoch cRT and a τ-norm with τ search."""
    folder = tmp_path_factory.mktemp("kang")
    grid = write_grid(folder, tiny_card, folder / "data", grid="stage.kind: [train, crt, tau_norm]", extra=KANG)
    assert main_sweep([str(grid), "--cluster", "debug", "--runs", str(folder / "runs")]) == 0
    runs = {RunDir(p).read_config().stage.kind: p for p in (folder / "runs" / "g").glob("[0-9a-f]*")}
    return folder, runs


def test_a_run_with_a_validation_split_keeps_its_best_epoch(kang):
    _, runs = kang
    first = RunDir(runs["train"])
    best, res = first.load_checkpoint(path=first.best_checkpoint), result(runs["train"])
    history = res["history"]
    assert best["epoch"] == res["best"]["epoch"] == 1 + max(range(len(history)), key=lambda i: history[i]["val_top1"])
    assert best["val_top1"] == history[best["epoch"] - 1]["val_top1"]
    if best["epoch"] == len(history):  # the last epoch was the best: the same weights as last.pt
        assert all(torch.equal(v, load(runs["train"])["model"][k]) for k, v in best["model"].items())


@pytest.mark.parametrize("every, val_top1, saved", [
    (1, [10.0, 30.0, 20.0, 30.0, 40.0], [True, True, False, False, True]),
    (2, [10.0, 30.0, 20.0], [False, True, False, True, False]),  # epochs 2, 4 and 5 (the last) evaluated
])
def test_the_best_checkpoint_is_written_at_each_new_best_val_epoch_the_first_of_equals(every, val_top1, saved):
    """Trainer.run_epoch on stubs: ckpt/best.pt is written exactly at the epochs that the result's
    best (the first evaluated epoch with the highest val top-1) can be at that point."""
    values, written = iter(val_top1), []

    class Stub:
        run_epoch = Trainer.run_epoch
        cfg = from_dict(RunConfig, {"schedule": {"epochs": 5}, "log": {"eval_every": every}})
        data = type("D", (), {"val": "val loader"})()
        history, epoch, step_in_epoch = [], 0, 0
        record = type("R", (), {"epoch": lambda *a: None})()
        checkpoint = type("C", (), {"save": lambda self, t, best=False: written.append(best)})()

        def train_epoch(self):
            return {"loss": 1.0}

        def evaluate(self, loader=None):
            top1 = next(values) if loader else 50.0
            return {"top1": top1, "many": None, "medium": None, "few": None}

    stub = Stub()
    for _ in range(5):
        stub.run_epoch()
    assert written == saved
    assert [row.get("val_top1") for row in stub.history][every - 1::every] == val_top1[:5 // every]
    assert max(stub.history, key=lambda r: r.get("val_top1", -1.0))["epoch"] == (5 if every == 1 else 4)


def test_tau_norm_chooses_tau_on_the_validation_split(kang, tiny_card):
    folder, runs = kang
    res = result(runs["tau_norm"])
    found = res["tau_search"]
    assert found["split"] == "split" and list(found["val_top1"]) == [f"{t / 10:g}" for t in range(21)]
    assert found["val_top1"][f"{found['tau']:g}"] == max(found["val_top1"].values())
    # recomputed from the first stage's best epoch, on the validation images (not the test images)
    cfg = RunDir(runs["tau_norm"]).read_config()
    data = build_data(cfg, torch.device("cpu"))
    model = build_model("resnet8", 10, "linear").eval()
    first = RunDir(runs["train"])
    model.load_state_dict(first.load_checkpoint(path=first.best_checkpoint)["model"])
    card = load_card(str(tiny_card))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (card.mean, card.std))
    w = model.head.weight.detach().double()

    def accuracy(images, labels, taus):
        with torch.no_grad():
            f = model.backbone((images.float() - mean) / std).double()
        accs = []
        for tau in taus:
            pred = (f @ (w / w.norm(dim=1, keepdim=True) ** tau).T).argmax(1)
            accs.append(100 * sum((pred[labels == c] == c).double().mean().item() for c in range(10)) / 10)
        return accs

    val_x, val_y = data.val.images, data.val.labels
    assert len(val_y) == 60 and torch.bincount(val_y).tolist() == [6] * 10  # 10 % of each class, balanced
    taus = [float(t) for t in found["val_top1"]]
    assert list(found["val_top1"].values()) == pytest.approx(accuracy(val_x, val_y, taus), abs=1e-3)
    test_x, test_y = Beton(folder / "data" / "tiny" / "test.beton").read()
    assert res["final"]["top1"] == pytest.approx(accuracy(test_x, test_y, [found["tau"]])[0], abs=1e-3)


def test_crt_starts_from_the_best_epoch_and_moves_the_bn_statistics(kang):
    _, runs = kang
    first = RunDir(runs["train"])
    best, crt = first.load_checkpoint(path=first.best_checkpoint)["model"], load(runs["crt"])["model"]
    cfg = RunDir(runs["crt"]).read_config()
    assert stage_config(cfg).optim.weight_decay == 5e-4 and result(runs["crt"])["tau_search"] is None
    moved = []
    for key, value in best.items():
        if key.startswith("backbone."):
            mine = crt[key.replace("backbone.", "backbone.module.", 1)]
            if "running_" in key or "num_batches" in key:
                moved.append(not torch.equal(mine, value))
            else:
                assert torch.equal(mine, value), key  # the weights are the best epoch's, unchanged
    assert moved and all(moved)  # BatchNorm in train mode: every statistic moved with the cRT batches


def test_from_epoch_best_loads_best_pt_and_refuses_a_stale_or_missing_one(kang):
    folder, runs = kang
    copy = folder / "runs" / "g" / "2222222222"
    shutil.copytree(runs["train"], copy)
    first = RunDir(copy)
    state = first.load_checkpoint(path=first.best_checkpoint)
    state["model"]["head.bias"] += 1
    first.save_best_checkpoint(state)
    cfg = RunDir(runs["crt"]).read_config()
    cfg = dataclasses.replace(cfg, stage=dataclasses.replace(cfg.stage, from_run="2222222222"))
    _, weights = load_first_stage(cfg, folder / "runs" / "g" / "x")
    assert torch.equal(weights["head.bias"], state["model"]["head.bias"])
    assert first_stage_problem(cfg, first) is None  # the sweep's pre-flight lets it through
    first.save_best_checkpoint({**state, "epoch": state["epoch"] + 5})
    with pytest.raises(ConfigError, match="key 'stage.from_epoch': .* is epoch .* but its result's best epoch"):
        load_first_stage(cfg, folder / "runs" / "g" / "x")
    first.best_checkpoint.unlink()
    with pytest.raises(ConfigError, match="kept no ckpt/best.pt"):
        load_first_stage(cfg, folder / "runs" / "g" / "x")
    assert "has no ckpt/best.pt (stage.from_epoch best)" in first_stage_problem(cfg, first)
    shutil.rmtree(copy)


@pytest.mark.slow
def test_supcon_two_stage_recipe_trains_a_linear_classifier_on_frozen_features(tmp_path, tiny_card):
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data", grid="stage.kind: [train, linear]",
                      extra="  loss.name: [supcon]\n  loss.params: [{mode: pretrain}]\n"
                            "  aug.name: ['standard,standard']\n"  # two views of each image, as Khosla et al.
                            "  stage.epochs: [10]\n  stage.lr: [0.2]\n  log.images: [false]\n", epochs=1)
    assert main_sweep([str(grid), "--cluster", "debug", "--runs", str(tmp_path / "runs")]) == 0
    runs = {RunDir(p).read_config().stage.kind: p for p in (tmp_path / "runs" / "g").glob("[0-9a-f]*")}
    first, linear = load(runs["train"])["model"], load(runs["linear"])["model"]
    assert any(k.startswith("projection.") for k in first)
    assert not any(k.startswith("projection.") for k in linear)
    assert torch.equal(linear["backbone.module.conv.weight"], first["backbone.conv.weight"])
    history = result(runs["linear"])["history"]
    # instance-balanced CE on fixed features fits at least the label prior (entropy 2.06 nats),
    # below the 2.30 of a uniform guess, whatever the features are worth after one epoch
    assert len(history) == 10 and history[-1]["loss"] < math.log(10) - 0.1


# ---------------------------------------------------------------------------------------
# the paper grid

def test_the_paper_grid_expresses_the_ldam_drw_protocol():
    grid = load_grid(ROOT / "jobs" / "cifar_lt_paper.yaml")
    cells = grid.cells
    assert {c.config.data.dataset for c in cells} == {"cifar10", "cifar100"}
    assert {c.config.data.imbalance_factor for c in cells} == {10.0, 100.0}
    losses = {c.config.loss.name for c in cells}
    assert {"ce", "focal", "sigmoid_focal", "cb_focal", "ldam_drw", "balanced_softmax", "logit_adjust"} <= losses
    assert len(cells) == 4 * len(losses)
    cfg = cells[0].config
    assert (cfg.model.name, cfg.schedule.epochs, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.weight_decay,
            cfg.optim.momentum) == ("resnet32", 200, 0.1, 128, 2e-4, 0.9)
    assert [lr_factor(cfg, t) for t in (0, 0.9, 2.5, 4.9)] == pytest.approx([0.2, 0.2, 0.6, 1])  # lr·e/5, e = 1..5
    assert [lr_factor(cfg, t) for t in (5, 159.9, 160, 179.9, 180, 199.9)] == pytest.approx(
        [1, 1, 0.01, 0.01, 1e-4, 1e-4])
    ldam = next(c.config for c in cells if c.config.loss.name == "ldam_drw")
    drw = LOSSES.build("ldam_drw", ldam.loss.params, class_counts=torch.tensor([100.0, 10.0]))
    assert drw.start_epoch(200) == 160 and resolve_head(ldam.model.head, type(drw)) == "cosine"


TWO_STAGE_GRIDS = {"cifar_lt_weight_balancing.yaml": "loss,optim.weight_decay", "cifar_lt_ldmlr.yaml": "loss,aug"}
"""The grids of the two-stage methods, and the --rows their comments report them by."""
REPORTED_GRIDS = {**TWO_STAGE_GRIDS, "cifar_lt_sota.yaml": "recipe"}
"""The grids whose rows docs/published.yaml names (besides losses)."""


def test_published_numbers_are_a_loss_by_dataset_table_the_report_reads():
    from harness.report import load_published
    from harness.report.runs import grid_rows
    from harness.report.table import build_table
    numbers = yaml.safe_load((ROOT / "docs" / "published.yaml").read_text())["numbers"]
    assert numbers["ce"]["cifar10 IF100"] == 70.4 and numbers["ldam_drw"]["cifar100 IF100"] == 42.0
    # the published "Focal" row is Cui et al.'s sigmoid focal loss; no published row for the softmax one
    assert numbers["sigmoid_focal"]["cifar10 IF100"] == 70.4 and "focal" not in numbers
    two_stage = {}  # row label -> column labels, as the report prints the two-stage grids
    for name, rows in REPORTED_GRIDS.items():
        cells = grid_rows([], load_grid(ROOT / "jobs" / name, check=False))
        t = build_table(cells, rows.split(","), ["dataset", "imbalance_factor"])
        two_stage.update({t.row_label(r): {t.col_label(c) for c in t.col_values} for r in t.row_values})
    for label, row in numbers.items():
        assert label in LOSSES or set(row) <= two_stage.get(label, set()), label
        for column, value in row.items():
            dataset, factor = column.split(" IF")
            assert dataset in ("cifar10", "cifar100") and factor in ("10", "50", "100") and 0 < value < 100
    assert numbers["ce, weight_decay=0.005, kind=maxnorm"]["cifar100 IF100"] == 53.35
    assert numbers["ce, standard+mixup, kind=ldmlr"]["cifar10 IF100"] == 76.26
    table, source = load_published(ROOT / "docs" / "published.yaml")
    assert table[("cb_focal", "cifar10 if100")] == 74.6 and "best epoch" in source


def test_the_two_stage_grids_pair_every_second_stage_with_its_first_at_the_codes_recipes():
    for name in TWO_STAGE_GRIDS:
        cells = load_grid(ROOT / "jobs" / name).cells
        firsts = {c.signature for c in cells if c.config.stage.kind == "train"}
        seconds = [c.config for c in cells if c.config.stage.kind != "train"]
        assert len(seconds) == len(firsts) and {signature(first_stage_config(c)) for c in seconds} == firsts
    wb = next(c.config for c in load_grid(ROOT / "jobs" / "cifar_lt_weight_balancing.yaml").cells
              if c.config.stage.kind == "maxnorm")
    assert (wb.data.dataset, wb.loss.name, wb.optim.lr, wb.optim.weight_decay, wb.optim.batch_size,
            wb.schedule.decay, wb.schedule.warmup_epochs) == ("cifar100", "ce", 0.01, 5e-3, 64, "cosine", 0)
    run = stage_config(wb)
    assert (run.loss.name, run.optim.lr, run.optim.weight_decay, run.schedule.epochs, wb.stage.maxnorm_thresh) == (
        "cb_softmax_bce", 0.01, 0.1, 10, 0.1)
    ld = next(c.config for c in load_grid(ROOT / "jobs" / "cifar_lt_ldmlr.yaml").cells
              if c.config.stage.kind == "ldmlr")
    assert (ld.aug.name, ld.aug.params, ld.optim.lr, ld.optim.nesterov, ld.optim.weight_decay, ld.optim.batch_size,
            ld.schedule.milestones, ld.schedule.gamma) == ("standard+mixup", {"mixup": {"alpha": 0.5}}, 0.1, True,
                                                           5e-4, 64, [100, 150], 0.1)
    run = stage_config(ld)
    assert (run.optim.name, run.optim.lr, run.optim.batch_size, run.schedule.epochs) == ("adam", 1e-3, 1024, 400)


def test_the_decoupled_grid_runs_kangs_protocol_on_its_own_first_stages():
    paper = load_grid(ROOT / "jobs" / "cifar_lt_paper.yaml", check=False)  # tests/config/test_signatures.py
    cells = load_grid(ROOT / "jobs" / "cifar_lt_decoupled.yaml", check=False).cells  # validates them
    firsts = {c.signature: c.config for c in cells if c.config.stage.kind == "train"}
    seconds = [c.config for c in cells if c.config.stage.kind != "train"]
    assert len(firsts) == 4 and len(seconds) == 8 and {signature(first_stage_config(c)) for c in seconds} == set(firsts)
    for first in firsts.values():  # the paper grid's CE recipe, with a validation split
        ce = next(c.config for c in paper.cells if c.config.loss.name == "ce"
                  and c.config.data.dataset == first.data.dataset
                  and c.config.data.imbalance_factor == first.data.imbalance_factor)
        assert first == dataclasses.replace(ce, data=dataclasses.replace(ce.data, val="split"))
    crt = next(c for c in seconds if c.stage.kind == "crt")
    run = stage_config(crt)
    assert (crt.stage.bn, crt.stage.from_epoch, crt.stage.sampler, run.optim.weight_decay, run.optim.lr,
            run.schedule.epochs, run.schedule.decay) == ("train", "best", "auto", 5e-4, 0.05, 10, "cosine")
    tau = next(c for c in seconds if c.stage.kind == "tau_norm")
    assert (tau.stage.tau, tau.stage.from_epoch, tau.data.val) == ("search", "best", "split")


def test_a_frozen_stage_runs_the_backbone_over_the_test_set_once_and_evaluates_as_the_images_would(decoupled):
    folder, _, runs = decoupled
    trainer = Trainer(RunDir(runs["maxnorm"]).read_config(), folder / "runs" / "g" / "evaluate_twice")
    calls = []
    trainer.model.backbone.module.register_forward_hook(lambda *_: calls.append(1))
    first = trainer.evaluate()
    once = len(calls)
    assert once == len(trainer.data.test) and trainer.evaluate() == first and len(calls) == once
    with torch.no_grad():  # the images through the whole model, on the balanced test set: top-1 is the hit rate
        hits = [(trainer.model(trainer.inputs(x))[0].argmax(1) == y).double() for x, y in trainer.data.test]
    assert first["top1"] == pytest.approx(100 * torch.cat(hits).mean().item(), abs=1e-9)
