"""Helpers the tests share (not tests): the repository root, small grid files, the SLURM cluster
fixture (support.slurm) and the rank worker of the multi-process tests (support.dist_worker)."""
import importlib.util
import textwrap
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_card(folder: Path, name: str, train_per_class: int, test_per_class: int) -> Path:
    """A card of the procedural synthetic dataset (datasets/synthetic.yaml) with other sizes, in `folder`."""
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    card["name"] = name
    card["source"].update(train_per_class=train_per_class, test_per_class=test_per_class)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def write_grid(folder: Path, card: Path, data_root: Path, name: str = "g", extra: str = "",
               grid: str = "loss.name: [ce]", epochs: int = 2) -> Path:
    """A grid file for a fast CPU run: ResNet-8 on the tiny card."""
    text = textwrap.dedent(f"""\
        name: {name}
        base:
          data: {{dataset: {card}, root: {data_root}, loader: memory, imbalance_factor: 10}}
          model: {{name: resnet8}}
          optim: {{batch_size: 64, lr: 0.05}}
          schedule: {{epochs: {epochs}, warmup_epochs: 0, decay: cosine}}
          log: {{print_every: 0}}
        grid:
          {grid}
        """) + extra
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def load_script(relative: str):
    """A script of the repository that is not a package module (tools/*.py, bench/*.py), as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_main():
    """tools/prepare_data.py's main(argv), loaded from the file itself."""
    return load_script("tools/prepare_data.py").main


def wait_for(predicate, timeout_s: float, what: str) -> None:
    """Poll `predicate` until it is true; an AssertionError naming `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
