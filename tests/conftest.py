"""Shared fixtures: small generated datasets in temporary folders, and the one-node SLURM cluster."""
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: `import harness`
sys.path.insert(0, str(Path(__file__).parent))  # `import support`
os.environ.setdefault("OMP_NUM_THREADS", "2")

from support import ROOT  # noqa: E402
from support.slurm import *  # noqa: E402,F401,F403  (the slurm_cluster fixture)


@pytest.fixture(scope="session")
def learn_data(tmp_path_factory) -> tuple[Path, Path]:
    """The learning tests' card (support.learning) and a data root shared by them: generated once."""
    from support.learning import write_learn_card
    folder = tmp_path_factory.mktemp("learn")
    return write_learn_card(folder), folder / "data"


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
