"""The model a job trains: the base model with a LoRA adapter (PEFT)."""

from __future__ import annotations

from typing import Any

from ...modeling.data import JobFailure
from ...modeling.loading import load_base_model
from ..events import Emitter
from .inputs import Inputs


def build_model(inputs: Inputs, emitter: Emitter) -> Any:
    """The PeftModel to train; a peft_config this base model rejects fails the job."""
    from peft import LoraConfig, TaskType, get_peft_model

    prepared = inputs.prepared
    model = load_base_model(
        inputs.classification,
        inputs.base_path,
        inputs.model_kwargs,
        inputs.tokenizer,
        prepared.label_names,
        prepared.multi_label,
    )
    task_type = TaskType.SEQ_CLS if inputs.classification else TaskType.CAUSAL_LM  # SEQ_CLS saves the score head itself
    try:
        model = get_peft_model(model, LoraConfig(task_type=task_type, **inputs.peft_kwargs))
    except ValueError as e:  # e.g. target modules that do not exist in this model
        raise JobFailure(
            "MODEL_TRAINING_INVALID_PARAMS", f"peft_config rejected for {inputs.base_name}: {e}", field="peft_config"
        ) from None
    trainable, total = model.get_nb_trainable_parameters()
    emitter.log(
        f"base {inputs.base_name}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%)"
    )
    return model
