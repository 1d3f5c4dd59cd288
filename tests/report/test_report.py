"""The report tool on a folder of result files written here: seeds, missing and failed cells,
--best, --rows/--cols, --compare (YAML and CSV), the CSV and the PNG."""
import csv
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from harness.cli.report import main
from harness.grid import load_grid
from harness.registry import ConfigError
from harness.report import build_table, collect, complete, report, runs_table
from harness.rundir import RunDir
from support import ROOT
from support.results import FINAL, GRID, result_for


@pytest.fixture
def runs(tmp_path):
    """runs/paper with the outcomes of FINAL, plus a stray run of an older grid (another lr)."""
    grid_file = tmp_path / "paper.yaml"
    grid_file.write_text(GRID)
    grid = load_grid(grid_file)
    folder = tmp_path / "runs" / "paper"
    for cell in grid.cells:
        outcome = FINAL[(cell.axes["loss.name"], cell.axes["data.imbalance_factor"])][cell.axes["seed"]]
        if outcome is None:
            continue
        run_dir = folder / cell.signature
        RunDir(run_dir).write_cell(grid.name, cell)
        if outcome == "failed":
            RunDir(run_dir).update_state(state="failed", error="TrainingError: loss is nan at epoch 3")
        else:
            (run_dir / "result.json").write_text(json.dumps(result_for(cell, outcome)))
    return folder, grid_file


def old_run(folder, grid_file):
    """A finished run of an older version of the grid: same axes, other lr, other signature."""
    cell = next(c for c in load_grid(grid_file, ["optim.lr=0.2"]).cells
                if c.axes == {"loss.name": "ce", "data.imbalance_factor": 10, "seed": 0})
    RunDir(folder / cell.signature).write_cell("paper", cell)
    (folder / cell.signature / "result.json").write_text(json.dumps(result_for(cell, 10.0)))
    return cell


def row_of(text: str, name: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_is_mean_and_std_over_seeds_with_incomplete_cells_marked(runs):
    folder, _ = runs
    text, files = report(folder)
    assert "**final epoch**" in text and "over 3 seed(s)" in text
    header = row_of(text, "loss")
    assert header == ["loss", "cifar10 IF10", "cifar10 IF50", "cifar10 IF100"]
    assert row_of(text, "ce")[1:] == ["87.0 ± 1.0", "75.0 ± 0.0", "71.0 ± 1.4 (2/3)"]
    assert row_of(text, "ldam_drw")[1:] == ["88.0 ± 0.0", "— (0/3)", "76.5 ± 0.7 (2/3)"]
    # many/medium/few: final many = top1 + 10, few = top1 - 20
    groups = text.split("## Many / medium / few")[1]
    assert row_of(groups, "ce")[1:4] == ["97.0 ± 1.0", "87.0 ± 1.0", "67.0 ± 1.0"]
    # the runs that did not finish are listed with their state and error
    unfinished = text.split("## Runs not finished")[1]
    assert unfinished.count("| missing |") == 4
    assert "| failed | TrainingError: loss is nan at epoch 3 |" in unfinished
    assert files["md"].read_text() == text and files["md"].parent == folder


def test_best_reports_the_best_epoch_and_says_so(runs):
    folder, _ = runs
    text, files = report(folder, best=True)
    assert "**best epoch (the epoch of highest test top-1" in text
    assert row_of(text, "ce")[1] == "88.0 ± 1.0"
    assert files["md"].name == "report_best.md" and (folder / "report_best.png").is_file()


def test_csv_has_one_line_per_row_column_and_metric(runs):
    folder, _ = runs
    _, files = report(folder)
    lines = list(csv.DictReader(files["csv"].open()))
    assert len(lines) == 2 * 3 * 4
    pick = {(l["loss"], float(l["imbalance_factor"]), l["metric"]): l for l in lines}
    ce100 = pick[("ce", 100, "top1")]
    assert float(ce100["mean"]) == pytest.approx(71.0) and float(ce100["std"]) == pytest.approx(2 ** 0.5, abs=1e-4)
    assert (ce100["finished"], ce100["expected"], ce100["which"]) == ("2", "3", "final")
    empty = pick[("ldam_drw", 50, "few")]
    assert (empty["mean"], empty["finished"], empty["expected"]) == ("", "0", "3")


def test_png_is_a_valid_plot(runs):
    folder, _ = runs
    _, files = report(folder)
    with Image.open(files["png"]) as img:
        img.verify()
    with Image.open(files["png"]) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 20  # lines, markers and text, not a blank canvas


def test_rows_and_columns_can_be_any_axis(runs):
    folder, _ = runs
    text, _ = report(folder, rows_axes="imbalance_factor", cols_axes="loss")
    assert row_of(text, "imbalance_factor") == ["imbalance_factor", "ce", "ldam_drw"]
    assert row_of(text, "IF100")[1:] == ["71.0 ± 1.4 (2/3)", "76.5 ± 0.7 (2/3)"]
    # an axis that is neither rows nor columns joins the rows instead of being averaged away
    rows = complete(collect(folder))
    table = build_table(rows, ["loss"], ["dataset"])
    assert [table.row_label(rv) for rv in table.row_values][:3] == ["ce, IF10", "ce, IF50", "ce, IF100"]
    with pytest.raises(ConfigError, match="unknown axis 'lossy'"):
        report(folder, rows_axes="lossy")


def test_compare_adds_a_column_of_published_numbers(runs, tmp_path, capsys):
    folder, _ = runs
    published = tmp_path / "ldam.yaml"
    published.write_text(textwrap.dedent("""\
        source: "Cao et al. 2019, Table 2"
        numbers:
          ce: {cifar10 IF100: 70.4, cifar10 IF10: 86.4}
          ldam_drw: {cifar10 IF100: 77.0}
          focal: {cifar10 IF100: 70.4}
        """))
    text, files = report(folder, compare=str(published))
    assert row_of(text, "loss") == ["loss", "cifar10 IF10", "cifar10 IF10 (published)", "cifar10 IF50",
                                    "cifar10 IF100", "cifar10 IF100 (published)"]
    assert row_of(text, "ce")[1:] == ["87.0 ± 1.0", "86.4", "75.0 ± 0.0", "71.0 ± 1.4 (2/3)", "70.4"]
    assert row_of(text, "ldam_drw")[2] == "—" and row_of(text, "ldam_drw")[5] == "77.0"
    assert "Published numbers: Cao et al. 2019, Table 2." in text
    assert "'focal / cifar10 if100' matches no row" in capsys.readouterr().err
    pub = [l["published"] for l in csv.DictReader(files["csv"].open()) if l["metric"] == "top1"]
    assert sorted(p for p in pub if p) == ["70.4000", "77.0000", "86.4000"]
    as_csv = tmp_path / "ldam.csv"
    as_csv.write_text("loss,cifar10 IF100,cifar10 IF10\nce,70.4,86.4\nldam_drw,77.0,\n")
    assert report(folder, compare=str(as_csv))[0].count("(published)") == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("numbers: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a published-numbers file"):
        report(folder, compare=str(bad))


def test_grid_file_keeps_exactly_its_cells(runs, capsys):
    folder, grid_file = runs
    stray = old_run(folder, grid_file)
    text, _ = report(folder)  # without the grid file the stray run counts, with a warning
    assert row_of(text, "ce")[1] == "67.8 ± 38.5"
    assert "2 runs share the axes" in capsys.readouterr().err
    text, _ = report(folder, grid=str(grid_file))
    assert row_of(text, "ce")[3] == "87.0 ± 1.0" and stray.signature not in text
    assert row_of(text, "loss")[1:] == ["cifar10 IF100", "cifar10 IF50", "cifar10 IF10"]  # the grid's order
    assert text.split("## Runs not finished")[1].count("| missing |") == 4


def test_runs_table_lists_every_run(runs):
    folder, _ = runs
    rows = collect(folder)
    table = runs_table(rows)
    assert len(table.splitlines()) == 2 + 14
    assert table.count("| finished |") == 13 and table.count("| failed | - | - | - | - |") == 1


def test_command_line(runs, tmp_path):
    folder, _ = runs
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "report.py"), str(folder), "--out",
                          str(tmp_path / "paper-tables")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| ce | 87.0 ± 1.0 |" in out.stdout and (tmp_path / "paper-tables" / "report.png").is_file()


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "nope: no such folder; pass a grid's run folder" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folders (with cell.json) here" in capsys.readouterr().err
