"""Evaluating a finished version's stored adapter on every usable row of
another dataset version (EvaluateModelVersion), with the training job's
metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, trainer_pb2

from ...common import basemodels
from ...common.config import Settings
from ...common.store import ObjectStore
from ...modeling import data
from ...modeling.collate import PROMPT_TEMPLATE, make_collator
from ...modeling.data import JobFailure
from ...modeling.loading import load_base_model, load_tokenizer, read_adapter_manifest, struct_dict
from ...modeling.metrics import evaluate
from .. import configs
from ..events import Emitter
from .inputs import read_rows, spec_configs
from .retry import StoreRetry


def to_evaluation(evaluation: dict[str, Any]) -> trainer_pb2.Evaluation:
    return json_format.ParseDict(evaluation, trainer_pb2.Evaluation(), ignore_unknown_fields=True)


def evaluate_version(
    spec: job_pb2.TrainingJobSpec,
    store: ObjectStore,
    settings: Settings,
    workdir: Path,
    emitter: Emitter,
    max_generations: int = 200,
) -> trainer_pb2.Evaluation:
    from peft import PeftModel

    classification = spec.task == common_pb2.TASK_TEXT_CLASSIFICATION
    retry = StoreRetry(settings.store_retry_seconds, Emitter(enabled=False))
    adapter_dir = workdir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    retry("downloading the adapter", lambda: store.download_dir(f"{spec.output_prefix}/adapter", adapter_dir))
    meta = read_adapter_manifest(adapter_dir)
    labels, multi = list(meta.label_names), meta.multi_label
    model_config = configs.validate({"model_config": struct_dict(meta.model_config)})["model_config"]
    model_kwargs = {k: v for k, v in model_config.items() if k != "pretrained_model_name_or_path"}
    base_name = model_config["pretrained_model_name_or_path"]
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tokenizer, max_length = load_tokenizer({}, str(adapter_dir))
    max_length = min(max_length, meta.max_length or max_length)
    prompt_template = meta.prompt_template or PROMPT_TEMPLATE
    dataset_version = spec.evaluation.dataset_version
    manifest_key = spec.evaluation.rows_manifest_object
    rows = retry("reading the dataset rows", lambda: read_rows(store, manifest_key, settings))
    # A label the model was not trained on cannot be scored.
    usable_rows, skipped, first_skipped = data.usable_for_evaluation(rows, classification, labels)
    if not len(usable_rows):
        known = f" (the model knows labels {labels})" if classification else ""
        raise JobFailure(
            "EVALUATION_NO_USABLE_ROWS",
            f"{dataset_version} has no rows this model can be evaluated on{known}",
            field="dataset_version",
            rows=first_skipped,
        )
    usable = rows.select(usable_rows)
    model = load_base_model(classification, base_path, model_kwargs, tokenizer, labels, multi)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    collator = make_collator(classification, tokenizer, max_length, labels, multi)
    batch = int(spec_configs(spec)["trainer_config"].get("per_device_eval_batch_size", 16))
    evaluation = evaluate(
        classification,
        model,
        tokenizer,
        usable,
        collator,
        labels,
        multi,
        batch,
        max_generations,
        prompt_template,
        _evaluation_progress(emitter),
    )
    evaluation["dataset_version"] = dataset_version
    evaluation["skipped_row_count"] = skipped
    return to_evaluation(evaluation)


def _evaluation_progress(emitter: Emitter, every: float = 1.0) -> Callable[[int, int], None]:
    """on_rows for an evaluation: a progress event at most every `every` seconds, and at the end."""
    started, last = time.monotonic(), 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every and done < total:
            return
        last = now
        progress = common_pb2.Progress(step=done, total_steps=total, percent_completed=100.0 * done / max(total, 1))
        if done:
            progress.time_remaining.FromMilliseconds(int((now - started) / done * (total - done) * 1000))
        emitter.emit(job_pb2.JobEvent(progress=job_pb2.JobProgress(progress=progress)))

    return report
