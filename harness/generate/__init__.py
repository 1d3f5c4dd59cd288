"""The tail generator: Stable Diffusion images for the rare classes of a long-tailed set.

plan (what to make) -> run (make one shard, resumable) -> pack (read it back, write .beton files);
job (the job file, its shards on a launcher: tools/generate_tail.py).
"""
from harness.generate.job import Job, read_job, run_job
from harness.generate.model import check_model, load_pipeline, load_pipeline_for, set_scheduler
from harness.generate.pack import load_generated, pack
from harness.generate.plan import GenerateConfig, Item, Plan, item_seed, plan_counts, shard
from harness.generate.run import collect_manifest, generate_shard, write_manifest, write_plan
from harness.generate.tiny import build_tiny_pipeline

__all__ = [
    "GenerateConfig", "Item", "Job", "Plan", "build_tiny_pipeline", "check_model", "collect_manifest",
    "generate_shard", "item_seed", "load_generated", "load_pipeline", "load_pipeline_for", "pack",
    "plan_counts", "read_job", "run_job", "set_scheduler", "shard", "write_manifest", "write_plan",
]
