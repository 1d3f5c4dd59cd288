"""Grid files, validation errors, overrides and signatures."""
import subprocess
import sys
import textwrap

import pytest

from harness.config import RunConfig, from_dict, signature
from harness.grid import load_grid
from harness.registry import ConfigError, Registry
from support import ROOT


def grid_file(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
    name: g
    base:
      schedule: {epochs: 3}
    grid:
      loss.name: [ce, balanced_softmax]
      data.imbalance_factor: [10, 100]
      seed: [0, 1]
    """


def test_grid_expands_to_the_cartesian_product(tmp_path):
    grid = load_grid(grid_file(tmp_path, GOOD))
    assert len(grid.cells) == 8
    assert {c.config.loss.name for c in grid.cells} == {"ce", "balanced_softmax"}
    assert all(c.config.schedule.epochs == 3 for c in grid.cells)
    assert len({c.signature for c in grid.cells}) == 8
    assert grid.cells[0].axes == {"loss.name": "ce", "data.imbalance_factor": 10, "seed": 0}


def test_overrides_apply_to_the_base_and_change_the_signature(tmp_path):
    path = grid_file(tmp_path, GOOD)
    plain = load_grid(path)
    over = load_grid(path, ["optim.lr=0.05", "launch.parallel=2"])
    assert all(c.config.optim.lr == 0.05 for c in over.cells)
    assert over.launch.parallel == 2
    assert {c.signature for c in plain.cells}.isdisjoint({c.signature for c in over.cells})


@pytest.mark.parametrize("text, words", [
    ("base: {optim: {lrr: 0.1}}\ngrid: {seed: [0]}", ["grid.yaml", "optim.lrr"]),
    ("base: {}\ngrid: {loss.name: [nope]}", ["grid.yaml", "loss.name", "unknown loss 'nope'"]),
    ("base: {optim: {lr: fast}}\ngrid: {seed: [0]}", ["grid.yaml", "optim.lr", "float"]),
    ("base: {schedule: {epochs: 2.5}}\ngrid: {seed: [0]}", ["schedule.epochs", "int"]),
    ("base: {}\ngrid: {seed: []}", ["grid key 'seed'", "non-empty"]),
    ("base: {}\ngrid: {aug.name: [standard+wobble]}", ["aug.name", "wobble"]),
    ("base: {loss: {name: focal, params: {gama: 2}}}\ngrid: {seed: [0]}", ["loss.name", "gama"]),
    ("base: {}\ngrid: {seed: [0]}\nlaunch: {cluster: moon}", ["launch.cluster", "moon"]),
    ("base: {}\ngird: {seed: [0]}", ["unknown top-level key 'gird'"]),
    ("base: {model: {head: linear}}\ngrid: {loss.name: [ldam]}", ["model.head", "cosine"]),
    ("base: [1\n", ["grid.yaml", "not valid YAML"]),
])
def test_bad_grids_name_the_file_and_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_grid(grid_file(tmp_path, text))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_sweep_exits_2_with_one_line_on_a_bad_grid(tmp_path):
    path = grid_file(tmp_path, "base: {optim: {lrr: 0.1}}\ngrid: {seed: [0]}")
    out = subprocess.run([sys.executable, str(ROOT / "tools/sweep.py"), str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "optim.lrr" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_cells_and_signatures_and_runs_nothing(tmp_path):
    path = grid_file(tmp_path, GOOD)
    out = subprocess.run([sys.executable, str(ROOT / "tools/sweep.py"), str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for cell in load_grid(path).cells:
        assert cell.signature in out.stdout
    assert not (tmp_path / "runs").exists()


def test_signature_is_stable_across_processes_and_key_order():
    a = from_dict(RunConfig, {"optim": {"lr": 0.05, "momentum": 0.8}, "seed": 3})
    b = from_dict(RunConfig, {"seed": 3, "optim": {"momentum": 0.8, "lr": 0.05}})
    assert signature(a) == signature(b)
    code = ("from harness.config import *; print(signature(from_dict(RunConfig, "
            "{'optim': {'lr': 0.05, 'momentum': 0.8}, 'seed': 3})))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"}).stdout.strip()
    assert other == signature(a)


def test_signature_ignores_fields_that_cannot_change_the_result():
    base = RunConfig()
    workers = from_dict(RunConfig, {"data": {"num_workers": 7}, "log": {"print_every": 3}})
    lr = from_dict(RunConfig, {"optim": {"lr": 0.2}})
    assert signature(base) == signature(workers)
    assert signature(base) != signature(lr)
    assert from_dict(RunConfig, {"optim": {"lr": 1}}).optim.lr == 1.0  # ints are fine for floats


def test_registry_refuses_duplicates_and_names_the_known_parts():
    reg = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(KeyError):
        reg.register("a")(object)
    with pytest.raises(ConfigError, match="unknown widget 'b'; known: a"):
        reg.get("b")
