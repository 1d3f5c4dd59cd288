"""Sweeps: a grid's cells, what to do with each (from its folder), and the backends that run them.

    plan       per cell: submit, resume or skip (and why); `start` hands the cells to a backend
    job        TrainJob: what every backend runs for one cell (checkpoint, requeue on SIGUSR2)
    local      debug (this process) and local (processes here) backends
    slurm      array jobs through submitit, one sbatch per resource shape
    scheduler  every SLURM command (sinfo, squeue, scancel, scontrol) and its errors
    profiles   cluster profiles, slurm/<name>.yaml, checked against the scheduler
    status     --status and --cancel
    preflight  data, generated images, first stages and the cluster, checked before submission
    snapshot   runs/.code/<hash>/: the code a submission's jobs import
    triage     --why SIG|JOB and --failed

This __init__ imports nothing, so `--status` and `--cancel` load no torch.
"""
