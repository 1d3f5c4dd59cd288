"""Chaos, small: SIGKILL a local sweep's cells at random moments and as they write checkpoints,
run the sweep again until it ends; every cell equals an uninterrupted run and nothing is lost or
duplicated (bench/chaos.py runs the bigger version and the SLURM one)."""

import pytest

from support import load_script


@pytest.mark.slow
def test_killed_cells_end_as_if_never_killed(tmp_path):
    found = load_script("bench/chaos.py").local_chaos(tmp_path, cells=3, epochs=2, kills=6, seed=1)
    assert found["finished"] and found["kills"] == 6, found
    assert found["kills_at_checkpoint_start"] >= 1, found["kill_log"]
    assert (found["mismatches"], found["lost"], found["duplicated"]) == (0, 0, 0), found["details"]
