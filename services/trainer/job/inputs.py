"""What a training job starts from: its resolved configs, the base model and
tokenizer (from the store's base-model cache), and the dataset version's rows
(memory-mapped, through its rows manifest) split into train and eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textft.errors import FailedPrecondition
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2

from ...common import basemodels
from ...common import rows as stored_rows
from ...common.config import Settings
from ...common.store import ObjectStore
from ...modeling import data
from ...modeling.collate import PROMPT_TEMPLATE
from ...modeling.data import JobFailure
from ...modeling.loading import load_tokenizer, struct_dict
from .. import configs
from ..events import Emitter
from .retry import StoreRetry


def spec_configs(spec: job_pb2.TrainingJobSpec) -> dict[str, dict[str, Any]]:
    """The spec's four configs as typed dicts (Struct numbers are floats until validated)."""
    sections = ("model_config", "peft_config", "tokenizer_config", "trainer_config")
    return configs.validate({section: struct_dict(getattr(spec, section)) for section in sections})


def read_rows(store: ObjectStore, rows_manifest_object: str, settings: Settings) -> Any:
    """A dataset version's rows (memory-mapped, through its rows manifest)."""
    try:
        manifest = stored_rows.load_manifest(store, rows_manifest_object)
        return data.open_rows(store, manifest, settings.rows_cache)
    except FailedPrecondition as e:
        raise JobFailure("DATASET_VERSION_UNREADABLE", e.message, field="dataset_version") from None


@dataclass
class Inputs:
    classification: bool
    configs: dict[str, dict[str, Any]]  # as validated; the base model's name taken out of model_config
    base_name: str
    base_path: str
    tokenizer: Any
    max_length: int
    rows: Any  # datasets.Dataset of the dataset version
    prepared: data.Prepared

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.configs["model_config"]

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        return self.configs["trainer_config"]

    @property
    def peft_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.configs["peft_config"].items() if k != "peft_type"}


def prepare_inputs(
    spec: job_pb2.TrainingJobSpec, store: ObjectStore, settings: Settings, emitter: Emitter, retry: StoreRetry
) -> Inputs:
    """Everything training needs before the model is built; reports the data summary."""
    resolved = spec_configs(spec)
    model_kwargs = dict(resolved["model_config"])
    tokenizer_kwargs = dict(resolved["tokenizer_config"])
    trainer_kwargs = dict(resolved["trainer_config"])
    classification = spec.task == common_pb2.TASK_TEXT_CLASSIFICATION

    base_name = model_kwargs.pop("pretrained_model_name_or_path")
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tok_name = tokenizer_kwargs.pop("pretrained_model_name_or_path", base_name)
    tok_path = retry(
        "reading the tokenizer",
        lambda: basemodels.resolve(
            tok_name, store, settings.base_model_cache, "tokenizer_config.pretrained_model_name_or_path"
        ),
    )
    tokenizer, max_length = load_tokenizer(tokenizer_kwargs, tok_path)

    rows = retry("reading the dataset rows", lambda: read_rows(store, spec.rows_manifest_object, settings))
    prepared = data.prepare(
        rows,
        classification,
        list(spec.label_names),
        lambda text: len(tokenizer(PROMPT_TEMPLATE.format(text=text))["input_ids"]),
        max_length,
        spec.dataset_row_count,
        spec.dataset_invalid_row_count,
        [{"row": i.row, "code": i.code, "message": i.message} for i in spec.dataset_issues],
        spec.invalid_data_tolerance_percent,
        int(trainer_kwargs.get("seed", 42)),
    )
    emitter.log(
        f"{len(prepared.train)} train rows, {len(prepared.eval)} eval rows ({prepared.split_source}), {prepared.skipped} invalid rows skipped"
    )
    summary = job_pb2.DataSummary(
        train_rows=len(prepared.train), eval_rows=len(prepared.eval), skipped_rows=prepared.skipped
    )
    emitter.emit(job_pb2.JobEvent(data=summary))
    return Inputs(
        classification=classification,
        configs={**resolved, "model_config": model_kwargs, "trainer_config": trainer_kwargs},
        base_name=base_name,
        base_path=base_path,
        tokenizer=tokenizer,
        max_length=max_length,
        rows=rows,
        prepared=prepared,
    )
