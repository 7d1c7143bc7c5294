"""One training job, start to end: inputs, model, training, evaluation,
publishing (evaluation and publishing on rank 0 only)."""

from __future__ import annotations

from pathlib import Path

from textft.internal.v1 import job_pb2
from textft.v1 import trainer_pb2

from ...common.config import Settings
from ...common.store import ObjectStore
from ...modeling.collate import make_collator
from ...modeling.metrics import evaluate
from .. import checkpoints
from ..events import Emitter
from .evaluation import to_evaluation
from .inputs import prepare_inputs
from .model import build_model
from .publish import publish
from .retry import StoreRetry
from .training import train

MV = trainer_pb2.ModelVersion


def run_job(
    spec: job_pb2.TrainingJobSpec, store: ObjectStore, settings: Settings, workdir: Path, emitter: Emitter
) -> job_pb2.JobResult | None:
    """Trains, evaluates and uploads; returns the result on rank 0, None on other ranks."""
    retry = StoreRetry(settings.store_retry_seconds, emitter)
    emitter.state(MV.STATE_PREPARING_DATA)
    inputs = prepare_inputs(spec, store, settings, emitter, retry)
    prepared, classification = inputs.prepared, inputs.classification
    labels, multi = prepared.label_names, prepared.multi_label
    model = build_model(inputs, emitter)
    train_set, eval_set = inputs.rows.select(prepared.train), inputs.rows.select(prepared.eval)
    collator = make_collator(classification, inputs.tokenizer, inputs.max_length, labels, multi)

    args, result = train(
        model,
        train_set,
        eval_set,
        collator,
        inputs.trainer_kwargs,
        checkpoints.checkpoints_prefix(spec.output_prefix),
        store,
        settings,
        workdir,
        emitter,
        retry,
    )
    if settings.rank != 0:
        return None

    emitter.state(MV.STATE_EVALUATING)
    batch = args.per_device_eval_batch_size
    evaluation = evaluate(classification, model, inputs.tokenizer, eval_set, collator, labels, multi, batch)
    evaluation["metrics"]["train_loss"] = float(result.training_loss)
    evaluation["metrics"]["train_samples_per_second"] = float(result.metrics.get("train_samples_per_second", 0.0))
    evaluation["metrics"]["train_runtime_seconds"] = float(result.metrics.get("train_runtime", 0.0))
    emitter.emit(job_pb2.JobEvent(evaluation=to_evaluation(evaluation)))

    emitter.state(MV.STATE_UPLOADING)
    return publish(spec, inputs, model, evaluation, store, workdir, retry, settings.world_size)
