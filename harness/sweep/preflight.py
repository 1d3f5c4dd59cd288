"""Pre-flight: what the cells to run need outside their configs, checked before anything is
submitted or started (and by --dry-run), one line per problem.

    checks = check(grid, actions, "slurm", runs_root)
    checks.problems      # ["data/cifar10: dataset 'cifar10' is not prepared (no manifest.json); run ..."]
    checks.after         # second stage's run folder -> first-stage run folders started in this submission
    checks.after_jobs    # second stage's run folder -> job ids of first stages already queued or running
    checks.profile       # the checked cluster profile (slurm)

- Data: every dataset the cells to run train on is prepared under its data.root and matches its
  manifest and card (harness.data.conversion.verify), with a val split where data.val is 'val'.
  The generated `synthetic` dataset is generated here when it is missing (a dry run only checks
  that its folder can be written), so array tasks never race to make it.
- Generated tail images: a cell's data.generated folder holds a packed generator output made for
  that dataset (generated.json, generated.beton).
- Second stages: the first stage is finished, or is a cell of this grid that runs in this
  submission (then it runs first: see `after`), or is already queued or running (`after_jobs`).
  A first stage that failed, or that is neither finished nor in the grid, is a problem.
- SLURM: the profile's partition exists, has the GPUs asked for and a MaxTime at or above
  time_min (harness.sweep.profiles.check_cluster).

Ordering of second stages: local and debug runs start a second stage once its first stage has
finished (in the same sweep); on SLURM the second stages go out as their own arrays with
`--dependency=afterok:<first-stage tasks>` and `--kill-on-invalid-dep=yes`: they start when
every first stage of their array has finished, and if one fails SLURM removes them from the
queue; re-running the sweep then says which first stage failed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.cards import load_card
from harness.data.conversion import data_dir, prepare, read_manifest, verify
from harness.data.generated import BETON, check_generated
from harness.registry import ConfigError
from harness.rundir import RunDir
from harness.stages import first_stage_dir
from harness.stages.decoupled import check_same_run


@dataclass
class Checks:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    after: dict[Path, list[Path]] = field(default_factory=dict)
    after_jobs: dict[Path, list[str]] = field(default_factory=dict)
    profile: object = None

    def raise_problems(self) -> None:
        if self.problems:
            raise PreflightError(self.problems)


class PreflightError(ConfigError):
    """Everything that stops a sweep before it submits anything, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def check(grid, actions, cluster: str, runs_root: str | Path = "runs", dry_run: bool = False) -> Checks:
    """Check what the cells to run need; a dry run changes nothing on disk."""
    checks = Checks()
    todo = [a for a in actions if a.todo != "skip"]
    if not todo:
        return checks
    for dataset, root in dict.fromkeys((a.cell.config.data.dataset, a.cell.config.data.root) for a in todo):
        checks.problems += check_dataset(dataset, root, dry_run, checks.notes,
                                         val=any(a.cell.config.data.val == "val" for a in todo))
    for generated, dataset in dict.fromkeys((a.cell.config.data.generated, a.cell.config.data.dataset) for a in todo):
        if generated:
            checks.problems += check_generated_folder(generated, dataset)
    check_first_stages(actions, checks)
    if cluster == "slurm":
        from harness.sweep import slurm
        try:
            checks.profile = slurm.ready_profile(grid)
        except ConfigError as e:
            checks.problems.append(str(e))
    return checks


def check_dataset(dataset: str, root: str, dry_run: bool, notes: list[str], val: bool) -> list[str]:
    """[] when the dataset is prepared under root and is what its manifest says (or, generated,
    can be made there); else one line."""
    card = load_card(dataset)
    folder = data_dir(card, root)
    try:
        if card.source.get("kind") == "synthetic" and read_manifest(folder) is None:
            if dry_run:
                if not writable(Path(root)):
                    return [f"{root}: cannot write here to generate dataset '{card.name}'; set data.root "
                            f"to a folder you can write"]
                notes.append(f"dataset '{card.name}' is not generated yet under {root}; the sweep makes it first")
                return []
            prepare(card, root)  # makes it, under its lock
        manifest = verify(card, root)
    except ConfigError as e:
        return [str(e)]
    if val and "val.beton" not in manifest.get("files", {}):
        return [f"{folder}: dataset '{card.name}' has no val split (its source has no val/), but data.val is "
                f"'val'; set data.val to split or test"]
    return []


def writable(folder: Path) -> bool:
    """Whether `folder`, or the nearest folder above it that exists, can be written."""
    folder = folder.resolve()
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK)


def check_generated_folder(generated: str, dataset: str) -> list[str]:
    """[] when data.generated is a packed generator output made for this dataset; else one line."""
    try:
        info = check_generated(generated, load_card(dataset))
    except ConfigError as e:
        return [str(e)]
    except (OSError, ValueError, KeyError) as e:
        return [f"data.generated: {generated}/generated.json is unreadable ({type(e).__name__}); run "
                f"tools/generate_tail.py for it again"]
    if info.get("images") and not (Path(generated) / BETON).is_file():
        return [f"data.generated: {generated} has no {BETON}; run tools/generate_tail.py for it until it packs"]
    return []


def check_first_stages(actions, checks: Checks) -> None:
    """Where each second stage to run finds its first stage; fills checks.after, after_jobs, problems."""
    by_path = {Path(a.run_dir).resolve(): a for a in actions}
    missing: dict[str, list[str]] = {}  # one problem -> the second stages it stops
    for a in actions:
        cfg = a.cell.config
        if a.todo == "skip" or cfg.stage.kind == "train":
            continue
        first = first_stage_dir(cfg, a.run_dir)
        mine = by_path.get(first.path.resolve())
        if mine is not None and mine.todo != "skip":
            checks.after.setdefault(a.run_dir, []).append(mine.run_dir)
        elif mine is not None and mine.why.startswith("queued or running"):
            checks.after_jobs.setdefault(a.run_dir, []).append(str(mine.state.get("job_id")))
        else:
            problem = first_stage_problem(cfg, first, mine)
            if problem:
                missing.setdefault(problem, []).append(a.cell.signature)
    for problem, seconds in missing.items():
        checks.problems.append(f"{problem} (needed by {len(seconds)} second stage(s): {', '.join(seconds[:3])}"
                               f"{', ...' if len(seconds) > 3 else ''})")


def first_stage_problem(cfg, first: RunDir, action=None) -> str | None:
    """None when `first`, which this submission does not run, is a finished first stage this cell
    can start from; else one line. `action`: its plan when it is a cell of this grid."""
    state = action.state if action is not None else first.read_state()
    if action is not None and state["state"] == "failed":
        return (f"first-stage run {first.path} failed ({state.get('error') or 'no error recorded'}); "
                f"fix it and run with --retry-failed")
    if action is not None and state["state"] != "finished":
        return f"first-stage run {first.path} is {state['state']} and not run now ({action.why})"
    if not first.has_config():
        return (f"first-stage run {first.path} not found; train it first (the same config with stage.kind "
                f"train, e.g. in this grid) or set stage.from_run to its folder")
    if state["state"] != "finished":
        return f"first-stage run {first.path} is {state['state']}, not finished; run this sweep again once it has"
    try:
        check_same_run(cfg, first.read_config(), first.path)
    except ConfigError as e:
        return str(e)
    if not first.has_checkpoint():
        return f"first-stage run {first.path} has no {first.CHECKPOINT}; train it again"
    if cfg.stage.from_epoch == "best" and not first.best_checkpoint.is_file():
        return (f"first-stage run {first.path} has no {first.BEST_CHECKPOINT} (stage.from_epoch best); train it "
                f"again or set stage.from_epoch last")
    return None
