"""Built-in training templates: a table, not an if-chain.

Each template holds the defaults of the four dictionaries that are passed to
the real functions (AutoModelFor...from_pretrained, peft.LoraConfig,
AutoTokenizer.from_pretrained, transformers.TrainingArguments). A
CreateModelVersionRequest overrides them key by key.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from textft.errors import NotFound
from textft.v1 import common_pb2

CLS = common_pb2.TASK_TEXT_CLASSIFICATION
GEN = common_pb2.TASK_TEXT_GENERATION


@dataclass(frozen=True)
class Template:
    template_id: str
    task: int
    description: str
    model_config: dict[str, Any]
    peft_config: dict[str, Any]
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    trainer_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"templates/{self.template_id}"

    def defaults(self) -> dict[str, dict[str, Any]]:
        return deepcopy(
            {
                "model_config": self.model_config,
                "peft_config": self.peft_config,
                "tokenizer_config": self.tokenizer_config,
                "trainer_config": self.trainer_config,
            }
        )


# Shared by every template: dynamic padding happens in the collator; batches
# grouped by length cut padding further; no reporting integrations.
_TRAINER_BASE: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "learning_rate": 2e-4,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "lr_scheduler_type": "linear",
    "logging_steps": 10,
    "train_sampling_strategy": "group_by_length",
    "save_strategy": "no",
    "seed": 42,
    "report_to": "none",
}
_GPT_NEO_LORA: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
}
_ANY_LORA: dict[str, Any] = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
_BIG = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 4,
    "gradient_checkpointing": True,
    "bf16": True,
}


def _gpt_neo(size: str, task: int, extra_trainer: dict[str, Any] | None = None) -> Template:
    kind = "classification" if task == CLS else "generation"
    model = f"EleutherAI/gpt-neo-{size}"
    what = (
        "sequence classification head (score) trained in full with LoRA on attention q/v"
        if task == CLS
        else "causal LM; loss on the target tokens only"
    )
    return Template(
        template_id=f"gpt-neo-{size.lower()}-lora-text-{kind}",
        task=task,
        description=f"GPT-Neo {size.upper()} ({model}) with LoRA r=8 on q_proj/v_proj: {what}.",
        model_config={"pretrained_model_name_or_path": model},
        peft_config=dict(_GPT_NEO_LORA),
        tokenizer_config={"model_max_length": 512},
        trainer_config={**_TRAINER_BASE, **(extra_trainer or {})},
    )


def _any_hf(task: int) -> Template:
    kind = "classification" if task == CLS else "generation"
    auto = "AutoModelForSequenceClassification" if task == CLS else "AutoModelForCausalLM"
    return Template(
        template_id=f"hf-lora-text-{kind}",
        task=task,
        description=(
            f"Any Hugging Face model loadable with {auto}: set model_config.pretrained_model_name_or_path "
            "(a hub id, or store://base-models/... for weights kept in the store). LoRA target modules are "
            "inferred from the model type unless peft_config.target_modules is set."
        ),
        model_config={},
        peft_config=dict(_ANY_LORA),
        tokenizer_config={"model_max_length": 512},
        trainer_config=dict(_TRAINER_BASE),
    )


TEMPLATES: dict[str, Template] = {
    t.template_id: t
    for t in (
        _gpt_neo("125M", CLS),
        _gpt_neo("125M", GEN),
        _gpt_neo("2.7B", CLS, _BIG),
        _gpt_neo("2.7B", GEN, _BIG),
        _any_hf(CLS),
        _any_hf(GEN),
    )
}


def get_template(template_id: str) -> Template:
    try:
        return TEMPLATES[template_id]
    except KeyError:
        raise NotFound(
            f"template templates/{template_id} not found; known: {', '.join(sorted(TEMPLATES))}",
            reason="TEMPLATE_NOT_FOUND",
        ) from None
