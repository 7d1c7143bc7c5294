"""The efficiency defaults take effect in the Trainer the job builds: the
templates' train_sampling_strategy=group_by_length gets a LengthGroupedSampler
fed from the precomputed `length` column (with remove_unused_columns=False the
Trainer would otherwise pass every column on), the collator pads each batch to
its own longest row and drops `length`, and grouped batches carry far less
padding than random ones."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from textft_services.trainer import worker
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
    tokenizer, max_length = worker.load_tokenizer({}, str(tiny_model_dir))
    rng = random.Random(0)
    rows = [{"text": " ".join(["fox"] * rng.randint(1, 100)), "labels": [rng.choice(LABELS)]} for _ in range(256)]
    encoded = worker.encode(True, rows, tokenizer, max_length, LABELS, False)
    model = worker.load_base_model(True, str(tiny_model_dir), {}, tokenizer, LABELS, False)
    collator = worker.make_collator(True, tokenizer)
    defaults = dict(TEMPLATES["gpt-neo-125m-lora-text-classification"].trainer_config)
    assert defaults["train_sampling_strategy"] == "group_by_length"

    def trainer_with(**overrides: object) -> Trainer:
        args = worker.build_training_args({**defaults, **overrides}, tmp_path / "out")
        assert args.remove_unused_columns is False
        dataset = worker.to_dataset(encoded, args.length_column_name)
        return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)

    grouped = trainer_with()
    sampler = grouped._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == [len(e["input_ids"]) for e in encoded]  # read from the column
    grouped_share, keys = _padding_share(grouped)
    assert "length" not in keys and {"input_ids", "attention_mask", "labels"} <= keys

    shuffled_share, _ = _padding_share(trainer_with(train_sampling_strategy="random"))
    assert grouped_share < 0.1 < shuffled_share, (grouped_share, shuffled_share)
    # A train step runs with the dropped column.
    args = worker.build_training_args({**defaults, "max_steps": 1}, tmp_path / "step")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=worker.to_dataset(encoded, args.length_column_name),
        data_collator=collator,
    )
    assert trainer.train().global_step == 1
