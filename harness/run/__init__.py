"""One cell's run, in this process: `harness.run.trainer.Trainer(cfg, run_dir).train()`.

    trainer      the Trainer: set-up, the step, the epoch, evaluation, the outer loop
    optim        the optimizer and the lr schedule
    wrap         DDP / DeepSpeed / SyncBatchNorm / compile around the model; bf16 and layout
    checkpoint   save and resume at any world size, DeepSpeed's shards gathered
    record       console lines, TensorBoard, progress.json, the result format
    tensorboard  scalars, figures, samples, HParams

(This package's __init__ imports nothing, so its modules import each other without a cycle.)
"""
