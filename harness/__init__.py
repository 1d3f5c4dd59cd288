"""lt-harness: long-tailed image classification studies, from one grid file to a paper table.

The flow, one layer per package (each imports only from the layers above it in this list):

    registry, files, console, metrics, topology, dist   the base: errors, atomic files, progress, ranks
    config          the config tree of a run (schema) and how it is read and hashed (codec)
    rundir          a run folder and every file in it
    data, models, losses, stages                         the registered parts
    grid            grid files -> cells, each validated
    run             one cell in this process: the Trainer and its collaborators
    sweep           a grid's cells on a backend: debug, local processes, SLURM arrays
    report          paper tables from finished runs
    generate        tail images from Stable Diffusion, sharded on the sweep backends
    cli             every command line (tools/*.py call these)

`import harness` loads none of them; the names below load their module on first use.
"""
import importlib
import os

# Idle OpenMP threads sleep instead of spinning: with FFCV's workers on a few cores, spinning
# makes epochs 10-30x slower at random. It only works when set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_PUBLIC = {
    "ConfigError": "harness.registry", "Registry": "harness.registry",
    "RunConfig": "harness.config", "from_dict": "harness.config", "signature": "harness.config",
    "Cell": "harness.grid", "Grid": "harness.grid", "load_grid": "harness.grid",
    "RunDir": "harness.rundir", "Trainer": "harness.run.trainer", "report": "harness.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'harness' has no attribute '{name}'")
