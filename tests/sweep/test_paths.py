"""Paths stay inside their roots: grid and job names are refused unless they are plain folder
names, class names must be single folder names, signatures on the command line are checked."""
import json

import pytest

from harness.cli.sweep import main as main_sweep
from harness.data.readers import class_folder, open_source
from harness.files import check_name, file_lock
from harness.generate.job import read_job
from harness.grid import load_grid
from harness.registry import ConfigError

ODD = ["../../etc", "..", ".", "/abs/path", "a/b", "a b", "x\0y", "grüße", ".hidden", "", "a\nb", "x" * 101]
"""Refused as grid or job names: they would leave --runs, hide the folder, or break the job script."""


@pytest.mark.parametrize("name", ODD)
def test_odd_grid_names_are_refused_with_one_line_and_nothing_is_written(tmp_path, capsys, name):
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: {json.dumps(name)}\nbase: {{}}\ngrid: {{seed: [0]}}\n")  # JSON strings are YAML
    if name == "":  # an empty name falls back to the file's name
        assert load_grid(grid, check=False).name == "g"
        return
    with pytest.raises(ConfigError) as e:
        load_grid(grid, check=False)
    assert str(e.value).startswith(f"{grid}: grid name") and "cannot be a folder name" in str(e.value)
    assert "\n" not in str(e.value)
    assert main_sweep([str(grid), "--dry-run", "--runs", str(tmp_path / "runs")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "etc").exists()


@pytest.mark.parametrize("name", ["demo", "cifar_lt-paper.v2", "ablation+seed3", "A1"])
def test_plain_names_are_kept(name):
    assert check_name(name, "grid name") == name


def test_a_grid_named_by_an_odd_file_name_is_refused(tmp_path):
    grid = tmp_path / "my grid.yaml"
    grid.write_text("base: {}\ngrid: {seed: [0]}\n")
    with pytest.raises(ConfigError, match=r"grid name 'my grid' cannot be a folder name.*e.g. 'my_grid'"):
        load_grid(grid, check=False)


@pytest.mark.parametrize("name", ["../escape", "/abs", "x y"])
def test_odd_generator_job_names_are_refused(tmp_path, name):
    job = tmp_path / "gen.yaml"
    job.write_text(f"name: {json.dumps(name)}\ndataset: {{dataset: synthetic, root: {tmp_path}}}\n")
    with pytest.raises(ConfigError, match="job name .* cannot be a folder name"):
        read_job(job)


@pytest.mark.parametrize("name, ok", [("great white shark", True), ("café", True), ("0", True),
                                      ("..", False), (".", False), ("a/b", False), ("a\0b", False),
                                      ("tab\there", False), ("", False)])
def test_class_names_are_single_folder_names(name, ok):
    if ok:
        assert class_folder(name) == name
    else:
        with pytest.raises(ConfigError, match="cannot be a folder name"):
            class_folder(name, "card.yaml")


def test_an_image_folder_dataset_with_a_class_that_is_a_path_is_refused(tmp_path, tiny_card):
    from harness.data.cards import load_card
    card = load_card(str(tiny_card))
    card.classes = ["../evil"] + card.classes[1:]
    card.layouts = [{"kind": "image_folder", "folders": ["tiny"]}]
    (tmp_path / "tiny" / "train").mkdir(parents=True)
    (tmp_path / "tiny" / "test").mkdir()
    with pytest.raises(ConfigError, match=r"class name '../evil' cannot be a folder name"):
        open_source(card, tmp_path)


@pytest.mark.parametrize("flag, value, message", [
    ("--only", "../x", "--only '../x': not a cell of grid"),
    ("--only", "0123456789", "--only '0123456789': not a cell of grid"),
    ("--why", "../../etc/passwd", "--why '../../etc/passwd': give a cell's signature"),
    ("--why", "0123456789", "no cell of grid 'g' has that signature or job id"),
])
def test_signatures_on_the_command_line_are_checked(tmp_path, capsys, flag, value, message):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nbase: {}\ngrid: {seed: [0]}\n")
    assert main_sweep([str(grid), flag, value, "--dry-run", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_file_lock_without_waiting_reports_that_another_holds_it(tmp_path):
    lock = tmp_path / "sub" / "x.lock"
    with file_lock(lock) as held:
        with file_lock(lock, wait=False) as second:  # another open file: flock sees another holder
            assert held and not second
    with file_lock(lock, wait=False) as free:
        assert free
