"""Pre-flight: data, generated images, first stages and the cluster are checked before anything is
submitted (one line each, exit 2, nothing written); second stages run after their first stages."""
import json
import os
import subprocess
import sys

import pytest

from harness.cli.sweep import main as main_sweep
from harness.data import load_card, prepare
from harness.grid import load_grid
from harness.registry import ConfigError
from harness.sweep import preflight
from harness.sweep.plan import plan
from harness.sweep.profiles import check_cluster, load_profile
from harness.sweep.scheduler import minutes
from support import ROOT, write_grid


@pytest.fixture(scope="module")
def data_root(tiny_card, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare(load_card(str(tiny_card)), root)
    return root


def with_base(grid, line: str):
    """Add `line` (a key of the base) to a grid file written by support.write_grid."""
    grid.write_text(grid.read_text().replace("grid:\n", f"  {line}\ngrid:\n", 1))
    return grid


def errors(capsys) -> list[str]:
    """The error lines on stderr (not the progress bars of data being written)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_an_unprepared_dataset_stops_the_sweep_before_anything_is_written(tmp_path, capsys):
    grid = write_grid(tmp_path, ROOT / "datasets" / "cifar10.yaml", tmp_path / "nodata")
    for args in ([], ["--dry-run"]):
        assert main_sweep([str(grid), "--runs", str(tmp_path / "runs"), *args]) == 2
        (line,) = errors(capsys)
        assert line.startswith(f"error: {tmp_path / 'nodata' / 'cifar10'}: dataset 'cifar10' is not prepared")
        assert "tools/prepare_data.py" in line
    assert not (tmp_path / "runs").exists()


def test_a_prepared_file_that_differs_from_its_manifest_is_refused(tmp_path, tiny_card, capsys):
    prepare(load_card(str(tiny_card)), tmp_path / "data")
    with open(tmp_path / "data" / "tiny" / "train.beton", "ab") as f:
        f.write(b"tampered")
    grid = write_grid(tmp_path, tiny_card, tmp_path / "data")
    assert main_sweep([str(grid), "--runs", str(tmp_path / "runs"), "--cluster", "debug"]) == 2
    (line,) = errors(capsys)
    assert "train.beton: not the file" in line and "manifest.json describes" in line
    assert not (tmp_path / "runs").exists()


def test_the_generated_dataset_is_made_before_submission_and_only_noted_by_a_dry_run(tmp_path, tiny_card, capsys):
    grid = load_grid(write_grid(tmp_path, tiny_card, tmp_path / "data"))
    checks = preflight.check(grid, plan(grid, tmp_path / "runs"), "local", tmp_path / "runs", dry_run=True)
    assert checks.problems == [] and "not generated yet" in checks.notes[0]
    assert not (tmp_path / "data").exists()
    checks = preflight.check(grid, plan(grid, tmp_path / "runs"), "local", tmp_path / "runs")
    assert checks.problems == [] and (tmp_path / "data" / "tiny" / "manifest.json").is_file()


def test_a_missing_val_split_and_bad_generated_folders_are_one_line_each(tmp_path, tiny_card, data_root, capsys):
    other = tmp_path / "gen_other"
    other.mkdir()
    (other / "generated.json").write_text(json.dumps({"class_names": ["a"] * 10, "counts": [1] * 10, "images": 10,
                                                      "size": [32, 32]}))
    unpacked = tmp_path / "gen_unpacked"
    unpacked.mkdir()
    (unpacked / "generated.json").write_text(json.dumps({"class_names": load_card(str(tiny_card)).classes,
                                                         "counts": [1] * 10, "images": 10, "size": [32, 32]}))
    grid = write_grid(tmp_path, tiny_card, data_root,
                      grid=f"{{data.generated: [{tmp_path / 'nothing'}, {other}, {unpacked}]}}")
    assert main_sweep([str(grid), "--runs", str(tmp_path / "runs"), "data.val=val"]) == 2
    lines = errors(capsys)
    assert len(lines) == 4, lines
    assert "has no val split" in lines[0] and "set data.val to split or test" in lines[0]
    assert f"{tmp_path / 'nothing'} has no generated.json" in lines[1]
    assert "was generated for other classes" in lines[2]
    assert f"{unpacked} has no generated.beton" in lines[3]
    assert not (tmp_path / "runs").exists()


def test_a_first_stage_that_is_nowhere_is_refused(tmp_path, tiny_card, data_root, capsys):
    grid = with_base(write_grid(tmp_path, tiny_card, data_root), f"stage: {{kind: crt, from_run: {tmp_path / 'gone'}}}")
    assert main_sweep([str(grid), "--runs", str(tmp_path / "runs"), "--dry-run"]) == 2
    (line,) = errors(capsys)
    assert line.startswith(f"error: first-stage run {tmp_path / 'gone'} not found") and "needed by 1" in line


@pytest.mark.slow
def test_second_stages_run_after_their_first_stage_and_not_after_a_failed_one(tmp_path, tiny_card, data_root,
                                                                              capsys):
    """The grid lists the second stage first; the sweep runs the first stage before it."""
    path = with_base(write_grid(tmp_path, tiny_card, data_root, grid="stage.kind: [crt, train]"), "stage: {epochs: 1}")
    runs = tmp_path / "runs"
    crt, train = (c.signature for c in load_grid(path).cells)
    assert main_sweep([str(path), "--runs", str(runs), "--dry-run"]) == 0
    assert f"submit after {train}" in capsys.readouterr().out
    assert main_sweep([str(path), "--runs", str(runs), "--cluster", "debug", "log.images=false"]) == 0
    for sig in (crt, train):
        assert json.loads((runs / "g" / sig / "state.json").read_text())["state"] == "finished"

    # a first stage that fails: its second stage is not started, and later runs say why
    runs = tmp_path / "runs_nan"
    args = [str(path), "--runs", str(runs), "--cluster", "debug", "optim.lr=1e30", "log.images=false"]
    assert main_sweep(args) == 1
    capsys.readouterr()
    nan = load_grid(path, ["optim.lr=1e30", "log.images=false"])
    crt, train = (c.signature for c in nan.cells)
    state = json.loads((runs / "g" / crt / "state.json").read_text())
    assert state["state"] == "failed" and f"its first stage {train} did not finish" in state["error"]
    assert main_sweep([*args, "--only", crt, "--retry-failed", "--dry-run"]) == 2
    (line,) = errors(capsys)
    assert f"first-stage run {runs / 'g' / train} failed (TrainingError: loss is nan" in line
    assert "run with --retry-failed" in line


def test_time_limit_above_the_partitions_max_time_is_refused(tmp_path, monkeypatch):
    sinfo = tmp_path / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'debug|(null)|30:00'\n")
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    check_cluster(load_profile("local", {"time_min": 30}))
    with pytest.raises(ConfigError, match=r"time_min=31 is above the MaxTime of partition 'debug' \(30 min\)"):
        check_cluster(load_profile("local", {"time_min": 31}))


@pytest.mark.parametrize("limit, expected", [("30", 30), ("30:00", 30), ("45:30", 45), ("2:00:00", 120),
                                             ("1-12", 2160), ("1-00:00:00", 1440), ("infinite", None),
                                             ("UNLIMITED", None)])
def test_slurm_time_limits_in_minutes(limit, expected):
    assert minutes(limit) == expected


def test_the_sweep_cli_still_loads_no_torch_for_status(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from harness.cli.sweep import main; "
            f"sys.exit(main(['jobs/demo.yaml', '--failed', '--runs', {str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no failed cells" in out.stdout, out.stderr
