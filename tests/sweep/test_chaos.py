"""Chaos, small: SIGKILL a local sweep's cells at random moments and as they write checkpoints,
run the sweep again until it ends; every cell equals an uninterrupted run and nothing is lost or
duplicated (bench/chaos.py runs the bigger version and the SLURM one)."""
import importlib.util

import pytest

from support import ROOT


def chaos_module():
    """bench/chaos.py, which is not a package module."""
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_cells_end_as_if_never_killed(tmp_path):
    found = chaos_module().local_chaos(tmp_path, cells=3, epochs=2, kills=8, seed=1)
    assert found["finished"] and found["kills"] == 8, found
    assert found["kills_at_checkpoint_start"] >= 1, found["kill_log"]
    assert (found["mismatches"], found["lost"], found["duplicated"]) == (0, 0, 0), found["details"]
