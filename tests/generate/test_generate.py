"""The tail generator on a real tiny random-weight Stable Diffusion pipeline, built offline."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.generate import (
    GenerateConfig,
    Item,
    Plan,
    build_tiny_pipeline,
    check_model,
    collect_manifest,
    generate_shard,
    item_seed,
    load_generated,
    load_pipeline,
    plan_counts,
    shard,
    write_manifest,
    write_plan,
)
from harness.generate.model import as_img2img
from harness.generate.run import generate_batch, image_path, row_path
from harness.registry import ConfigError
from support.learning import one_thread

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CLASSES = ["dog", "cat", "ship"]
COUNTS = [4, 3, 0]  # 7 images; with batch_size 2: batches c0[0,1] c0[2,3] c1[0,1] c1[2]


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    with one_thread():
        build_tiny_pipeline(path, seed=0)
    return str(path)


@pytest.fixture(scope="session")
def pipe(tiny_model):
    return load_pipeline(tiny_model, "cpu", "auto")


def small_cfg(model: str, **kw) -> GenerateConfig:
    base = dict(model=model, height=32, width=32, out_size=16, steps=2, batch_size=2, seed=1234)
    base.update(kw)
    cfg = GenerateConfig(**base)
    cfg.validate()
    return cfg


def files(out_dir: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every image and row (plan.json aside)."""
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted((out_dir / "images").rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def reference(tiny_model, pipe, tmp_path_factory) -> Path:
    """The plan generated in one shard, one go."""
    out = tmp_path_factory.mktemp("reference")
    cfg = small_cfg(tiny_model)
    with one_thread():
        summary = generate_shard(cfg, Plan(cfg, CLASSES, COUNTS), out, 0, 1, pipe)
    assert summary["generated"] == 7 and summary["skipped"] == 0
    return out


class CallCounter:
    """Counts pipeline calls (and images asked for) by wrapping the pipeline class's __call__."""

    def __init__(self, monkeypatch, pipe, fail_after: int | None = None):
        self.calls, self.images = 0, 0
        original = type(pipe).__call__

        def counted(this, *args, **kwargs):
            if fail_after is not None and self.calls >= fail_after:
                raise KeyboardInterrupt("simulated crash")
            self.calls += 1
            self.images += len(kwargs["prompt"])
            return original(this, *args, **kwargs)

        monkeypatch.setattr(type(pipe), "__call__", counted)


# --- model -------------------------------------------------------------------------------------

def test_tiny_model_loads_and_generates(tiny_model, pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline) and pipe.safety_checker is None
    tokens = pipe.tokenizer("a photo of a dog").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(tokens)[1:-1] == ["a</w>", "photo</w>", "of</w>", "a</w>", "dog</w>"]
    assert pipe.tokenizer.model_max_length == 77
    cfg = small_cfg(tiny_model)
    plan = Plan(cfg, CLASSES, COUNTS)
    batch = plan.batches()[0]
    first, _ = generate_batch(pipe, cfg, plan, batch)
    again, _ = generate_batch(pipe, cfg, plan, batch)
    assert [im.size for im in first] == [(32, 32), (32, 32)]
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]
    assert first[0].tobytes() != first[1].tobytes()  # different seeds, different images
    assert np.asarray(first[0]).std() > 1  # not a blank image


def test_check_model(tiny_model, tmp_path):
    check_model(tiny_model)
    cases = {}
    cases["missing"] = tmp_path / "nope"
    cases["no_index"] = tmp_path / "no_index"
    shutil.copytree(tiny_model, cases["no_index"])
    (cases["no_index"] / "model_index.json").unlink()
    cases["no_unet"] = tmp_path / "no_unet"
    shutil.copytree(tiny_model, cases["no_unet"])
    shutil.rmtree(cases["no_unet"] / "unet")
    cases["bad_config"] = tmp_path / "bad_config"
    shutil.copytree(tiny_model, cases["bad_config"])
    (cases["bad_config"] / "vae" / "config.json").write_text("{not json")
    expected = {"missing": "no such directory", "no_index": "no model_index.json",
                "no_unet": "no unet/ folder", "bad_config": "cannot read"}
    for name, path in cases.items():
        with pytest.raises(ConfigError) as err:
            check_model(str(path))
        message = str(err.value)
        assert expected[name] in message and "\n" not in message, (name, message)


# --- plan ----------------------------------------------------------------------------------------

def test_plan_counts_cifar10_if100():
    assert sum(CIFAR10_IF100) == 12406
    to_max = plan_counts(CIFAR10_IF100, 5000, "to_max")
    assert to_max == [0, 2003, 3204, 3923, 4355, 4613, 4768, 4861, 4917, 4950]
    assert sum(to_max) == 50000 - 12406 == 37594
    assert plan_counts(CIFAR10_IF100, 5000, "to_count", count=1000) == [0, 0, 0, 0, 355, 613, 768, 861, 917, 950]
    half = plan_counts(CIFAR10_IF100, 5000, "ratio", ratio=0.5)
    assert half == [0, 1002, 1602, 1962, 2178, 2307, 2384, 2431, 2459, 2475]  # rounded half up
    assert plan_counts(CIFAR10_IF100, 5000, "ratio", ratio=1.0) == to_max
    cfg = GenerateConfig(model="m")
    assert len(Plan.from_train_counts(cfg, [str(c) for c in range(10)], CIFAR10_IF100)) == 37594


def test_seeds_and_shards():
    cfg = GenerateConfig(model="m", seed=7, batch_size=3)
    plan = Plan(cfg, ["a", "b", "c"], [10, 0, 7])
    assert plan.items[:2] == [Item(0, 0), Item(0, 1)] and plan.items[-1] == Item(2, 6)
    seeds = [plan.seed_for(it) for it in plan.items]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert item_seed(0, 3, 12) == 6203142084398896362  # pinned: a change would alter every image
    assert Plan(GenerateConfig(model="m", seed=8), ["a", "b", "c"], [10, 0, 7]).seed_for(Item(0, 0)) != seeds[0]
    for n in range(1, 6):
        parts = [shard(plan.batches(), k, n) for k in range(n)]
        items = [it for part in parts for batch in part for it in batch]
        assert sorted(items) == plan.items and len(set(items)) == len(items)
        for part in parts:  # a batch, and so each item's seed and batch-mates, never depends on n
            for batch in part:
                assert batch in plan.batches()
    with pytest.raises(ValueError):
        shard(plan.items, 2, 2)


def test_prompts_file_and_config_errors(tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("dog: ['a dog on grass', 'a {name} at night']\ncat: a sleeping cat\n")
    cfg = GenerateConfig(model="m", prompts_file=str(prompts))
    plan = Plan(cfg, ["dog", "cat"], [3, 2])
    assert [plan.prompt_for(Item(0, i)) for i in range(3)] == ["a dog on grass", "a dog at night", "a dog on grass"]
    assert plan.prompt_for(Item(1, 1)) == "a sleeping cat"
    with pytest.raises(ConfigError, match="no prompts for class"):
        Plan(cfg, ["dog", "bird"], [1, 1])
    with pytest.raises(ConfigError, match="unknown key"):
        GenerateConfig.from_dict({"model": "m", "stepz": 3})
    with pytest.raises(ConfigError, match="generate.fill"):
        GenerateConfig.from_dict({"model": "m", "fill": "max"})
    with pytest.raises(ConfigError, match="generate.steps"):
        GenerateConfig.from_dict({"model": "m", "steps": "25"})


# --- generation ------------------------------------------------------------------------------------

def test_one_shard_equals_two_shards(tiny_model, pipe, reference, tmp_path):
    cfg = small_cfg(tiny_model)
    plan = Plan(cfg, CLASSES, COUNTS)
    for k in range(2):
        generate_shard(cfg, plan, tmp_path, k, 2, pipe)
    assert files(tmp_path) == files(reference)
    assert len(files(reference)) == 2 * 7


def test_interrupted_generation_resumes(tiny_model, pipe, reference, tmp_path, monkeypatch):
    cfg = small_cfg(tiny_model)
    plan = Plan(cfg, CLASSES, COUNTS)
    crashing = CallCounter(monkeypatch, pipe, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_shard(cfg, plan, tmp_path, 0, 1, pipe)
    assert crashing.calls == 2 and len(collect_manifest(tmp_path)) == 4
    # A crash between a row and its image, and a lost image: both count as not done.
    image_path(tmp_path, Item(0, 3)).unlink()
    (tmp_path / "images" / "000" / ".000002.png.999.tmp").write_bytes(b"half-written")
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*")
            if p.suffix in (".png", ".json") and p != row_path(tmp_path, Item(0, 3))}
    monkeypatch.undo()
    counter = CallCounter(monkeypatch, pipe)
    summary = generate_shard(cfg, plan, tmp_path, 0, 1, pipe)
    assert summary["generated"] == 4 and summary["skipped"] == 3
    assert counter.calls == 3  # the batch with a lost image, and the two never started
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # nothing rewritten
    (tmp_path / "images" / "000" / ".000002.png.999.tmp").unlink()
    assert files(tmp_path) == files(reference)
    again = generate_shard(cfg, plan, tmp_path, 0, 1, pipe)
    assert again["generated"] == 0 and counter.calls == 3


def test_batch_size_does_not_change_images(tiny_model, pipe, reference, tmp_path):
    """Seeds are per image, so batch size changes no noise; the float math differs by ~1e-6,
    which can move a rare pixel by one level. Same batch size: identical bytes."""
    cfg1, cfg3 = small_cfg(tiny_model, batch_size=1), small_cfg(tiny_model, batch_size=3)
    generate_shard(cfg1, Plan(cfg1, CLASSES, COUNTS), tmp_path / "bs1", 0, 1, pipe)
    generate_shard(cfg3, Plan(cfg3, CLASSES, COUNTS), tmp_path / "bs3", 0, 1, pipe)
    images = {}
    for name in ("bs1", "bs3"):
        images[name], labels = load_generated(tmp_path / name)
        assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    diff = np.abs(images["bs1"].astype(int) - images["bs3"].astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.99
    rows1, rows3 = collect_manifest(tmp_path / "bs1"), collect_manifest(tmp_path / "bs3")
    assert rows1 == rows3  # same prompts, seeds, everything
    generate_shard(cfg3, Plan(cfg3, CLASSES, COUNTS), tmp_path / "bs3-again", 0, 1, pipe)
    assert files(tmp_path / "bs3-again") == files(tmp_path / "bs3")


def test_manifest_and_pack(tiny_model, reference):
    rows = collect_manifest(reference)
    assert [(r["class_index"], r["index"]) for r in rows] == Plan(small_cfg(tiny_model), CLASSES, COUNTS).items
    assert rows[0]["prompt"] == "a photo of a dog" and rows[-1]["class_name"] == "cat"
    assert rows[0]["seed"] == item_seed(1234, 0, 0) and rows[0]["steps"] == 2 and rows[0]["mode"] == "txt2img"
    lines = write_manifest(reference).read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    images, labels = load_generated(reference)
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_incomplete_or_mismatched_output(tiny_model, pipe, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    image_path(out, Item(1, 2)).unlink()
    with pytest.raises(ConfigError, match="1 of 7 planned images are missing"):
        load_generated(out)
    assert len(load_generated(out, require_complete=False)[1]) == 6
    other = small_cfg(tiny_model, steps=3)
    with pytest.raises(ConfigError, match="other steps"):
        generate_shard(other, Plan(other, CLASSES, COUNTS), out, 0, 1, pipe)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("dog: [a dog]\ncat: [a cat]\nship: [a ship]\n")
    cfg = small_cfg(tiny_model, prompts_file=str(prompts))
    write_plan(tmp_path / "p", Plan(cfg, CLASSES, COUNTS))
    write_plan(tmp_path / "p", Plan(cfg, CLASSES, [9, 9, 9]))  # other counts: fine
    prompts.write_text("dog: [a dog]\ncat: [a kitten]\nship: [a ship]\n")
    with pytest.raises(ConfigError, match="other prompts"):
        write_plan(tmp_path / "p", Plan(cfg, CLASSES, COUNTS))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
def test_img2img(tiny_model, pipe, tmp_path):
    cfg = small_cfg(tiny_model, mode="img2img", strength=0.5, scheduler="dpm++")
    plan = Plan(cfg, CLASSES, COUNTS)
    rng = np.random.default_rng(0)
    real = {0: [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)],
            1: [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)]}
    for name in ("a", "b"):
        generate_shard(cfg, plan, tmp_path / name, 0, 1, pipe, init_images=real)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    rows = collect_manifest(tmp_path / "a")
    assert [r["init_index"] for r in rows] == [0, 1, 2, 0, 0, 0, 0]
    assert rows[0]["mode"] == "img2img" and rows[0]["scheduler"] == "dpm++"
    assert load_generated(tmp_path / "a")[0].shape == (7, 16, 16, 3)
    with pytest.raises(ConfigError, match="no real images given for class"):
        generate_shard(cfg, plan, tmp_path / "c", 0, 1, pipe, init_images={0: real[0]})


def test_pipeline_kind_follows_mode(tiny_model, pipe, reference, tmp_path):
    """An img2img pipeline given a txt2img job is switched back; same modules, same images."""
    cfg = small_cfg(tiny_model)
    generate_shard(cfg, Plan(cfg, CLASSES, COUNTS), tmp_path, 0, 1, as_img2img(pipe))
    assert files(tmp_path) == files(reference)
