"""The adapter's model card (README.md beside adapter_config.json): what it
is, and a snippet that loads it with plain transformers + PEFT, carrying what
PEFT's usual path does not know by itself: the label names in class-index
order (else the head comes back as LABEL_0…), the pad token, the prompt
template and the maximum length. tests/test_e2e.py runs the snippet."""

from __future__ import annotations

import json
from typing import Any

_CLASSIFY = """import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ADAPTER = "path/to/this/folder"  # this adapter, downloaded from the store
BASE = {base!r}{base_note}
LABELS = {labels}  # class-index order
TEXTS = ["some text to classify"]

tokenizer = AutoTokenizer.from_pretrained(ADAPTER)
base = AutoModelForSequenceClassification.from_pretrained(
    BASE,
    num_labels=len(LABELS),
    id2label=dict(enumerate(LABELS)),
    label2id={{label: i for i, label in enumerate(LABELS)}},
    pad_token_id=tokenizer.pad_token_id,
)
model = PeftModel.from_pretrained(base, ADAPTER).eval()
batch = tokenizer(TEXTS, return_tensors="pt", padding=True, truncation=True, max_length={max_length})
with torch.no_grad():
    scores = model(**batch).logits.{activation}
for text, row in zip(TEXTS, scores.tolist()):
    print(text, dict(zip(LABELS, row)))
"""

_GENERATE = """import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ADAPTER = "path/to/this/folder"  # this adapter, downloaded from the store
BASE = {base!r}{base_note}
PROMPT = {prompt!r}  # the template the adapter was trained with
TEXTS = ["some input text"]

tokenizer = AutoTokenizer.from_pretrained(ADAPTER, padding_side="left")
base = AutoModelForCausalLM.from_pretrained(BASE, pad_token_id=tokenizer.pad_token_id)
model = PeftModel.from_pretrained(base, ADAPTER).eval()
batch = tokenizer([PROMPT.format(text=t) for t in TEXTS], return_tensors="pt", padding=True,
                  truncation=True, max_length={max_length})
with torch.no_grad():
    out = model.generate(**batch, max_new_tokens=64, do_sample=False)
outputs = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
for text, output in zip(TEXTS, outputs):
    print(text, "->", output)
"""


def render(meta: dict[str, Any], dataset_version: str, template: str) -> str:
    """README.md for an adapter whose textft.json is `meta`."""
    base = str(meta["model_config"]["pretrained_model_name_or_path"])
    classification = meta["task"] == "TEXT_CLASSIFICATION"
    base_note = ""
    if base.startswith("store://"):
        key = base.removeprefix("store://")
        base_note = f"  # download {key}/ from the textft store and put its local folder here"
    labels = list(meta.get("label_names") or [])
    if classification:
        snippet = _CLASSIFY.format(
            base=base,
            base_note=base_note,
            labels=json.dumps(labels),
            max_length=int(meta.get("max_length", 512)),
            activation="sigmoid()  # multi-label" if meta.get("multi_label") else "softmax(-1)",
        )
    else:
        snippet = _GENERATE.format(
            base=base, base_note=base_note, prompt=meta["prompt_template"], max_length=int(meta.get("max_length", 512))
        )
    task = "text-classification" if classification else "text-generation"
    front = "\n".join(
        ["---", "library_name: peft", f"base_model: {base}", f"pipeline_tag: {task}", "tags: [textft, lora]", "---"]
    )
    what = (
        f"Labels, in class-index order: {', '.join(labels)}."
        + (" Multi-label: scores are independent sigmoids." if meta.get("multi_label") else "")
        if classification
        else f"Prompt template: `{meta['prompt_template']!r}`; the model continues the prompt with its answer."
    )
    return (
        f"{front}\n\n# {meta['model_version']}\n\n"
        f"A LoRA adapter ({task}) trained by textft on `{dataset_version}` with `{template}`, "
        f"on the base model `{base}`. {what}\n\n"
        "## Use it with transformers + PEFT\n\n"
        f"```python\n{snippet}```\n\n"
        "`textft.json` beside this file holds the same facts for textft's inference service.\n"
    )
