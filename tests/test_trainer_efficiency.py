"""The efficiency defaults take effect in the Trainer the job builds: the
templates' train_sampling_strategy=group_by_length gets a sampler that groups
by the collator's token lengths (counted a megabatch at a time, no row
tokenised up front), the collator tokenises and pads each batch to its own
longest row, and grouped batches carry far less padding than random ones."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from transformers import Trainer

from textft_services.modeling.collate import make_collator
from textft_services.modeling.loading import load_base_model, load_tokenizer
from textft_services.trainer.job.training import build_training_args, job_trainer
from textft_services.trainer.templates import TEMPLATES

pytestmark = pytest.mark.unit

LABELS = ["a", "b"]


def _padding_share(trainer: Trainer) -> tuple[float, set[str]]:
    padded = real = 0
    keys: set[str] = set()
    for batch in trainer.get_train_dataloader():
        keys |= set(batch)
        padded += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
    return 1 - real / padded, keys


def test_group_by_length_and_dynamic_padding_take_effect(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer, max_length = load_tokenizer({}, str(tiny_model_dir))
    rng = random.Random(0)
    texts = [" ".join(["fox"] * rng.randint(1, 100)) for _ in range(256)]
    rows = Dataset.from_dict(
        {
            "row": list(range(1, 257)),
            "text": texts,
            "labels": [[rng.choice(LABELS)] for _ in texts],
            "target": [""] * 256,
            "split": [""] * 256,
        }
    )
    model = load_base_model(True, str(tiny_model_dir), {}, tokenizer, LABELS, False)
    collator = make_collator(True, tokenizer, max_length, LABELS, False)
    defaults = dict(TEMPLATES["gpt-neo-125m-lora-text-classification"].trainer_config)
    assert defaults["train_sampling_strategy"] == "group_by_length"

    def trainer_with(**overrides: object) -> Trainer:
        args = build_training_args({**defaults, **overrides}, tmp_path / "out")
        assert args.remove_unused_columns is False
        return job_trainer(collator)(model=model, args=args, train_dataset=rows, data_collator=collator)

    grouped = trainer_with()
    order = list(grouped._get_train_sampler())
    assert sorted(order) == list(range(len(rows)))  # every row once
    tokens = collator.lengths(rows[order])
    assert tokens.tolist() == [len(tokenizer(rows[i]["text"])["input_ids"]) for i in order]
    batch = grouped.args.train_batch_size * grouped.args.gradient_accumulation_steps
    megabatch = batch * min(len(rows) // (batch * 4), 50)  # as transformers' LengthGroupedSampler
    for start in range(0, len(order), megabatch):  # each megabatch sorted longest first
        chunk = tokens[start : start + megabatch]
        assert (np.diff(chunk) <= 0).all(), chunk
    grouped_share, keys = _padding_share(grouped)
    assert keys == {"input_ids", "attention_mask", "labels"}

    shuffled_share, _ = _padding_share(trainer_with(train_sampling_strategy="random"))
    assert grouped_share < 0.1 < shuffled_share, (grouped_share, shuffled_share)
    generation = make_collator(False, tokenizer, max_length, [], False)
    pairs = {"text": ["the quick fox", "a"], "target": ["jumps over", "b c d"]}
    batch = generation([{"text": t, "target": g} for t, g in zip(pairs["text"], pairs["target"], strict=True)])
    assert generation.lengths(pairs).tolist() == batch["attention_mask"].sum(dim=1).tolist()
    args = build_training_args({**defaults, "max_steps": 1}, tmp_path / "step")
    trainer = job_trainer(collator)(model=model, args=args, train_dataset=rows, data_collator=collator)
    assert trainer.train().global_step == 1
