"""Shared fixtures: small generated datasets in temporary folders, and the one-node SLURM cluster."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: `import harness`
sys.path.insert(0, str(Path(__file__).parent))  # `import support`
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # tools/test.sh runs the suite on two pytest-xdist workers
if WORKER:  # one thread a worker, two fill two cores. Forced: the workers inherit the controller's "2"
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

from support import write_card  # noqa: E402
from support.slurm import *  # noqa: E402,F401,F403  (the slurm_cluster fixture)


@pytest.fixture(scope="session")
def learn_data(tmp_path_factory) -> tuple[Path, Path]:
    """The learning tests' card (support.learning) and a data root shared by them and by every worker
    of the session, with the runs they train (support.learning.train_final): generated once."""
    from harness.files import file_lock
    from support.learning import shared_folder, write_learn_card
    folder = shared_folder(tmp_path_factory) / "learn"
    with file_lock(folder.parent / "learn.lock"):
        card = folder / "learn.yaml"
        if not card.is_file():
            folder.mkdir()
            write_learn_card(folder)
    return card, folder / "data"


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    """A small synthetic dataset card (60 train / 20 test images per class)."""
    return write_card(tmp_path_factory.mktemp("cards"), "tiny", train_per_class=60, test_per_class=20)


def pytest_collection_modifyitems(config, items):
    """For pytest-xdist (`-n 2 --dist loadgroup`, tools/test.sh): the tests that submit to the one SLURM
    cluster run on one worker, one after another (they wait on the same queue); and the slow tests
    (their modules whole, so that a module's fixtures are built once a worker) are handed out first, so that
    no worker starts a long one while the other has nothing left."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)  # stable: each module's order stays
