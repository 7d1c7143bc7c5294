"""Resource names (AIP-122) and ids: parsed and checked in one place, so no id
with a path or control character ever reaches the store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textft.errors import InvalidArgument

ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
# Matched with fullmatch: `$` would also accept a trailing newline.
_ID_RE = re.compile(ID_PATTERN)
_DATASET_RE = re.compile(rf"datasets/({ID_PATTERN})")
_DATASET_VERSION_RE = re.compile(rf"datasets/({ID_PATTERN})/versions/({ID_PATTERN})")
_MODEL_RE = re.compile(rf"models/({ID_PATTERN})")
_MODEL_VERSION_RE = re.compile(rf"models/({ID_PATTERN})/versions/({ID_PATTERN})")
_TEMPLATE_RE = re.compile(rf"templates/({ID_PATTERN})")
_PAGE_TOKEN_RE = re.compile(r"o(0|[1-9][0-9]{0,17})")  # ASCII digits only; int() takes others


def check_id(value: str, field: str) -> str:
    if not _ID_RE.fullmatch(value or ""):
        shown = value if len(value) <= 80 else value[:80] + "…"
        raise InvalidArgument.for_field(
            field,
            f"{shown!r} is not a valid id: use 1-63 lowercase letters, digits and '-', starting with a letter or digit",
            reason="INVALID_ID",
        )
    return value


def _match(pattern: re.Pattern[str], value: str, field: str, form: str) -> tuple[str, ...]:
    m = pattern.fullmatch(value or "")
    if not m:
        shown = value if len(value) <= 120 else value[:120] + "…"
        raise InvalidArgument.for_field(field, f"{shown!r} is not a name of the form {form}", reason="INVALID_NAME")
    return m.groups()


@dataclass(frozen=True)
class DatasetVersionName:
    dataset: str
    version: str

    def __str__(self) -> str:
        return f"datasets/{self.dataset}/versions/{self.version}"


@dataclass(frozen=True)
class ModelVersionName:
    model: str
    version: str

    def __str__(self) -> str:
        return f"models/{self.model}/versions/{self.version}"


def parse_dataset(value: str, field: str = "name") -> str:
    return _match(_DATASET_RE, value, field, "datasets/{dataset}")[0]


def parse_dataset_version(value: str, field: str = "name") -> DatasetVersionName:
    dataset, version = _match(_DATASET_VERSION_RE, value, field, "datasets/{dataset}/versions/{version}")
    return DatasetVersionName(dataset, version)


def parse_model(value: str, field: str = "name") -> str:
    return _match(_MODEL_RE, value, field, "models/{model}")[0]


def parse_model_version(value: str, field: str = "name") -> ModelVersionName:
    model, version = _match(_MODEL_VERSION_RE, value, field, "models/{model}/versions/{version}")
    return ModelVersionName(model, version)


def parse_template(value: str, field: str = "template") -> str:
    return _match(_TEMPLATE_RE, value, field, "templates/{template}")[0]


def version_sort_key(version_id: str) -> tuple[int, str]:
    """v1 < v2 < v10; other ids after, lexically."""
    if version_id.startswith("v") and version_id[1:].isdigit():
        return (int(version_id[1:]), "")
    return (1 << 62, version_id)


def paginate(items: list, page_size: int, page_token: str, field_prefix: str = "") -> tuple[list, str]:
    """Offset pagination with an opaque-enough token; page_size 0 means 50."""
    if page_size < 0:
        raise InvalidArgument.for_field(f"{field_prefix}page_size", "must be 0 (default) or positive")
    size = min(page_size or 50, 1000)
    start = 0
    if page_token:
        if not _PAGE_TOKEN_RE.fullmatch(page_token):
            raise InvalidArgument.for_field(f"{field_prefix}page_token", "not a token returned by this method")
        start = int(page_token[1:])
    page = items[start : start + size]
    nxt = f"o{start + size}" if start + size < len(items) else ""
    return page, nxt
