"""Inputs that reach the filesystem or code are contained (issue 17, part 5).

Tries every escape we know of against config validation and model loading:
path-like kwargs (`subfolder`, `revision`, `variant`) with `..`, absolute
paths, backslashes, NUL, overlong values and percent-encoding (refused: `%` is
outside the accepted alphabet, because nothing decodes it before it reaches a
path but a hub URL would); every TrainingArguments field outside textft's
allow-list; base models outside the operator's allow-list; a subfolder that
is a symlink out of a store base model; pickled weights. Then a crashed
training job, run as its real process with HF_TOKEN set, whose traceback must
not carry the token."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import HEAVY, record

from textft.errors import InvalidArgument
from textft_services.trainer import configs
from textft_services.trainer.templates import TEMPLATES

pytestmark = pytest.mark.reliability

DEFAULTS = TEMPLATES["gpt-neo-125m-lora-text-classification"].defaults()
ALLOWED_BASES = ("store://base-models/", "EleutherAI/", "sentence-transformers/")
TRIED: dict[str, int] = {}
ACCEPTED: list[str] = []

PATH_ESCAPES = [
    "..",
    "../x",
    "../../../../etc/passwd",
    "/etc",
    "/",
    "//server/share",
    "a/../../b",
    "a/..",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\..",
    "..\\..\\windows",
    "C:\\Windows",
    "a\x00b",
    "\x00",
    "x" * 201,
    "a/" * 150 + "b",
    "%2e%2e",
    "%2e%2e/%2e%2e/etc",
    "..%2f..%2fetc",
    "%2f%2fetc",
    "\uff0e\uff0e/x",  # fullwidth dots
    "~/x",
    "~root",
    "a\nb",
    " ../x",
    "$HOME/x",
    "",
]


def _try(label: str, overrides: dict, allowed: tuple[str, ...] | None = None) -> None:
    TRIED[label] = TRIED.get(label, 0) + 1
    try:
        configs.validate(configs.merge(DEFAULTS, overrides), allowed)
    except InvalidArgument as e:
        assert e.violations and all(v.field for v in e.violations)
        return
    ACCEPTED.append(f"{label}: {overrides!r}"[:300])


def _safe_path(value: str, nested: bool) -> bool:
    parts = value.split("/") if nested else [value]
    return (
        0 < len(value) <= configs.MAX_PATH_CHARS
        and all(p and p not in {".", ".."} and configs._PATH_PART_RE.fullmatch(p) for p in parts)
        and not value.startswith("/")
    )


def _path_like_kwargs() -> None:
    for value in PATH_ESCAPES:
        for section in ("model_config", "tokenizer_config"):
            _try("subfolder", {section: {"subfolder": value}})
            _try("revision", {section: {"revision": value}})
        _try("variant", {"model_config": {"variant": value}})
    _try("variant", {"model_config": {"variant": "a/b"}})  # a variant is one file-name part


# Pieces that build traversals: separators, dots, encodings, NUL, look-alikes.
_PIECES = [*"./\\\x00%2eE~ a_-:", "..", "../", "/..", "%2e", "%2f", "\uff0e"]


@settings(max_examples=2000 if HEAVY else 300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(value=st.lists(st.sampled_from(_PIECES), max_size=16).map("".join))
def _fuzzed_subfolders(value: str) -> None:
    # Accepted values are fine only if they are plainly relative and inside.
    try:
        resolved = configs.validate(configs.merge(DEFAULTS, {"model_config": {"subfolder": value}}))
    except InvalidArgument:
        TRIED["subfolder (fuzzed)"] = TRIED.get("subfolder (fuzzed)", 0) + 1
        return
    if not _safe_path(resolved["model_config"]["subfolder"], nested=True):
        ACCEPTED.append(f"subfolder (fuzzed): {value!r}")
        TRIED["subfolder (fuzzed)"] = TRIED.get("subfolder (fuzzed)", 0) + 1


def _plausible_value(tp: object) -> object:
    """A value of the field's type, so the refusal is the allow-list's, not a type error's."""
    text = str(tp)
    if tp is bool or "bool" in text:
        return True
    if tp is int or text.startswith("int"):
        return 1
    if tp is float or text.startswith("float"):
        return 1.0
    if "list" in text:
        return ["x"]
    if "dict" in text:
        return {"x": 1}
    return "x"


def _fields_outside_the_allow_list() -> None:
    fields = configs.trainer_fields()
    outside = sorted(set(fields) - set(configs.TRAINER_ALLOWED))
    assert len(outside) > 30, outside  # transformers 5 has ~114 fields; the allow-list keeps ~45
    for key in outside:
        TRIED["TrainingArguments field outside the allow-list"] = (
            TRIED.get("TrainingArguments field outside the allow-list", 0) + 1
        )
        try:
            configs.validate(configs.merge(DEFAULTS, {"trainer_config": {key: _plausible_value(fields[key])}}))
        except InvalidArgument as e:
            # Refused by name: the allow-list, or the named reason of a dangerous key; never a type error.
            assert [v.field for v in e.violations] == [f"trainer_config.{key}"], e.violations
            assert e.violations[0].description.startswith("not allowed: "), e.violations
        else:
            ACCEPTED.append(f"trainer_config.{key}")


def _values_out_of_range_and_unsafe_loading() -> None:
    cases = [
        {"max_steps": 0},
        {"max_steps": 10**9},
        {"learning_rate": 0},
        {"learning_rate": 10},
        {"save_strategy": "steps", "save_steps": 0},
        {"save_total_limit": 0},
        {"save_total_limit": 10_000},
        {"dataloader_num_workers": 64},
        {"per_device_train_batch_size": 10**6},
        {"optim": "adamw_bnb_8bit"},
        {"report_to": ["wandb"]},
    ]
    for trainer in cases:
        _try("TrainingArguments value out of range", {"trainer_config": trainer})
    _try("pickled weights", {"model_config": {"use_safetensors": False}})
    _try("attn_implementation outside the list", {"model_config": {"attn_implementation": "kernels-community/x"}})
    _try("trust_remote_code", {"model_config": {"trust_remote_code": True}})
    _try("LoRA init files (CorDA)", {"peft_config": {"corda_config": {"cache_file": "/etc/passwd"}}})


def _base_models_outside_the_allow_list() -> None:
    for name in ("someone/model", "eleutherai/gpt-neo-125M", "EleutherAIx/m", "store://base-models", "/etc", "../x"):
        for section in ("model_config", "tokenizer_config"):
            _try("base model outside the allow-list", {section: {"pretrained_model_name_or_path": name}}, ALLOWED_BASES)


def _loading_escapes(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from textft_services.modeling.loading import load_base_model

    assert (tiny_model_dir / "model.safetensors").exists()  # what tests and the demo train on
    assert not list(tiny_model_dir.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.pad_token = tokenizer.eos_token
    assert load_base_model(False, str(tiny_model_dir), {}, tokenizer, [], False) is not None

    # A complete model outside the base's directory, reachable through a link planted in it:
    # without the check from_pretrained would load it.
    base, outside = tmp_path / "base", tmp_path / "outside"
    shutil.copytree(tiny_model_dir, outside)
    base.mkdir()
    (base / "escape").symlink_to(outside)
    TRIED["subfolder symlinked out of the base"] = 1
    try:
        load_base_model(False, str(base), {"subfolder": "escape"}, tokenizer, [], False)
        ACCEPTED.append("subfolder symlinked out of the base")
    except InvalidArgument as e:
        assert e.violations[0].field == "model_config.subfolder"

    # The same model with pickled weights only: never unpickled.
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    TRIED["pickled weights loaded"] = 1
    try:
        load_base_model(False, str(pickled), {}, tokenizer, [], False)
        ACCEPTED.append("pickled weights loaded")
    except OSError:  # transformers: no model.safetensors with use_safetensors=True
        pass


def test_a_crashed_jobs_traceback_carries_no_hub_token(tmp_path: Path) -> None:
    token = "hf_" + "Zq9" * 12
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_", "HF_", "HUGGING"))}
    env.update(
        TEXTFT_HOME=str(tmp_path / "home"),
        TEXTFT_STORE="local",
        TEXTFT_STORE_DIR=str(tmp_path / "store"),
        HF_TOKEN=token,
        TEXTFT_LOG_FORMAT="json",
    )
    # The job key carries the token, so the NotFound's traceback does too.
    cmd = [sys.executable, "-m", "textft_services.trainer.job", "--job", f"jobs/{token}/job.json"]
    done = subprocess.run(
        [*cmd, "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" in done.stderr and "***" in done.stderr  # logged, and scrubbed on the way
    assert "MODEL_TRAINING_CRASHED" in done.stdout and "***" in done.stdout
    leaked = int(token in done.stdout + done.stderr)
    record("security", "HF token in a crashed job's traceback or events", f"{leaked} / 1")
    assert not leaked


def test_path_and_config_escapes_are_all_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    TRIED.clear()
    ACCEPTED.clear()
    _path_like_kwargs()
    _fuzzed_subfolders()
    _fields_outside_the_allow_list()
    _values_out_of_range_and_unsafe_loading()
    _base_models_outside_the_allow_list()
    _loading_escapes(tiny_model_dir, tmp_path)
    n = sum(TRIED.values())
    record("security", "path and config escapes tried: accepted", f"{len(ACCEPTED)} / {n}")
    assert not ACCEPTED, ACCEPTED
