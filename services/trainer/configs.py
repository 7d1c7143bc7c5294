"""Validation of the four configuration dictionaries, before a job is queued.

Keys are checked against the real targets: `TrainingArguments`' dataclass
fields, `LoraConfig`'s fields, and allow-lists of the from_pretrained kwargs we
pass on. Values are checked against the fields' type annotations. Keys that
would run remote code, write outside the job's directory, or talk to the hub
are refused by name. Every refusal is an InvalidArgument naming the field.

Inputs that reach the filesystem or code are contained: `trainer_config` is an
allow-list (TRAINER_ALLOWED, with value ranges), so a field a new transformers
release adds is refused until it is reviewed here; path-like kwargs
(`subfolder`, `variant`, `revision`) are relative, `..`-free and bounded;
weights load from safetensors only; base models come from the operator's
allow-list of prefixes (TEXTFT_BASE_MODELS_ALLOWED).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import threading
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from textft.errors import FieldViolation, InvalidArgument

log = logging.getLogger("textft.trainer.configs")

# Refused wherever they appear, with the reason.
FORBIDDEN: dict[str, str] = {
    "trust_remote_code": "would execute code downloaded with the model",
    "output_dir": "the trainer chooses the job's directory",
    "logging_dir": "the trainer chooses the job's directory",
    "cache_dir": "the trainer manages model caches",
    "push_to_hub": "adapters are stored in textft's store, not pushed to a hub",
    "hub_token": "credentials are never accepted in configs",
    "token": "credentials are never accepted in configs",
    "use_auth_token": "credentials are never accepted in configs",
    "resume_from_checkpoint": "resuming is managed by the trainer from the store's checkpoints",
    "deepspeed": "a DeepSpeed config path could read arbitrary files",
    "fsdp_config": "a config path could read arbitrary files",
    "accelerator_config": "a config path could read arbitrary files",
    "parallelism_config": "set by the trainer's launcher",
    "local_rank": "set by the trainer's launcher",
    "device_map": "device placement is managed by the trainer",
    "num_labels": "set from the dataset's labels",
    "id2label": "set from the dataset's labels",
    "label2id": "set from the dataset's labels",
    "task_type": "set from the model's task",
    "base_model_name_or_path": "set from model_config.pretrained_model_name_or_path",
    "inference_mode": "set by the trainer",
    "disable_tqdm": "the trainer reports progress as events (WatchModelVersion)",
    "remove_unused_columns": "the trainer's collator needs the tokenised columns it builds",
    "corda_config": "its cache_file and covariance_file are paths, read back with torch.load",
}
_FORBIDDEN_PREFIXES = ("hub_", "trackio_", "push_to_hub")
REPORT_TO_ALLOWED = {"none", "tensorboard"}

MODEL_KWARGS: dict[str, Any] = {
    "pretrained_model_name_or_path": str,
    "revision": str,
    "subfolder": str,
    "dtype": str,
    "torch_dtype": str,
    "attn_implementation": str,
    "low_cpu_mem_usage": bool,
    "ignore_mismatched_sizes": bool,
    "use_safetensors": bool,
    "variant": str,
    "local_files_only": bool,
    "problem_type": str,
    "use_cache": bool,
}
_MODEL_DROPOUT_RE = re.compile(r"^[a-z_]*dropout[a-z_]*$")
TOKENIZER_KWARGS: dict[str, Any] = {
    "pretrained_model_name_or_path": str,
    "revision": str,
    "subfolder": str,
    "use_fast": bool,
    "padding_side": str,
    "truncation_side": str,
    "model_max_length": int,
    "add_prefix_space": bool,
    "pad_token": str,
    "eos_token": str,
    "bos_token": str,
    "unk_token": str,
    "local_files_only": bool,
    "clean_up_tokenization_spaces": bool,
    "do_lower_case": bool,
}
# Path-like kwargs: from_pretrained joins them to the base's directory (or the
# hub cache's). A safe alphabet refuses `%` too: nothing decodes `%2e%2e`
# before it reaches a path, and a hub URL would, so percent-encoding is refused.
MAX_PATH_CHARS = 200
_PATH_PART_RE = re.compile(r"[A-Za-z0-9_.\-]+")
PATH_KWARGS: dict[str, bool] = {"subfolder": True, "revision": True, "variant": False}  # key -> may hold "/"
_PEFT_NOT_USER = {"auto_mapping", "peft_version", "revision", "megatron_config", "megatron_core"}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_STORE_URI_RE = re.compile(r"^store://base-models/[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")
CHOICES: dict[str, set[str]] = {
    "padding_side": {"left", "right"},
    "truncation_side": {"left", "right"},
    "dtype": {"auto", "float32", "float16", "bfloat16"},
    "torch_dtype": {"auto", "float32", "float16", "bfloat16"},
    "problem_type": {"single_label_classification", "multi_label_classification"},
    "attn_implementation": {"eager", "sdpa", "flash_attention_2"},
    # Optimizers built from torch alone: the others need packages the trainer does not ship.
    "optim": {"adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"},
    "train_sampling_strategy": {"random", "sequential", "group_by_length", "batch_rebalance"},
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Bound:
    """A numeric range: [low, high], (low, high] with low_open; `also` lists
    sentinel values accepted outside it (max_steps=-1: train by epochs)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()

    def describe(self) -> str:
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return text + "".join(f" or {_number(a)}" for a in self.also)

    def contains(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


_STEPS = Bound(0, 1_000_000, low_open=True)  # a float below 1 is a ratio of the total steps
_BATCH = Bound(1, 4096)
_FLAG = None  # booleans and enums: the type (and CHOICES) say it all

# The TrainingArguments fields a user may set, each with its range. Everything
# else TrainingArguments has is refused ("not in textft's allow-list"), so a
# field a new transformers release adds is not exposed until reviewed here.
# Names are transformers 5's (group_by_length became train_sampling_strategy,
# warmup_ratio a warmup_steps below 1).
TRAINER_ALLOWED: dict[str, Bound | None] = {
    "learning_rate": Bound(0, 1, low_open=True),
    "num_train_epochs": Bound(0, 10_000, low_open=True),
    "max_steps": Bound(1, 1_000_000, also=(-1,)),
    "per_device_train_batch_size": _BATCH,
    "per_device_eval_batch_size": _BATCH,
    "gradient_accumulation_steps": Bound(1, 1024),
    "eval_accumulation_steps": Bound(1, 1_000_000),
    "warmup_steps": Bound(0, 1_000_000),
    "weight_decay": Bound(0, 1),
    "lr_scheduler_type": _FLAG,
    "optim": _FLAG,
    "adam_beta1": Bound(0, 1, high_open=True),
    "adam_beta2": Bound(0, 1, high_open=True),
    "adam_epsilon": Bound(0, 1, low_open=True),
    "max_grad_norm": Bound(0, 1e6),
    "label_smoothing_factor": Bound(0, 1, high_open=True),
    "neftune_noise_alpha": Bound(0, 100, low_open=True),
    "seed": Bound(0, 2**32 - 1),
    "data_seed": Bound(0, 2**32 - 1),
    "logging_strategy": _FLAG,
    "logging_steps": _STEPS,
    "logging_first_step": _FLAG,
    "logging_nan_inf_filter": _FLAG,
    "eval_strategy": _FLAG,
    "eval_steps": _STEPS,
    "eval_delay": Bound(0, 1_000_000),
    "eval_on_start": _FLAG,
    "save_strategy": _FLAG,
    "save_steps": Bound(1, 1_000_000),  # every save is an upload to the store: no ratios, at most one per step
    "save_total_limit": Bound(1, 100),
    "save_only_model": _FLAG,
    "load_best_model_at_end": _FLAG,
    "metric_for_best_model": _FLAG,
    "greater_is_better": _FLAG,
    "fp16": _FLAG,
    "bf16": _FLAG,
    "fp16_full_eval": _FLAG,
    "bf16_full_eval": _FLAG,
    "tf32": _FLAG,
    "gradient_checkpointing": _FLAG,
    "torch_empty_cache_steps": Bound(1, 1_000_000),
    "dataloader_num_workers": Bound(0, 8),
    "dataloader_drop_last": _FLAG,
    "dataloader_pin_memory": _FLAG,
    "train_sampling_strategy": _FLAG,
    "full_determinism": _FLAG,
    "report_to": _FLAG,  # {none, tensorboard}: checked in validate
}
_NOT_ALLOWED = "not allowed: not in textft's allow-list of TrainingArguments fields"
MODEL_BOUNDS: dict[str, Bound | None] = {}
TOKENIZER_BOUNDS: dict[str, Bound | None] = {"model_max_length": Bound(1, 1_000_000)}
MAX_STRING_CHARS = 200  # metric names, tokens, revisions: short labels, never documents


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """Returns value converted to tp (JSON numbers arrive as floats), or raises
    TypeError with what was expected. Unknown complex types are accepted."""
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)):
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        enums = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # e.g. OptimizerNames | str: the str arm is for the enum's values
            return coerce(value, enums[0])
        errors = []
        for arm in typing.get_args(tp):
            try:
                return coerce(value, arm)
            except TypeError as e:
                errors.append(str(e))
        raise TypeError(" or ".join(dict.fromkeys(errors)))
    if tp is type(None):
        if value is None:
            return None
        raise TypeError("null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("a boolean")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [e.value for e in tp]
        if value in allowed:
            return value
        raise TypeError(f"one of {', '.join(map(str, allowed))}")
    if origin in (list, tuple, typing.Sequence, set) or tp in (list, tuple, set):
        if not isinstance(value, list):
            raise TypeError("a list")
        args = typing.get_args(tp)
        return [coerce(v, args[0]) for v in value] if args and args[0] is not Ellipsis else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError("an object")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"one of {typing.get_args(tp)}")
    return value


def _forbidden(key: str) -> str | None:
    if key in FORBIDDEN:
        return FORBIDDEN[key]
    if key.startswith(_FORBIDDEN_PREFIXES):
        return "hub access is not allowed from training configs"
    return None


@cache
def _dataclass_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


# transformers' lazy module is not safe to import from two threads at once
# (one sees it half set up: "cannot import name 'AutoModel'"), and requests,
# like warm_up, run on several threads: the first import happens under a lock.
_import_lock = threading.RLock()


def _classes() -> tuple[Any, Any]:
    """(TrainingArguments, LoraConfig), imported under the lock."""
    with _import_lock:
        from peft import LoraConfig
        from transformers import TrainingArguments

        return TrainingArguments, LoraConfig


def warm_up() -> None:
    """Imports what validating a request needs (transformers, peft: seconds of
    imports), so the first CreateModelVersion after a start does not pay for it."""
    try:
        with _import_lock:  # requests arriving meanwhile wait here, not in a half-done import
            _construct({}, {})  # imports both; the first TrainingArguments pulls in accelerate too
    except Exception:  # the request that needs them reports the problem
        log.exception("could not import transformers/peft ahead of the first request")


def trainer_fields() -> dict[str, Any]:
    return _dataclass_types(_classes()[0])


def lora_fields() -> dict[str, Any]:
    lora_config = _classes()[1]
    return {k: v for k, v in _dataclass_types(lora_config).items() if k not in _PEFT_NOT_USER}


def check_relative_path(value: str, path: str, nested: bool = True) -> list[FieldViolation]:
    """A path-like kwarg (subfolder, revision, variant): relative, no `.`/`..`
    component, no backslash or NUL, only [A-Za-z0-9_.-] (and `/` when nested),
    at most MAX_PATH_CHARS."""
    if len(value) > MAX_PATH_CHARS:
        return [FieldViolation(path, f"at most {MAX_PATH_CHARS} characters, got {len(value)}")]
    if value.startswith("/"):
        return [FieldViolation(path, "must be a relative path inside the base model, not an absolute one")]
    parts = value.split("/") if nested else [value]
    if not value or not all(_PATH_PART_RE.fullmatch(p) for p in parts):
        allowed = "letters, digits, _ . - and /" if nested else "letters, digits, _ . -"
        return [FieldViolation(path, f"may hold only {allowed} (no backslash, NUL, % or spaces), got {value[:80]!r}")]
    if any(p in {".", ".."} for p in parts):
        return [FieldViolation(path, "may not contain a . or .. component: it must stay inside the base model")]
    return []


def _check_dict(
    section: str,
    values: dict[str, Any],
    allowed: dict[str, Any],
    extra_ok: re.Pattern[str] | None = None,
    bounds: dict[str, Bound | None] | None = None,
    known: Sequence[str] = (),
) -> tuple[dict[str, Any], list[FieldViolation]]:
    """Checks one section's keys and values. `known`: keys the target accepts
    that are not in `allowed` (refused as not on the allow-list, not as unknown)."""
    out: dict[str, Any] = {}
    bad: list[FieldViolation] = []
    for key, value in values.items():
        path = f"{section}.{key}"
        why = _forbidden(key)
        if why:
            bad.append(FieldViolation(path, f"not allowed: {why}"))
            continue
        if key in known and key not in allowed:
            bad.append(FieldViolation(path, _NOT_ALLOWED))
            continue
        if key not in allowed and not (extra_ok and extra_ok.fullmatch(key)):
            near = [k for k in allowed if key.lower() in k.lower() or k.lower() in key.lower()][:3]
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            bad.append(FieldViolation(path, f"unknown key for {section}{hint}"))
            continue
        tp = allowed.get(key, float)
        try:
            value = coerce(value, tp)
        except TypeError as e:
            bad.append(FieldViolation(path, f"must be {e}, got {type(value).__name__} {value!r}"[:300]))
            continue
        if key in CHOICES and value not in CHOICES[key]:
            bad.append(FieldViolation(path, f"must be one of {', '.join(sorted(CHOICES[key]))}"))
            continue
        if isinstance(value, str):
            if key in PATH_KWARGS:
                if found := check_relative_path(value, path, PATH_KWARGS[key]):
                    bad += found
                    continue
            elif len(value) > MAX_STRING_CHARS and key != "pretrained_model_name_or_path":
                bad.append(FieldViolation(path, f"at most {MAX_STRING_CHARS} characters, got {len(value)}"))
                continue
        bound = (bounds or {}).get(key)
        if bound and isinstance(value, (int, float)) and not isinstance(value, bool) and not bound.contains(value):
            bad.append(FieldViolation(path, f"must be {bound.describe()}, got {value}"))
            continue
        out[key] = value
    return out, bad


def check_model_source(value: Any, path: str, allowed: Sequence[str] | None = None) -> list[FieldViolation]:
    """A hub id or store://base-models/<name>; with `allowed` (prefixes, "*"
    for any), one the operator allows (TEXTFT_BASE_MODELS_ALLOWED)."""
    if not isinstance(value, str) or not value:
        return [
            FieldViolation(
                path, "required: a hub model id (e.g. EleutherAI/gpt-neo-125m) or store://base-models/<name>"
            )
        ]
    if len(value) > MAX_PATH_CHARS:
        return [FieldViolation(path, f"at most {MAX_PATH_CHARS} characters, got {len(value)}")]
    if value.startswith("store://"):
        if not _STORE_URI_RE.fullmatch(value) or ".." in value.split("/"):
            return [FieldViolation(path, "store URIs have the form store://base-models/<name>")]
    elif not _HUB_ID_RE.fullmatch(value) or ".." in value:
        return [
            FieldViolation(
                path, "must be a hub model id like org/name or store://base-models/<name>; local paths are not accepted"
            )
        ]
    if allowed is not None and "*" not in allowed and not value.startswith(tuple(allowed)):
        listed = ", ".join(allowed) if allowed else "none"
        return [
            FieldViolation(
                path,
                f"{value} is not an allowed base model: the allowed prefixes are {listed} (TEXTFT_BASE_MODELS_ALLOWED)",
            )
        ]
    return []


def allowed_trainer_fields() -> dict[str, Any]:
    """TRAINER_ALLOWED's fields with their types from the installed TrainingArguments."""
    return {k: tp for k, tp in trainer_fields().items() if k in TRAINER_ALLOWED}


def validate(
    section_values: dict[str, dict[str, Any]], base_models_allowed: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Checks the merged (template + overrides) dictionaries; returns them with
    values coerced to the target types. Raises InvalidArgument listing every
    violation, each naming its field. base_models_allowed: prefixes a base
    model must start with ("*": any); None skips that check (a job re-reading
    a spec the service checked when it queued it)."""
    violations: list[FieldViolation] = []
    model, bad = _check_dict(
        "model_config", section_values.get("model_config", {}), MODEL_KWARGS, _MODEL_DROPOUT_RE, MODEL_BOUNDS
    )
    violations += bad
    if model.get("use_safetensors") is False:
        violations.append(
            FieldViolation(
                "model_config.use_safetensors",
                "not allowed: weights load from safetensors only (pickled weights can run code when loaded)",
            )
        )
    violations += check_model_source(
        model.get("pretrained_model_name_or_path"), "model_config.pretrained_model_name_or_path", base_models_allowed
    )
    tokenizer, bad = _check_dict(
        "tokenizer_config", section_values.get("tokenizer_config", {}), TOKENIZER_KWARGS, bounds=TOKENIZER_BOUNDS
    )
    violations += bad
    if "pretrained_model_name_or_path" in tokenizer:
        violations += check_model_source(
            tokenizer["pretrained_model_name_or_path"],
            "tokenizer_config.pretrained_model_name_or_path",
            base_models_allowed,
        )
    peft_values = dict(section_values.get("peft_config", {}))
    peft_type = peft_values.pop("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        violations.append(FieldViolation("peft_config.peft_type", "only LORA is supported"))
    peft, bad = _check_dict("peft_config", peft_values, lora_fields())
    violations += bad
    targets, to_save = peft.get("target_modules"), peft.get("modules_to_save")
    if isinstance(targets, list) and isinstance(to_save, list) and set(targets) & set(to_save):
        violations.append(
            FieldViolation(
                "peft_config.modules_to_save",
                f"{sorted(set(targets) & set(to_save))} are LoRA targets: listing them here trains them in full",
            )
        )
    for key in ("r", "lora_alpha"):
        if isinstance(peft.get(key), int) and peft[key] <= 0:
            violations.append(FieldViolation(f"peft_config.{key}", "must be positive"))
    trainer, bad = _check_dict(
        "trainer_config",
        section_values.get("trainer_config", {}),
        allowed_trainer_fields(),
        bounds=TRAINER_ALLOWED,
        known=tuple(trainer_fields()),
    )
    violations += bad
    report_to = trainer.get("report_to", "none")
    reports = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if any(r not in REPORT_TO_ALLOWED for r in reports):
        violations.append(
            FieldViolation("trainer_config.report_to", f"allowed: {', '.join(sorted(REPORT_TO_ALLOWED))}")
        )
    if trainer.get("save_only_model") and trainer.get("save_strategy", "no") != "no":
        violations.append(
            FieldViolation(
                "trainer_config.save_only_model",
                "checkpoints are kept in the store to resume interrupted runs; without optimizer and "
                "scheduler state they cannot be resumed from",
            )
        )
    if not violations:
        violations += _construct(trainer, peft)
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(
            f"invalid {first.field}: {first.description}{more}",
            reason="MODEL_TRAINING_INVALID_PARAMS",
            violations=violations,
        )
    return {
        "model_config": model,
        "peft_config": {"peft_type": "LORA", **peft},
        "tokenizer_config": tokenizer,
        "trainer_config": trainer,
    }


def _construct(trainer: dict[str, Any], peft: dict[str, Any]) -> list[FieldViolation]:
    """Builds the real TrainingArguments and LoraConfig once, so value checks
    that live in their __post_init__ (choices, combinations) run before queueing."""
    import tempfile

    training_arguments, lora_config = _classes()
    violations = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            training_arguments(output_dir=tmp, **trainer)
        except (ValueError, TypeError, KeyError, ImportError) as e:
            violations.append(FieldViolation("trainer_config", f"rejected by TrainingArguments: {e}"[:400]))
    try:
        lora_config(**peft)
    except (ValueError, TypeError) as e:
        violations.append(FieldViolation("peft_config", f"rejected by LoraConfig: {e}"[:400]))
    return violations


# Other names users bring for a key, e.g. Clarifai's template docs write
# {"pretrained_model_name": "EleutherAI/gpt-neo-2.7B"}: (section, alias) -> key.
ALIASES: dict[tuple[str, str], str] = {
    ("model_config", "pretrained_model_name"): "pretrained_model_name_or_path",
    ("tokenizer_config", "pretrained_model_name"): "pretrained_model_name_or_path",
}


def resolve_aliases(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Overrides with aliases renamed to their keys; an alias given together
    with its key is an InvalidArgument naming both."""
    out = {section: dict(values) for section, values in overrides.items()}
    violations = []
    for (section, alias), key in ALIASES.items():
        values = out.get(section, {})
        if alias not in values:
            continue
        if key in values:
            violations += [
                FieldViolation(f"{section}.{alias}", f"an alias of {section}.{key}: give one of them, not both"),
                FieldViolation(f"{section}.{key}", f"also given as {section}.{alias}"),
            ]
            continue
        values[key] = values.pop(alias)
    if violations:
        raise InvalidArgument(
            f"invalid {violations[0].field}: {violations[0].description}",
            reason="MODEL_TRAINING_INVALID_PARAMS",
            violations=violations,
        )
    return out


def merge(defaults: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Template defaults overridden key by key (a null value removes a default);
    aliases in the overrides count as their keys."""
    overrides = resolve_aliases(overrides)
    merged: dict[str, dict[str, Any]] = {}
    for section in ("model_config", "peft_config", "tokenizer_config", "trainer_config"):
        values = dict(defaults.get(section, {}))
        for key, value in overrides.get(section, {}).items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        merged[section] = values
    return merged
