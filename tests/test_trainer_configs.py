"""Config rules added with checkpoints and DDP (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from textft.errors import InvalidArgument
from textft_services.common.config import Settings
from textft_services.trainer import configs
from textft_services.trainer.launcher import LocalProcessLauncher
from textft_services.trainer.templates import TEMPLATES

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
    # Evaluation always runs as one process.
    evaluate = LocalProcessLauncher(2).command("k", tmp_path, ["--evaluate", "d", "--rows", "r"], distributed=False)
    assert evaluate[1:3] == ["-m", "textft_services.trainer.worker"] and evaluate[-4:] == [
        "--evaluate",
        "d",
        "--rows",
        "r",
    ]
