"""tools/generate_tail.py end to end: plan, shards on SLURM / gloo ranks / one process, resume, training."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli.generate_tail import main
from harness.config import RunConfig, from_dict, signature
from harness.data.beton import Beton
from harness.data.generated import generated_take, mix_generated, read_info
from harness.generate import build_tiny_pipeline, collect_manifest, load_generated
from harness.registry import ConfigError
from support import ROOT, write_grid

TOOL = ROOT / "tools" / "generate_tail.py"
REAL = [int(60 * 10 ** (-i / 9)) for i in range(10)]  # the LDAM-DRW profile of the tiny card, IF 10
COUNT = 12  # fill to_count 12: classes 7, 8, 9 need 2, 5, 6 images


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_tiny_pipeline(path, seed=0)
    finally:
        torch.set_num_threads(threads)
    return str(path)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def write_job(folder: Path, card: Path, root: Path, model: str, launch: str = "{cluster: debug}") -> Path:
    """A job file for the tiny card and the tiny pipeline: 13 images of 32x32, 4 steps, one thread."""
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: tiny-tail
        dataset: {{dataset: {card}, root: {root}, imbalance: exp, imbalance_factor: 10}}
        generate: {{model: {model}, fill: to_count, count: {COUNT}, height: 32, width: 32, out_size: 32,
                   steps: 4, batch_size: 2, seed: 7}}
        launch: {launch}
        out_dir: {folder / "out"}
        """))
    return path


def files(out: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every image and sidecar row."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*")) if p.is_file()}


def run_tool(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_card, data_root, tiny_model) -> Path:
    """The tiny job generated in this process, one shard, then packed."""
    folder = tmp_path_factory.mktemp("reference")
    assert main([str(write_job(folder, tiny_card, data_root, tiny_model))]) == 0
    return folder / "out"


def test_reference_is_complete_and_packed(reference):
    rows = collect_manifest(reference)
    assert [(r["class_index"], r["index"]) for r in rows] == [(c, i) for c, n in ((7, 2), (8, 5), (9, 6))
                                                              for i in range(n)]
    assert len((reference / "manifest.jsonl").read_text().splitlines()) == 13
    info = read_info(reference)
    assert info["counts"] == [0] * 7 + [2, 5, 6] and info["images"] == 13 and info["size"] == [32, 32]
    images, labels = load_generated(reference)
    x, y = Beton(reference / "generated.beton").read()
    assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(images)) and y.tolist() == labels.tolist()
    assert np.load(reference / "generated_labels.npy").tolist() == labels.tolist()


# --- plan and errors -------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_of_the_ldam_profile(tmp_path, tiny_card, data_root, capsys):
    job = write_job(tmp_path, tiny_card, data_root, str(tmp_path / "no-model"))
    rc, out, _ = run_tool(capsys, job, "--dry-run", "generate.fill=to_max", "launch.array_size=3", "launch.ranks=2")
    assert rc == 0
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10))
    assert [int(r[2]) for r in rows] == REAL == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    assert [int(r[3]) for r in rows] == [60 - n for n in REAL] and all(int(r[4]) == 60 for r in rows)
    assert f"-> {600 - sum(REAL)} images" in out
    shards = next(line for line in out.splitlines() if line.startswith("shards:"))
    assert shards.startswith("shards: 6 (3 array tasks x 2 ranks)")
    per_shard = [int(n) for n in shards.split("images per shard:")[1].split()]
    assert len(per_shard) == 6 and sum(per_shard) == 600 - sum(REAL) and max(per_shard) - min(per_shard) <= 8
    assert "model: NOT USABLE: generate.model: no such directory" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    rc, out, _ = run_tool(capsys, job, "--dry-run")
    assert [int(line.split()[3]) for line in out.splitlines() if line.split() and line.split()[0].isdigit()] \
        == [max(0, COUNT - n) for n in REAL]


def test_dry_run_of_the_cifar10_job_gives_the_standard_counts(tmp_path, capsys):
    """jobs/generate.yaml as shipped; CIFAR-10 is not prepared here, so the card's n_max is used."""
    def table(out):
        return [[int(x) for x in line.split()[2:]] for line in out.splitlines()
                if line.split() and line.split()[0].isdigit()]

    rc, out, _ = run_tool(capsys, ROOT / "jobs" / "generate.yaml", "--dry-run", f"dataset.root={tmp_path}")
    assert rc == 0 and "not prepared" in out
    real, need, total = zip(*table(out))
    assert list(real) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and set(total) == {5000}
    assert sum(need) == 37594 and "shards: 8 (8 array tasks x 1 ranks)" in out
    rc, out, _ = run_tool(capsys, ROOT / "jobs" / "generate.yaml", "--dry-run", f"dataset.root={tmp_path}",
                          "dataset.imbalance_factor=10", "generate.fill=ratio", "generate.ratio=0.5")
    real, need, _ = zip(*table(out))
    assert sum(real) == 20431 and list(need) == [int(0.5 * (5000 - n) + 0.5) for n in real]
    assert list(tmp_path.iterdir()) == []


def test_job_file_errors_are_one_line(tmp_path, tiny_card, data_root, tiny_model, capsys):
    job = write_job(tmp_path, tiny_card, data_root, tiny_model)
    cases = {("lanch.cluster=slurm",): f"{job}: unknown key 'lanch'",
             ("generate.stepz=3",): f"{job}: generate: unknown key(s) stepz",
             ("launch.arrays=2",): f"{job}: unknown key 'launch.arrays'",
             ("dataset.imbalance_factr=5",): f"{job}: unknown key 'dataset.imbalance_factr'",
             ("launch.ranks=0",): "launch.ranks' must be at least 1",
             ("generate.steps=many",): "generate.steps: expected int"}
    for overrides, message in cases.items():
        rc, out, err = run_tool(capsys, job, *overrides)
        assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, (overrides, err)
    assert not (tmp_path / "out").exists()


def test_missing_or_malformed_model_is_one_error_and_nothing_is_submitted(tmp_path, tiny_card, data_root,
                                                                           tiny_model, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "unet")
    job = write_job(tmp_path, tiny_card, data_root, tiny_model, "{cluster: slurm, profile: local, array_size: 2}")
    for model, message in ((tmp_path / "missing", "no such directory"), (broken, "has no unet/ folder")):
        rc, out, err = run_tool(capsys, job, "--model", model)
        assert rc == 2 and err.count("\n") == 1 and message in err and out == "", err
    assert not (tmp_path / "out").exists()  # no plan, no .submitit folder: nothing was submitted


def test_img2img_starts_from_the_long_tailed_real_images(tmp_path, tiny_card, data_root, tiny_model, reference,
                                                         capsys):
    job = write_job(tmp_path, tiny_card, data_root, tiny_model)
    rc, _, err = run_tool(capsys, job, "generate.mode=img2img", "generate.strength=0.5", "generate.count=16")
    assert rc == 0, err
    rows = collect_manifest(tmp_path / "out")
    assert len(rows) == sum(max(0, 16 - n) for n in REAL) == 29 and all(r["mode"] == "img2img" for r in rows)
    # each class starts from its own long-tailed real images, cycled: 6 for class 9, not the 60 of the full set
    assert [r["init_index"] for r in rows] == [r["index"] % REAL[r["class_index"]] for r in rows]
    assert max(r["init_index"] for r in rows if r["class_index"] == 9) == 5
    out = files(tmp_path / "out")
    assert all(out[k] != v for k, v in files(reference).items() if k.endswith(".png"))


# --- shards ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_slurm_array_tasks_make_the_same_images_as_one_shard(tmp_path, tiny_card, data_root, tiny_model,
                                                                 reference, slurm_cluster, capsys):
    launch = f"{{cluster: slurm, profile: local, array_size: 2, slurm: {{partition: {slurm_cluster.partition}}}}}"
    job = write_job(tmp_path, tiny_card, data_root, tiny_model, launch)
    rc, out, err = run_tool(capsys, job)
    assert rc == 0, err
    ids = json.loads((tmp_path / "out" / ".submitit" / "jobs.json").read_text())["job_ids"]
    assert [i.split("_")[1] for i in ids] == ["0", "1"] and len({i.split("_")[0] for i in ids}) == 1  # one array
    assert "shard 0/2 (task 0 rank 0/1" in out and "shard 1/2 (task 1 rank 0/1" in out
    assert files(tmp_path / "out") == files(reference)
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    rc, out, _ = run_tool(capsys, job)  # everything is there: nothing is submitted again
    assert rc == 0 and "submitted" not in out and json.loads(
        (tmp_path / "out" / ".submitit" / "jobs.json").read_text())["job_ids"] == ids


@pytest.mark.slow
def test_two_gloo_ranks_make_the_same_images_as_one_shard(tmp_path, tiny_card, data_root, tiny_model, reference,
                                                          capsys):
    job = write_job(tmp_path, tiny_card, data_root, tiny_model, "{cluster: local, ranks: 2}")
    rc, out, err = run_tool(capsys, job)
    assert rc == 0, err
    assert "shard 0/2 (task 0 rank 0/2, gloo)" in out and "shard 1/2 (task 0 rank 1/2, gloo)" in out
    assert files(tmp_path / "out") == files(reference)
    assert read_info(tmp_path / "out") == read_info(reference)


@pytest.mark.slow
def test_a_killed_generation_resumes_without_duplicates_or_gaps(tmp_path, tiny_card, data_root, tiny_model,
                                                                reference, capsys):
    job = write_job(tmp_path, tiny_card, data_root, tiny_model)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(TOOL), str(job)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("images/*/*.png"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*.png")}
    assert 2 <= len(before) < 13 and not (out / "generated.json").exists()  # killed mid-run
    rc, printed, err = run_tool(capsys, job)
    assert rc == 0, err
    generated = sum(int(line.split(": ")[1].split()[0]) for line in printed.splitlines() if line.startswith("shard "))
    assert generated == 13 - len(before)  # each missing image once, the others left alone
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing written twice
    assert files(out) == files(reference) and not list(out.rglob("*.tmp"))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((r["class_index"], r["index"]) for r in rows) == [(c, i) for c, n in ((7, 2), (8, 5), (9, 6))
                                                                    for i in range(n)]


# --- generated images in a training set --------------------------------------------------------------

def test_generated_share_cap():
    assert generated_take([5, 5, 5, 5], [10, 6, 3, 0], 0.5) == [5, 5, 3, 0]  # s <= n: half the class
    assert generated_take([50, 50, 50], [10, 7, 6], 0.4) == [6, 4, 4]  # s <= 0.4 (n + s)
    assert generated_take([50, 2], [10, 7], 1.0) == [50, 2] and generated_take([3], [9], 0) == [0]
    with pytest.raises(ConfigError, match="'data.generated_max_share' must be in"):
        from_dict(RunConfig, {"data": {"generated": "x", "generated_max_share": 1.5}})
    with pytest.raises(ConfigError, match="'aug.params.synthetic.max_share' must be a number in"):
        from_dict(RunConfig, {"aug": {"name": "standard+synthetic",
                                      "params": {"synthetic": {"path": "x", "max_share": 1.5}}}})
    with pytest.raises(ConfigError, match="give the generator's output folder"):
        from_dict(RunConfig, {"aug": {"name": "standard+synthetic"}})


def test_the_synthetic_augmentation_key_of_older_grids_sets_data_generated():
    old = from_dict(RunConfig, {"aug": {"name": "standard+synthetic+cutout",
                                        "params": {"synthetic": {"path": "g", "max_share": 0.4},
                                                   "cutout": {"size": 8}}}})
    new = from_dict(RunConfig, {"aug": {"name": "standard+cutout", "params": {"cutout": {"size": 8}}},
                                "data": {"generated": "g", "generated_max_share": 0.4}})
    assert old == new and signature(old) == signature(new)
    assert (old.aug.name, old.data.generated) == ("standard+cutout", "g")


def test_mix_adds_the_capped_generated_images(reference, tiny_card, data_root, tmp_path):
    from harness.config import DataConfig
    from harness.data import load_card, prepare
    from harness.data.beton import Beton
    from harness.data.imbalance import long_tail

    card = load_card(tiny_card)
    train = Beton(prepare(card, data_root) / "train.beton")
    split = long_tail(train.labels, 10, "exp", 10)
    data = DataConfig(generated=str(reference), generated_max_share=0.4)
    mixed, indices, generated = mix_generated(data, card, train, split.indices, split.counts)
    assert generated.counts == [0] * 7 + [2, 4, 4] and len(indices) == len(split.indices) + 10
    x, y = mixed.read(indices)
    real_x, real_y = train.read(split.indices)
    assert torch.equal(x[:len(real_x)], real_x) and torch.equal(y[:len(real_y)], real_y)
    images, labels = load_generated(reference)
    chosen = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]  # class 7: both; 8: first 4 of 5; 9: first 4 of 6
    assert torch.equal(x[len(real_x):].permute(0, 2, 3, 1), torch.from_numpy(images[chosen]))
    assert y[len(real_y):].tolist() == labels[chosen].tolist()
    plain = mix_generated(DataConfig(), card, train, split.indices, split.counts)
    assert plain[0] is train and plain[2] is None
    with pytest.raises(ConfigError, match="has no generated.json; run tools/generate_tail.py"):
        mix_generated(DataConfig(generated=str(tmp_path)), card, train, split.indices, split.counts)


@pytest.mark.slow
def test_a_grid_with_generated_images_trains_on_them(tmp_path, tiny_card, data_root,
                                                                               reference):
    from harness.cli.sweep import main as main_sweep

    axes = (f"{{data.loader: [memory, ffcv], aug.name: [standard+synthetic], "
            f"aug.params: [{{synthetic: {{path: '{reference}', max_share: 0.4}}}}]}}")
    grid = write_grid(tmp_path, tiny_card, data_root, name="syn", epochs=1, grid=axes)
    assert main_sweep([str(grid), "--cluster", "debug", "--runs", str(tmp_path / "runs")]) == 0
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / "syn").glob("*/result.json"))]
    assert sorted(r["config"]["data"]["loader"] for r in results) == ["ffcv", "memory"]
    for r in results:
        assert r["generated_counts"] == [0] * 7 + [2, 4, 4]
        assert r["class_counts"] == REAL and r["train_images"] == sum(REAL) + 10
        assert r["epochs"] == 1 and r["history"][0]["loss"] > 0
