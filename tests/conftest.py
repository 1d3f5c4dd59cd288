"""Shared fixtures: small generated datasets and grids in temporary folders."""
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from fixtures_slurm import *  # noqa: E402,F401,F403  (the one-node SLURM cluster)


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    """A small synthetic dataset card (60 train / 20 test images per class)."""
    folder = tmp_path_factory.mktemp("cards")
    card = yaml.safe_load((ROOT / "datasets" / "synthetic.yaml").read_text())
    card["name"] = "tiny"
    card["source"].update(train_per_class=60, test_per_class=20)
    path = folder / "tiny.yaml"
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
