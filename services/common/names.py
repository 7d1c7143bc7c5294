"""Resource names (AIP-122) and ids: parsed and checked in one place, so no id
with a path or control character ever reaches the store.

Every dataset and model belongs to an app, and its canonical name says which:
`apps/{app}/datasets/{dataset}`, `apps/{app}/models/{model}/versions/{version}`.
The default app's resources keep the short names (`datasets/{dataset}`), so
stores and clients from before apps stay valid. A resource's store prefix is
its name: app X's objects all live under `apps/X/`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textft.errors import InvalidArgument, NotFound

ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
DEFAULT_APP = "default"  # the same as schema.DEFAULT_APP (names must not import the schema)
# Matched with fullmatch: `$` would also accept a trailing newline.
_ID_RE = re.compile(ID_PATTERN)
_APP = rf"(?:apps/({ID_PATTERN})/)?"
_APP_RE = re.compile(rf"apps/({ID_PATTERN})")
_DATASET_RE = re.compile(rf"{_APP}datasets/({ID_PATTERN})")
_DATASET_VERSION_RE = re.compile(rf"{_APP}datasets/({ID_PATTERN})/versions/({ID_PATTERN})")
_MODEL_RE = re.compile(rf"{_APP}models/({ID_PATTERN})")
_MODEL_VERSION_RE = re.compile(rf"{_APP}models/({ID_PATTERN})/versions/({ID_PATTERN})")
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


def app_prefix(app: str) -> str:
    """What an app's resource names (and store keys) start with."""
    return "" if app == DEFAULT_APP else f"apps/{app}/"


@dataclass(frozen=True)
class AppName:
    app: str

    def __str__(self) -> str:
        return f"apps/{self.app}"


@dataclass(frozen=True)
class DatasetName:
    dataset: str
    app: str = DEFAULT_APP

    def __str__(self) -> str:
        return f"{app_prefix(self.app)}datasets/{self.dataset}"


@dataclass(frozen=True)
class DatasetVersionName:
    dataset: str
    version: str
    app: str = DEFAULT_APP

    @property
    def parent(self) -> DatasetName:
        return DatasetName(self.dataset, self.app)

    def __str__(self) -> str:
        return f"{self.parent}/versions/{self.version}"


@dataclass(frozen=True)
class ModelName:
    model: str
    app: str = DEFAULT_APP

    def __str__(self) -> str:
        return f"{app_prefix(self.app)}models/{self.model}"


@dataclass(frozen=True)
class ModelVersionName:
    model: str
    version: str
    app: str = DEFAULT_APP

    @property
    def parent(self) -> ModelName:
        return ModelName(self.model, self.app)

    def __str__(self) -> str:
        return f"{self.parent}/versions/{self.version}"


def _app(group: str | None) -> str:
    return group or DEFAULT_APP


def parse_app(value: str, field: str = "name") -> AppName:
    return AppName(_match(_APP_RE, value, field, "apps/{app}")[0])


def parse_parent_app(value: str, default: str, field: str = "parent") -> str:
    """The app a List or Create request's parent (`apps/{app}`) names; empty: `default` (the caller's)."""
    return parse_app(value, field).app if value else default


def parse_dataset(value: str, field: str = "name") -> DatasetName:
    app, dataset = _match(_DATASET_RE, value, field, "[apps/{app}/]datasets/{dataset}")
    return DatasetName(dataset, _app(app))


def parse_dataset_version(value: str, field: str = "name") -> DatasetVersionName:
    app, dataset, version = _match(
        _DATASET_VERSION_RE, value, field, "[apps/{app}/]datasets/{dataset}/versions/{version}"
    )
    return DatasetVersionName(dataset, version, _app(app))


def parse_model(value: str, field: str = "name") -> ModelName:
    app, model = _match(_MODEL_RE, value, field, "[apps/{app}/]models/{model}")
    return ModelName(model, _app(app))


def parse_model_version(value: str, field: str = "name") -> ModelVersionName:
    app, model, version = _match(_MODEL_VERSION_RE, value, field, "[apps/{app}/]models/{model}/versions/{version}")
    return ModelVersionName(model, version, _app(app))


def is_model_name(value: str) -> bool:
    """A model's name (not one of its versions'), in any app."""
    return _MODEL_RE.fullmatch(value or "") is not None


def parse_template(value: str, field: str = "template") -> str:
    return _match(_TEMPLATE_RE, value, field, "templates/{template}")[0]


def app_of(value: str) -> str | None:
    """The app a resource reference in a request means, for the access policy:
    `apps/{app}/...` that app; a default-app name (`datasets/...`, `models/...`)
    or a bare id (the Open Inference Protocol's model names) the default app;
    None for anything app-less (templates, empty) or not a name at all (the
    handler rejects it)."""
    if not value:
        return None
    if value.startswith("apps/"):
        app = value.split("/", 2)[1]
        return app if _ID_RE.fullmatch(app) else None
    if value.startswith(("datasets/", "models/")) or _ID_RE.fullmatch(value):
        return DEFAULT_APP
    return None


_KINDS = (  # most specific first
    (re.compile(rf"{_APP}datasets/{ID_PATTERN}/versions/{ID_PATTERN}"), "dataset version", "DATASET_VERSION"),
    (re.compile(rf"{_APP}datasets/{ID_PATTERN}"), "dataset", "DATASET"),
    (re.compile(rf"{_APP}models/{ID_PATTERN}/versions/{ID_PATTERN}/evaluations/.*"), "evaluation", "EVALUATION"),
    (re.compile(rf"{_APP}models/{ID_PATTERN}/versions/{ID_PATTERN}"), "model version", "MODEL_VERSION"),
    (re.compile(rf"{_APP}models/{ID_PATTERN}"), "model", "MODEL"),
)


def not_found(value: str) -> NotFound:
    """The answer for a resource that does not exist, in the words the
    handlers use: the access policy answers this for another app's resource,
    so a caller cannot tell one that exists there from one that does not."""
    shown = value if len(value) <= 200 else value[:200] + "…"
    for pattern, kind, reason in _KINDS:
        if pattern.fullmatch(value):
            return NotFound(f"{kind} {shown} not found", reason=f"{reason}_NOT_FOUND")
    app = app_of(value)
    if value.startswith("apps/") or app is None:
        return NotFound(f"app apps/{app or shown} not found", reason="APP_NOT_FOUND")
    return NotFound(f"model {shown} not found", reason="MODEL_NOT_FOUND")  # a bare OIP model id


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
