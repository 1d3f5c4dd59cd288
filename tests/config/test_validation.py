"""Validation builds what a grid names: every bad value exits 2 with one line naming the file, the
key and the value, before anything runs (and with --dry-run); each part is built once per grid."""
import subprocess
import sys
import textwrap

import pytest

from harness.config import RunConfig, from_dict
from harness.data import load_card, prepare
from harness.data.imbalance import exp_counts
from harness.grid import load_grid
from harness.grid import validate as validation
from harness.registry import ConfigError
from support import ROOT

BAD = [  # (what the grid sets, the key the error names, what else it must say)
    ("loss: {name: ldam, params: {max_m: -1}}", "loss.params.max_m", "-1"),
    ("loss: {name: focal, params: {gamma: abc}}", "loss.params.gamma", "'abc'"),
    ("loss: {name: cb_softmax, params: {beta: 1.5}}", "loss.params.beta", "1.5"),
    ("loss: {name: logit_adjust, params: {tau: .nan}}", "loss.params.tau", "nan"),
    ("loss: {name: ce_drw, params: {drw_frac: 2}}", "loss.params.drw_frac", "2"),
    ("loss: {name: arcface, params: {m: 10}}", "loss.params.m", "10"),
    ("aug: {name: randaugment, params: {randaugment: {magnitude: 99}}}", "aug.params.randaugment.magnitude", "99"),
    ("aug: {name: mixup, params: {mixup: {alpha: -1}}}", "aug.params.mixup.alpha", "-1"),
    ("data: {imbalance_factor: 1.0e+9}", "data.imbalance_factor", "without images"),
    ("data: {dataset: imagenet21k}", "data.dataset", "imagenet21k"),
    ("model: {name: resnet1000}", "model.name", "resnet1000"),
    ("stage: {kind: crt, epochs: 0}", "stage.epochs", "got 0"),
    ("aug: {name: standard+cutout, params: {cutout: {size: -3}}}", "aug.params.cutout.size", "-3"),
    ("schedule: {warmup_epochs: -2}", "schedule.warmup_epochs", "-2"),
    ("log: {eval_every: -1}", "log.eval_every", "-1"),
]


def grid_file(tmp_path, base: str, axes: str = "{seed: [0]}"):
    path = tmp_path / "x.yaml"
    path.write_text(f"name: x\nbase: {{{base}}}\ngrid: {axes}\n")
    return path


@pytest.mark.parametrize("base, key, value", BAD)
def test_a_bad_value_is_one_line_naming_file_key_and_value(tmp_path, base, key, value):
    path = grid_file(tmp_path, base)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    message = str(e.value)
    assert message.startswith(f"{path}: key '{key}'") and value in message and "\n" not in message, message


def test_the_cli_exits_2_with_that_line_on_dry_run_and_writes_nothing(tmp_path):
    path = grid_file(tmp_path, "loss: {name: ldam, params: {max_m: -1}}")
    out = subprocess.run([sys.executable, str(ROOT / "tools/sweep.py"), str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {path}: key 'loss.params.max_m': ldam max_m must be >= 0, got -1"
    assert not (tmp_path / "runs").exists()


def test_a_bad_value_in_one_cell_of_an_axis_is_found(tmp_path):
    path = grid_file(tmp_path, "loss: {name: focal}", "{loss.params.gamma: [0, 2, -1]}")
    with pytest.raises(ConfigError, match="key 'loss.params.gamma': focal gamma must be >= 0, got -1"):
        load_grid(path)


def test_each_distinct_model_is_built_once_per_grid(monkeypatch):
    built = []
    real = validation.build_model
    monkeypatch.setattr(validation, "build_model",
                        lambda *a, **k: built.append((*a, *sorted(k.items()))) or real(*a, **k))
    grid = load_grid(ROOT / "jobs" / "cifar_lt_paper.yaml")
    assert len(grid.cells) == 64
    # resnet32 with a linear head (or one with a sigmoid loss's prior bias), a cosine or a projection head,
    # for 10 and for 100 classes
    assert sorted(set(built), key=str) == sorted(built, key=str) and len(built) == 8


def test_class_counts_come_from_the_prepared_labels_or_from_the_card(tmp_path, tiny_card):
    card_file = tmp_path / "card.yaml"  # says 500 images per class; the generated files hold 60
    card_file.write_text(tiny_card.read_text() + "n_max: 500\n")
    cfg = from_dict(RunConfig, {"data": {"dataset": str(card_file), "root": str(tmp_path), "imbalance_factor": 10}})
    card = load_card(str(card_file))
    assert validation.Validator().counts(cfg, card)[0] == 500  # not prepared: the card's n_max
    prepare(card, tmp_path)
    assert validation.Validator().counts(cfg, card) == exp_counts(60, 10, 10)  # from the files: 60 per class


def test_a_second_stage_is_checked_with_what_it_trains(tmp_path):
    assert len(load_grid(grid_file(tmp_path, "stage: {kind: crt, loss: cb_softmax}")).cells) == 1
    with pytest.raises(ConfigError, match=r"x.yaml: key 'stage.loss': unknown loss 'nosuch'"):
        load_grid(grid_file(tmp_path, "stage: {kind: crt, loss: nosuch}"))


def test_the_paper_grids_validate_quickly():
    code = textwrap.dedent("""\
        import time
        t = time.perf_counter()
        from harness.grid import load_grid
        load_grid('jobs/cifar_lt_paper.yaml')
        print(time.perf_counter() - t)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 15  # a few seconds, mostly importing torch; shared CI machines are slow
