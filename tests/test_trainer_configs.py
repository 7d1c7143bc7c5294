"""Config rules added with checkpoints and DDP (no services needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from textft.errors import InvalidArgument
from textft_services.common.config import Settings
from textft_services.trainer import configs
from textft_services.trainer.job import main as job_main
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
    assert single[1:3] == ["-m", "textft_services.trainer.job"] and "--exit-on-stdin-eof" in single
    ddp = LocalProcessLauncher(2).command("models/m/versions/v1/job.json", tmp_path)
    assert ddp[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ddp[5:7] == ["-m", "textft_services.trainer.job"]
    # Evaluation always runs as one process (the spec says it is one).
    evaluate = LocalProcessLauncher(2).command("k", tmp_path, distributed=False)
    assert evaluate[1:3] == ["-m", "textft_services.trainer.job"]
    parsed = job_main.parser().parse_args(evaluate[3:])  # the worker accepts exactly what the launcher passes
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


# ---- issue 17: inputs that reach the filesystem or code are contained ----

CLS = "gpt-neo-125m-lora-text-classification"


def _refused(overrides: dict, allowed: tuple[str, ...] | None = None) -> dict[str, str]:
    """field -> description of every violation of DEFAULTS + overrides."""
    with pytest.raises(InvalidArgument) as info:
        configs.validate(configs.merge(DEFAULTS, overrides), allowed)
    assert info.value.reason == "MODEL_TRAINING_INVALID_PARAMS"
    return {v.field: v.description for v in info.value.violations}


@pytest.mark.parametrize("section", ["model_config", "tokenizer_config"])
def test_subfolder_stays_inside_the_base_model(section: str) -> None:
    resolved = configs.validate(configs.merge(DEFAULTS, {section: {"subfolder": "sub/dir_1.v2"}}))
    assert resolved[section]["subfolder"] == "sub/dir_1.v2"
    field = f"{section}.subfolder"
    for bad in ("..", "../x", "/etc", "a/../../b", "a\\..", "a\x00b", "x" * 201, "%2e%2e/x", "a//b", "./a", "a b", ""):
        assert list(_refused({section: {"subfolder": bad}})) == [field], repr(bad)


def test_revision_and_variant_are_path_like_too() -> None:
    resolved = configs.validate(configs.merge(DEFAULTS, {"model_config": {"revision": "refs/pr/1", "variant": "fp16"}}))
    assert resolved["model_config"]["variant"] == "fp16"
    assert list(_refused({"model_config": {"revision": "../../refs"}})) == ["model_config.revision"]
    assert list(_refused({"tokenizer_config": {"revision": "/abs"}})) == ["tokenizer_config.revision"]
    assert list(_refused({"model_config": {"variant": "a/b"}})) == ["model_config.variant"]


def test_strings_are_bounded() -> None:
    assert list(_refused({"tokenizer_config": {"pad_token": "x" * 201}})) == ["tokenizer_config.pad_token"]
    assert list(_refused({"trainer_config": {"metric_for_best_model": "m" * 201}})) == [
        "trainer_config.metric_for_best_model"
    ]


def test_a_subfolder_that_resolves_outside_the_base_is_refused_at_load_time(tmp_path: Path) -> None:
    from textft_services.common import basemodels

    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "escape").symlink_to(outside)  # a link planted in the base model's directory
    basemodels.check_subfolder(str(base), "sub", "model_config.subfolder")
    basemodels.check_subfolder(str(base), None, "model_config.subfolder")
    basemodels.check_subfolder("EleutherAI/gpt-neo-125M", "sub", "model_config.subfolder")  # hub: not a local dir
    for bad in ("escape", "escape/x", "../outside", "/etc", "a\\b", "a\x00"):
        with pytest.raises(InvalidArgument) as info:
            basemodels.check_subfolder(str(base), bad, "tokenizer_config.subfolder")
        assert [v.field for v in info.value.violations] == ["tokenizer_config.subfolder"], bad


def test_a_store_base_model_resolves_inside_the_cache(tmp_path: Path) -> None:
    from textft_services.common import basemodels
    from textft_services.common.store import LocalStore

    store, cache = LocalStore(tmp_path / "store"), tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (cache / "planted").symlink_to(tmp_path / "elsewhere")
    for uri in ("store://base-models/planted", "store://base-models/../x", "store://datasets/x"):
        with pytest.raises(InvalidArgument) as info:
            basemodels.resolve(uri, store, cache, "tokenizer_config.pretrained_model_name_or_path")
        assert [v.field for v in info.value.violations] == ["tokenizer_config.pretrained_model_name_or_path"], uri
    assert basemodels.resolve("EleutherAI/gpt-neo-125M", store, cache) == "EleutherAI/gpt-neo-125M"


def test_weights_load_from_safetensors_only() -> None:
    from textft_services.modeling.loading import safe_model_kwargs

    why = _refused({"model_config": {"use_safetensors": False}})
    assert list(why) == ["model_config.use_safetensors"] and "safetensors only" in why["model_config.use_safetensors"]
    assert configs.validate(configs.merge(DEFAULTS, {"model_config": {"use_safetensors": True}}))
    assert safe_model_kwargs("EleutherAI/gpt-neo-125M", {"use_safetensors": False})["use_safetensors"] is True
    assert safe_model_kwargs("EleutherAI/gpt-neo-125M", {})["use_safetensors"] is True


def test_attn_implementation_comes_from_a_list() -> None:
    for choice in ("eager", "sdpa", "flash_attention_2"):
        resolved = configs.validate(configs.merge(DEFAULTS, {"model_config": {"attn_implementation": choice}}))
        assert resolved["model_config"]["attn_implementation"] == choice
    why = _refused({"model_config": {"attn_implementation": "kernels-community/evil"}})
    assert "eager, flash_attention_2, sdpa" in why["model_config.attn_implementation"]


def test_trainer_config_is_an_allow_list() -> None:
    fields = configs.trainer_fields()
    outside = sorted(set(fields) - set(configs.TRAINER_ALLOWED))
    assert "torch_compile" in outside and "use_cpu" in outside and "ddp_backend" in outside
    for key in ("torch_compile", "use_cpu", "ddp_backend", "label_names", "debug"):
        why = _refused({"trainer_config": {key: True if fields[key] is bool else "x"}})
        assert why == {f"trainer_config.{key}": "not allowed: not in textft's allow-list of TrainingArguments fields"}
    # Named dangerous keys keep their reasons; unknown keys are still unknown.
    assert "DeepSpeed" in _refused({"trainer_config": {"deepspeed": "/etc/passwd"}})["trainer_config.deepspeed"]
    assert _refused({"trainer_config": {"lerning_rate": 1}})["trainer_config.lerning_rate"].startswith("unknown key")
    assert "torch.load" in _refused({"peft_config": {"corda_config": {"cache_file": "/x"}}})["peft_config.corda_config"]
    # Every allow-listed name is a real TrainingArguments field (no stale entries).
    assert set(configs.TRAINER_ALLOWED) <= set(fields)


@pytest.mark.parametrize(
    "key, good, bad",
    [
        ("max_steps", [-1, 1, 1_000_000], [0, -2, 1_000_001]),
        ("learning_rate", [1e-5, 1.0], [0, -1e-4, 1.5]),
        ("num_train_epochs", [0.5, 3], [0, -1]),
        ("save_steps", [1, 500], [0, 0.5, 1_000_001]),
        ("save_total_limit", [1, 100], [0, 101]),
        ("dataloader_num_workers", [0, 8], [-1, 9]),
        ("per_device_train_batch_size", [1, 64], [0, 5000]),
        ("gradient_accumulation_steps", [1, 16], [0]),
        ("weight_decay", [0, 0.1], [-0.1, 2]),
        ("adam_beta2", [0.999], [1, -0.1]),
        ("label_smoothing_factor", [0, 0.1], [1, -0.5]),
        ("logging_steps", [0.1, 10], [0, -1]),
        ("seed", [0, 42], [-1, 2**32]),
        ("optim", ["adamw_torch", "sgd"], ["adamw_bnb_8bit", "galore_adamw"]),
    ],
)
def test_trainer_values_have_ranges(key: str, good: list, bad: list) -> None:
    base = {"save_strategy": "steps"} if key.startswith("save_") else {}
    for value in good:
        assert configs.validate(configs.merge(DEFAULTS, {"trainer_config": {**base, key: value}}))
    for value in bad:
        why = _refused({"trainer_config": {**base, key: value}})
        assert list(why) == [f"trainer_config.{key}"], (value, why)


def test_every_template_validates_under_the_default_allow_lists() -> None:
    allowed = Settings.from_env({}).base_models_allowed
    for template in TEMPLATES.values():
        assert set(template.trainer_config) <= set(configs.TRAINER_ALLOWED), template.template_id
        overrides: dict = {"trainer_config": {"bf16": None}}  # bf16 needs a GPU: TrainingArguments refuses it here
        if not template.model_config:  # the hf-lora templates name no base
            overrides["model_config"] = {"pretrained_model_name_or_path": "store://base-models/tiny"}
        configs.validate(configs.merge(template.defaults(), overrides), allowed)


def test_base_models_come_from_a_configurable_allow_list() -> None:
    assert Settings.from_env({}).base_models_allowed == ("*",)  # any, until the operator narrows it
    settings = Settings.from_env({"TEXTFT_BASE_MODELS_ALLOWED": " store://base-models/ , acme/ ,"})
    assert settings.base_models_allowed == ("store://base-models/", "acme/")

    def base(name: str) -> dict:
        return {"model_config": {"pretrained_model_name_or_path": name}}

    allowed = settings.base_models_allowed
    assert configs.validate(configs.merge(DEFAULTS, base("acme/tiny")), allowed)
    assert configs.validate(configs.merge(DEFAULTS, base("store://base-models/x")), allowed)
    why = _refused(base("EleutherAI/gpt-neo-125M"), allowed)
    assert list(why) == ["model_config.pretrained_model_name_or_path"]
    assert "store://base-models/, acme/" in why["model_config.pretrained_model_name_or_path"]
    tokenizer = {"tokenizer_config": {"pretrained_model_name_or_path": "evil/tok"}}
    assert list(_refused({**base("acme/m"), **tokenizer}, allowed)) == [
        "tokenizer_config.pretrained_model_name_or_path"
    ]
    assert configs.validate(configs.merge(DEFAULTS, base("anyone/model")), ("*",))
    assert _refused(base("acme/m"), ())  # an empty list allows none
    # "*" allows any hub id, never a local path.
    assert list(_refused(base("/etc"), ("*",))) == ["model_config.pretrained_model_name_or_path"]


def test_hub_tokens_are_secrets_scrubbed_from_logs() -> None:
    import logging
    import sys

    from textft_services.common.logs import SecretFilter

    token = "hf_" + "A1b2C3d4" * 4
    settings = Settings.from_env(
        {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token + "x", "HF_HUB_TOKEN": "hf_other_1"}
    )
    assert {token, token + "x", "hf_other_1"} <= set(settings.secrets())
    assert token not in repr(settings)
    try:
        raise RuntimeError(f"401 for https://huggingface.co with Bearer {token}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed with %s", (token,), sys.exc_info())
    SecretFilter(settings.secrets()).filter(record)
    text = logging.Formatter().format(record)
    assert token not in text and "***" in text and "RuntimeError" in text


def test_the_first_validations_and_the_warm_up_can_run_at_once() -> None:
    """A fresh trainer imports transformers and peft in the background while
    the first requests validate on other threads: transformers' lazy module,
    imported from two threads at once, answered one of them "cannot import
    name 'AutoModel'" until the imports took a lock. A fresh interpreter, so the
    imports are cold."""
    script = """
import threading
from textft_services.trainer import configs
from textft_services.trainer.templates import TEMPLATES
errors = []
def validate():
    try:
        configs.validate(next(iter(TEMPLATES.values())).defaults(), ("*",))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=configs.warm_up)] + [threading.Thread(target=validate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
