"""python tools/generate_tail.py JOB [--cluster slurm|local|debug] [--dry-run] [--model PATH] [--out DIR] [k=v ...]"""
from __future__ import annotations

import argparse
import sys

from harness.cli import fail
from harness.generate.job import describe, plan_job, read_job, run_job
from harness.generate.model import check_model
from harness.registry import ConfigError


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="tools/generate_tail.py",
                                description="Fill the tail classes of a long-tailed set with Stable Diffusion images.")
    p.add_argument("job", help="job file, e.g. jobs/generate.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. generate.steps=10 launch.array_size=4")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="launcher (default: the job file's)")
    p.add_argument("--model", help="diffusers model directory (or cached hub id); overrides generate.model")
    p.add_argument("--out", help="output folder (default: the job file's out_dir, else <data root>/generated/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the shards; generate nothing")
    args = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    options = {"launch.cluster": args.cluster, "generate.model": args.model, "out_dir": args.out}
    try:
        job = read_job(args.job, args.overrides, {k: v for k, v in options.items() if v is not None})
        if args.dry_run:
            print(describe(job, plan_job(job, dry_run=True)))
            print(f"model: {_model_status(job.gen.model)}")
            return 0
        check_model(job.gen.model)
        spec = plan_job(job)
        if not sum(spec.counts):
            print(f"job {job.name}: no class needs images (fill {job.gen.fill}); nothing to do")
            return 0
        summaries = run_job(job, spec)
    except ConfigError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    for s in sorted(summaries, key=lambda s: s["shard"]):
        print(f"shard {s['shard']}/{s['num_shards']} (task {s['task']} rank {s['rank']}/{s['world']}, "
              f"{s['backend']}): {s['generated']} generated, {s['skipped']} skipped, {s['images_per_s']:.2f} img/s")
    print(f"job {job.name}: {sum(spec.counts)} images ({sum(s['generated'] for s in summaries)} new) in "
          f"{spec.out_dir} (manifest.jsonl, synthetic.beton)")
    return 0


def _model_status(model: str) -> str:
    try:
        check_model(model)
    except ConfigError as e:
        return f"NOT USABLE: {e}"
    return f"{model} ok"
