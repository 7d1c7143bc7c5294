"""Argument handling shared by the command groups: the usage error main() turns
into exit status 2, resource names in their short forms, JSON and `--set` values."""

from __future__ import annotations

import json
from typing import Any

from ..client import TASKS

CONFIG_SECTIONS = ("model_config", "peft_config", "tokenizer_config", "trainer_config")
TASK_CHOICES = sorted(TASKS)


class UsageError(Exception):
    """A bad command line argument found after parsing (exit status 2)."""


def dataset_version_name(value: str) -> str:
    """`datasets/d/versions/v`, also accepted as `d/versions/v` (the client adds the app)."""
    return value if value.startswith(("datasets/", "apps/")) else f"datasets/{value}"


def model_version_name(value: str) -> str:
    return value if value.startswith(("models/", "apps/")) else f"models/{value}"


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_set(configs: dict[str, dict[str, Any]], assignment: str) -> None:
    """Applies one `section.key[.sub]=value` to configs (section: model_config,
    peft_config, tokenizer_config, trainer_config, or without `_config`)."""
    path, sep, raw = assignment.partition("=")
    parts = path.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UsageError(f"--set expects section.key=value, got {assignment!r}")
    section = parts[0] if parts[0].endswith("_config") else parts[0] + "_config"
    if section not in CONFIG_SECTIONS:
        raise UsageError(f"--set section must be one of {', '.join(CONFIG_SECTIONS)}, got {parts[0]!r}")
    target = configs.setdefault(section, {})
    for key in parts[1:-1]:
        nested = target.setdefault(key, {})
        if not isinstance(nested, dict):
            raise UsageError(f"--set {path}: {key} is not an object")
        target = nested
    target[parts[-1]] = _parse_value(raw)
