"""Loading a base model and tokenizer for a task, and the adapter's
textft.json (AdapterManifest): one implementation for the trainer and
inference, so the two never drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from textft.internal.v1 import job_pb2

from ..common.basemodels import check_subfolder

ADAPTER_MANIFEST = "textft.json"


def adapter_manifest_dict(manifest: job_pb2.AdapterManifest) -> dict[str, Any]:
    """textft.json's content. Every field, defaults too: readers of textft.json
    (inference) look keys up directly."""
    return json_format.MessageToDict(
        manifest, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def write_adapter_manifest(adapter_dir: Path, manifest: job_pb2.AdapterManifest) -> None:
    data = adapter_manifest_dict(manifest)
    (adapter_dir / ADAPTER_MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_adapter_manifest(adapter_dir: Path) -> job_pb2.AdapterManifest:
    text = (adapter_dir / ADAPTER_MANIFEST).read_text()
    return json_format.Parse(text, job_pb2.AdapterManifest(), ignore_unknown_fields=True)


def struct_dict(struct: Any) -> dict[str, Any]:
    """A Struct field as a dict (numbers come back as floats: validate where types matter)."""
    return json_format.MessageToDict(struct)


def load_tokenizer(tokenizer_kwargs: dict[str, Any], path: str) -> tuple[Any, int]:
    from transformers import AutoTokenizer

    check_subfolder(path, tokenizer_kwargs.get("subfolder"), "tokenizer_config.subfolder")
    tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
    if tokenizer.pad_token is None:  # GPT-Neo has none: reuse EOS
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer, min(int(tokenizer.model_max_length or 512), 4096)


def safe_model_kwargs(base_path: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained kwargs of a base model: safetensors only (a pickled
    checkpoint can run code as it loads), its subfolder inside the base."""
    check_subfolder(base_path, model_kwargs.get("subfolder"), "model_config.subfolder")
    return {**model_kwargs, "use_safetensors": True}


def load_base_model(
    classification: bool, base_path: str, model_kwargs: dict[str, Any], tokenizer: Any, labels: list[str], multi: bool
) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model_kwargs = safe_model_kwargs(base_path, model_kwargs)
    if classification:
        kwargs = dict(model_kwargs)
        kwargs.setdefault("problem_type", "multi_label_classification" if multi else "single_label_classification")
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            pad_token_id=tokenizer.pad_token_id,  # the tokenizer alone is not enough for batches > 1
            **kwargs,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        return model
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def fused_activations(model: Any) -> int:
    """Swaps transformers' tanh-GELU written as Python tensor ops (NewGELU, what
    GPT-Neo and GPT-2 use; FastGELU) for torch's one-kernel gelu(approximate="tanh")
    (transformers' own GELUTanh): the same function, equal to float rounding, in
    one pass over the activations instead of seven. Measured on the bench's
    GPT-Neo, a fifth of a classification forward on the CPU. For inference:
    the trainer keeps the model as configured. Returns the modules swapped."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(parent, name, GELUTanh())
                swapped += 1
    return swapped
