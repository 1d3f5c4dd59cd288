"""Tail generator throughput on the CPU: images/s per shard for 1 shard vs 2 shards in 2 processes.

    python bench/generate.py [--images 32] [--steps 10] [--size 32] [--rounds 2]

The tiny random-weight Stable Diffusion pipeline (harness.generate.tiny), one torch thread
per process. Each round runs the two contenders one after the other: 1 process generating
the whole plan, then 2 processes generating shards 0/2 and 1/2 at once (they load the
pipeline, warm up, then start together at a barrier). Per-shard rate = its images over
its generation time; aggregate = all images over the slower shard's time. The two runs
must give byte-identical images. Writes bench/results/generate.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def config(model: str, args):
    from harness.generate import GenerateConfig

    return GenerateConfig(model=model, height=args.size, width=args.size, out_size=args.size, steps=args.steps,
                          batch_size=4, seed=0)


def plan(cfg, images: int):
    from harness.generate import Plan

    return Plan(cfg, ["disc", "ring"], [images // 2, images - images // 2])


def shard_worker(model: str, args, out: str, shard: int, shards: int, barrier, results) -> None:
    """Load, warm up on one batch, wait for the other shards, generate this shard; report its summary."""
    import torch

    from harness.generate import generate_shard, load_pipeline

    torch.set_num_threads(1)
    cfg = config(model, args)
    pipe = load_pipeline(model, "cpu", "fp32")
    generate_shard(cfg, plan(cfg, cfg.batch_size), Path(out) / f"warmup{shard}", 0, 1, pipe, log_every=1e9)
    barrier.wait()
    results.put(generate_shard(cfg, plan(cfg, args.images), out, shard, shards, pipe, log_every=1e9))


def run(model: str, args, out: Path, shards: int) -> list[dict]:
    """`shards` processes at once, each one shard of the plan; their summaries by shard."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(shards), ctx.Queue()
    procs = [ctx.Process(target=shard_worker, args=(model, args, str(out), k, shards, barrier, results))
             for k in range(shards)]
    for p in procs:
        p.start()
    summaries = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a shard process failed (exit {p.exitcode})")
    return sorted(summaries, key=lambda s: s["shard"])


def images_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="images in the plan")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    p.add_argument("--size", type=int, default=32, help="generation size in pixels")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (1 shard, 2 shards)")
    args = p.parse_args()
    from harness.generate import build_tiny_pipeline

    one, two, identical = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "tiny-sd")
        build_tiny_pipeline(model, seed=0)
        for r in range(args.rounds):
            a, b = Path(tmp) / f"one{r}", Path(tmp) / f"two{r}"
            s1 = run(model, args, a, 1)
            s2 = run(model, args, b, 2)
            identical &= images_of(a) == images_of(b)
            one.append(s1[0]["images_per_s"])
            two.append({"per_shard": [s["images_per_s"] for s in s2],
                        "aggregate": args.images / max(s["seconds"] for s in s2)})
            print(f"round {r + 1}: 1 shard {one[-1]:.2f} img/s | 2 shards "
                  f"{' + '.join(f'{x:.2f}' for x in two[-1]['per_shard'])} img/s per shard, "
                  f"{two[-1]['aggregate']:.2f} img/s together", flush=True)
    one_rate = statistics.median(one)
    per_shard = statistics.median(x for t in two for x in t["per_shard"])
    aggregate = statistics.median(t["aggregate"] for t in two)
    result = {
        "benchmark": "tail generator, tiny random-weight SD pipeline, CPU, 1 torch thread per process",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared and busy "
                   f"(other engineers' jobs ran alongside): absolute numbers are noisy, ratios less so",
        "settings": {"images": args.images, "steps": args.steps, "size": args.size, "batch_size": 4,
                     "rounds": args.rounds},
        "one_shard_images_per_s": round(one_rate, 3),
        "two_shards_images_per_s_per_shard": round(per_shard, 3),
        "two_shards_images_per_s_total": round(aggregate, 3),
        "per_shard_ratio_two_vs_one": round(per_shard / one_rate, 3),
        "speedup_two_vs_one": round(aggregate / one_rate, 3),
        "identical_images": identical,
        "rounds": [{"one_shard": o, "two_shards": t} for o, t in zip(one, two)],
        "gpu": "not measured: no GPU was lent to this task (the SD 1.5 512x512 H200 benchmark is still to do)",
    }
    out = ROOT / "bench" / "results" / "generate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"1 shard: {one_rate:.2f} img/s; 2 shards: {per_shard:.2f} img/s per shard "
          f"(x{per_shard / one_rate:.2f}), {aggregate:.2f} img/s together (speedup x{aggregate / one_rate:.2f}); "
          f"identical images: {identical} -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
