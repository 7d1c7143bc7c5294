"""Cell values: bad-byte detection and the coercion of label, scalar,
metadata and split cells into a normalised row's values."""

from __future__ import annotations

import json
from typing import Any

SPLITS = {"train": "train", "training": "train", "eval": "eval", "validation": "eval", "valid": "eval", "val": "eval"}
SPLITS.update({"test": "eval", "dev": "eval"})


def bad_unicode(value: str) -> int:
    """Index of the first character that is not valid UTF-8 (a surrogate), or -1."""
    try:
        value.encode("utf-8")
        return -1
    except UnicodeEncodeError as e:
        return e.start


def bad_unicode_any(value: Any) -> bool:
    if isinstance(value, str):
        return bad_unicode(value) >= 0
    if isinstance(value, dict):
        return any(bad_unicode_any(k) or bad_unicode_any(v) for k, v in value.items())
    if isinstance(value, list):
        return any(bad_unicode_any(v) for v in value)
    return False


def parse_labels(value: Any, comma: bool = False) -> list[str]:
    """A label cell: a JSON list (in a string or not), else `a|b` (`a,b` for
    Clarifai's concepts columns). Raises ValueError for a malformed list."""
    if type(value) is str:  # the common case, a single label: no list to build and check
        text = value.strip()
        if not text.startswith("[") and ("," if comma else "|") not in text:
            return [text] if text else []
    if value is None:
        return []
    if isinstance(value, list):
        items = value
    elif isinstance(value, bool):
        items = [str(value).lower()]
    elif isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{text[:80]!r} looks like a JSON list but is not valid JSON") from None
            if not isinstance(items, list):
                raise ValueError("not a JSON list")
        else:
            items = text.split("," if comma else "|")
    else:
        raise ValueError(f"labels must be a string or a list, got {type(value).__name__}")
    labels: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"each label must be a string, got {json.dumps(item)[:80]}")
        label = str(item).strip()
        if label and label not in labels:
            labels.append(label)
    return labels


def scalar(value: Any) -> str | None:
    """A cell as a string; None for values that are not scalars."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return None


def parse_metadata(value: Any) -> dict[str, Any]:
    """A metadata cell: an object, or a JSON object in a string (Clarifai's CSVs
    sometimes use single quotes). Raises ValueError."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = json.loads(value.replace("'", '"'))
            except json.JSONDecodeError:
                raise ValueError("metadata is not valid JSON") from None
        if isinstance(parsed, dict):
            if bad_unicode_any(parsed):  # a \ud800-style escape: not text, and not storable as UTF-8
                raise ValueError("metadata holds an escaped lone surrogate (\\ud800-\\udfff), which is not text")
            return parsed
    raise ValueError("metadata must be a JSON object")
