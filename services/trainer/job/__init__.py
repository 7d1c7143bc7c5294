"""The training job: one process per model version (`python -m
textft_services.trainer.job`, or `textft-train-job`).

Self-contained on purpose: a typed spec in (textft.internal.v1.TrainingJobSpec,
read from the store key it is given; credentials from the environment), typed
events out (JobEvent lines on stdout, ../events.py), so any launcher (a local
child process, a Ray task) runs the same job. Exit code 0 means READY; a
failure is reported as an event before exiting 3.

    main.py        the command line, the spec, exit codes and failures
    retry.py       every store operation, retried while the store is away
    inputs.py      configs, base model and tokenizer, the rows and their split
    model.py       the base model with its LoRA adapter
    training.py    transformers' Trainer, its callbacks (progress, checkpoints), resume
    publish.py     the adapter, its manifest and card, and metrics, to the store
    evaluation.py  evaluating a finished version on another dataset version (--evaluate)
    run.py         one training job, start to end

Checkpoints: whenever the Trainer saves (trainer_config.save_strategy), the
checkpoint is uploaded to the store (../checkpoints.py); a job that finds
complete checkpoints of its version in the store resumes from the newest one,
so a re-run after a crash or a trainer restart continues where it left off.

Under torchrun (several processes, DDP) every rank trains; only rank 0 emits
events, evaluates and uploads.
"""
