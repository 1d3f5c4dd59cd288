"""Kept for SLURM jobs queued before the code moved: their pickles name `harness.launch.TrainJob`,
and unpickling one imports this module. Nothing else should import it; use harness.sweep.job."""
from harness.sweep.job import TrainJob  # noqa: F401
