"""Config rules added with checkpoints and DDP (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from textft.errors import InvalidArgument
from textft_services.common.config import Settings
from textft_services.trainer import configs, worker
from textft_services.trainer.launcher import LocalProcessLauncher
from textft_services.trainer.templates import TEMPLATES

pytestmark = pytest.mark.unit

DEFAULTS = TEMPLATES["gpt-neo-125m-lora-text-classification"].defaults()


def _validate(trainer_config: dict) -> dict:
    return configs.validate(configs.merge(DEFAULTS, {"trainer_config": trainer_config}))


def test_checkpointing_configs() -> None:
    resolved = _validate({"save_strategy": "steps", "save_steps": 10.0, "save_total_limit": 2.0})
    assert resolved["trainer_config"]["save_strategy"] == "steps"
    assert resolved["trainer_config"]["save_total_limit"] == 2
    with pytest.raises(InvalidArgument) as info:
        _validate({"save_strategy": "steps", "save_steps": 10, "save_only_model": True})
    assert [v.field for v in info.value.violations] == ["trainer_config.save_only_model"]
    with pytest.raises(InvalidArgument) as info:
        _validate({"resume_from_checkpoint": "/tmp/x"})
    assert [v.field for v in info.value.violations] == ["trainer_config.resume_from_checkpoint"]


def test_nproc_setting_and_torchrun_command(tmp_path: Path) -> None:
    assert Settings.from_env({}).trainer_nproc == 1
    assert Settings.from_env({"TEXTFT_TRAINER_NPROC": "4"}).trainer_nproc == 4
    with pytest.raises(ValueError, match="TEXTFT_TRAINER_NPROC"):
        Settings.from_env({"TEXTFT_TRAINER_NPROC": "two"})
    single = LocalProcessLauncher(1).command("models/m/versions/v1/job.json", tmp_path)
    assert single[1:3] == ["-m", "textft_services.trainer.worker"] and "--exit-on-stdin-eof" in single
    ddp = LocalProcessLauncher(2).command("models/m/versions/v1/job.json", tmp_path)
    assert ddp[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ddp[5:7] == ["-m", "textft_services.trainer.worker"]
    # Evaluation always runs as one process (the spec says it is one).
    evaluate = LocalProcessLauncher(2).command("k", tmp_path, distributed=False)
    assert evaluate[1:3] == ["-m", "textft_services.trainer.worker"]
    parsed = worker.parser().parse_args(evaluate[3:])  # the worker accepts exactly what the launcher passes
    assert parsed.job == "k"


def test_keys_the_trainer_sets_itself_are_refused_up_front() -> None:
    # TrainingArguments accepts them, but the worker passes them itself: a user
    # value would crash the job with a TypeError after it was queued.
    for key, value in (("disable_tqdm", False), ("remove_unused_columns", True)):
        with pytest.raises(InvalidArgument) as info:
            _validate({key: value})
        assert [v.field for v in info.value.violations] == [f"trainer_config.{key}"]
        assert info.value.reason == "MODEL_TRAINING_INVALID_PARAMS"


def test_pretrained_model_name_is_an_alias() -> None:
    # Clarifai's template docs write {"pretrained_model_name": ...}.
    resolved = configs.validate(configs.merge(DEFAULTS, {"model_config": {"pretrained_model_name": "org/base"}}))
    assert resolved["model_config"]["pretrained_model_name_or_path"] == "org/base"
    assert "pretrained_model_name" not in resolved["model_config"]
    with pytest.raises(InvalidArgument) as info:
        configs.merge(
            DEFAULTS,
            {"model_config": {"pretrained_model_name": "org/a", "pretrained_model_name_or_path": "org/b"}},
        )
    assert sorted(v.field for v in info.value.violations) == [
        "model_config.pretrained_model_name",
        "model_config.pretrained_model_name_or_path",
    ]
