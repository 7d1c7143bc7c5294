"""What a finished job leaves in the store: the adapter exactly as
`save_pretrained` writes it, the tokenizer, textft.json (an AdapterManifest),
a model card, and metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, trainer_pb2

from ...common import basemodels
from ...common.store import ObjectStore
from ...modeling.collate import PROMPT_TEMPLATE
from ...modeling.loading import adapter_manifest_dict, write_adapter_manifest
from .. import modelcard
from .inputs import Inputs
from .retry import StoreRetry


def lineage_of(model: Any, base_name: str) -> trainer_pb2.Lineage:
    import peft
    import torch
    import transformers

    return trainer_pb2.Lineage(
        base_model=base_name,
        base_model_revision=basemodels.revision_of(model.get_base_model().config, base_name),
        library_versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    )


def publish(
    spec: job_pb2.TrainingJobSpec,
    inputs: Inputs,
    model: Any,
    evaluation: dict[str, Any],
    store: ObjectStore,
    workdir: Path,
    retry: StoreRetry,
    world_size: int,
) -> job_pb2.JobResult:
    """Writes the adapter and metrics to the store; returns the job's result."""
    adapter_dir = workdir / "adapter"
    model.save_pretrained(str(adapter_dir))
    inputs.tokenizer.save_pretrained(str(adapter_dir))
    lineage = lineage_of(model, inputs.base_name)
    manifest = job_pb2.AdapterManifest(
        model_version=spec.model_version,
        task=common_pb2.Task.Name(spec.task).removeprefix("TASK_"),
        label_names=inputs.prepared.label_names,
        multi_label=inputs.prepared.multi_label,
        prompt_template=PROMPT_TEMPLATE,
        max_length=inputs.max_length,
        model_config=spec.model_config,
        tokenizer_config=spec.tokenizer_config,
        lineage=lineage,
    )
    write_adapter_manifest(adapter_dir, manifest)
    # Over PEFT's own placeholder card: how to load this adapter without textft.
    card = modelcard.render(adapter_manifest_dict(manifest), spec.dataset_version, spec.template)
    (adapter_dir / "README.md").write_text(card)
    prefix = f"{spec.output_prefix}/adapter"

    def upload_adapter() -> None:
        # From scratch each time: a retried upload (or job) never leaves files of an earlier attempt.
        store.delete_prefix(prefix + "/")
        store.upload_dir(adapter_dir, prefix)

    retry("uploading the adapter", upload_adapter)
    retry("uploading metrics", lambda: store.put_json(f"{spec.output_prefix}/metrics.json", evaluation))
    return job_pb2.JobResult(adapter_uri=prefix, lineage=lineage, world_size=world_size)
