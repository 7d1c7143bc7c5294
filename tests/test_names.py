"""Ids, resource names (AIP-122) and pagination."""

from __future__ import annotations

import pytest

from textft.errors import InvalidArgument
from textft_services.common import names

pytestmark = pytest.mark.unit

VALID_IDS = ["a", "0", "reviews", "imdb-2024", "a" * 63, "x-", "v10"]
INVALID_IDS = [
    "",
    "-leading-dash",
    "Upper",
    "UPPER",
    "a" * 64,
    "../etc",
    "a/b",
    "a.b",
    "a_b",
    "a b",
    "tab\t",
    "new\nline",
    "trailing\n",
    "nul\x00",
    "esc\x1b",
    "é",
    "ａ",  # fullwidth a
]


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_ids(value: str) -> None:
    assert names.check_id(value, "dataset_id") == value


@pytest.mark.parametrize("value", INVALID_IDS, ids=repr)
def test_invalid_ids_name_the_field(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.check_id(value, "dataset_id")
    error = info.value
    assert [v.field for v in error.violations] == ["dataset_id"]
    assert error.reason == "INVALID_ID"


def test_long_invalid_id_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidArgument) as info:
        names.check_id("X" * 10_000, "model_id")
    assert len(info.value.message) < 400


PARSERS = [
    (names.parse_dataset, "datasets/reviews", names.DatasetName("reviews")),
    (names.parse_dataset_version, "datasets/reviews/versions/v2", names.DatasetVersionName("reviews", "v2")),
    (names.parse_model, "models/sentiment", names.ModelName("sentiment")),
    (names.parse_model_version, "models/sentiment/versions/v1", names.ModelVersionName("sentiment", "v1")),
    (names.parse_dataset, "apps/team-a/datasets/reviews", names.DatasetName("reviews", "team-a")),
    (
        names.parse_dataset_version,
        "apps/team-a/datasets/reviews/versions/v2",
        names.DatasetVersionName("reviews", "v2", "team-a"),
    ),
    (names.parse_model, "apps/team-a/models/sentiment", names.ModelName("sentiment", "team-a")),
    (
        names.parse_model_version,
        "apps/team-a/models/sentiment/versions/v1",
        names.ModelVersionName("sentiment", "v1", "team-a"),
    ),
    (names.parse_app, "apps/team-a", names.AppName("team-a")),
]


@pytest.mark.parametrize(("parse", "value", "expected"), PARSERS, ids=lambda p: getattr(p, "__name__", None))
def test_valid_names(parse, value, expected) -> None:
    parsed = parse(value, "name")
    assert parsed == expected
    assert str(parsed) == value  # canonical: the default app keeps the short names


def test_template_names() -> None:
    assert names.parse_template("templates/gpt-neo-125m-lora") == "gpt-neo-125m-lora"


def test_parents_and_apps_of_references() -> None:
    assert names.parse_parent_app("", "team-b") == "team-b"  # empty: the caller's app
    assert names.parse_parent_app("apps/team-a", "team-b") == "team-a"
    assert names.DatasetVersionName("d", "v1", "team-a").parent == names.DatasetName("d", "team-a")
    assert names.app_of("apps/team-a/models/m/versions/v1") == "team-a"
    assert names.app_of("models/m/versions/v1") == names.DEFAULT_APP
    assert names.app_of("m") == names.DEFAULT_APP  # an Open Inference Protocol model id
    assert names.app_of("templates/t") is None
    assert names.app_of("") is None
    assert names.app_of("apps/../x") is None


def test_not_found_speaks_as_the_handlers_do() -> None:
    cases = {
        "apps/a/datasets/d": ("dataset", "DATASET_NOT_FOUND"),
        "apps/a/datasets/d/versions/v1": ("dataset version", "DATASET_VERSION_NOT_FOUND"),
        "models/m": ("model", "MODEL_NOT_FOUND"),
        "apps/a/models/m/versions/v1": ("model version", "MODEL_VERSION_NOT_FOUND"),
        "apps/a/models/m/versions/v1/evaluations/e1": ("evaluation", "EVALUATION_NOT_FOUND"),
        "apps/a": ("app", "APP_NOT_FOUND"),
    }
    for name, (kind, reason) in cases.items():
        error = names.not_found(name)
        assert (error.message, error.reason) == (f"{kind} {name} not found", reason)


INVALID_NAMES = {
    names.parse_dataset: [
        "",
        "reviews",
        "datasets/",
        "datasets/Reviews",
        "datasets/../secrets",
        "datasets/a/../b",
        "datasets/a/",
        "/datasets/a",
        "datasets/a\n",
        "datasets/a\x00",
        "models/a",
        "datasets/" + "a" * 64,
        "datasets/a/versions/v1",
    ],
    names.parse_dataset_version: [
        "datasets/a",
        "datasets/a/versions/",
        "datasets/a/versions/V1",
        "datasets/a/versions/../../x",
        "datasets/a/versions/v1/",
        "datasets/a/versions/v1\n",
        "datasets/a/other/v1",
    ],
    names.parse_model: [
        "models/",
        "models/A",
        "models/a/b",
        "models/a\n",
        "datasets/a",
        "apps/models/a",
        "apps/A/models/a",
    ],
    names.parse_model_version: ["models/a/versions/", "models/a/versions/v1\n", "models/a/versions/v.1", "models/a"],
    names.parse_template: ["templates/", "templates/../x", "templates/a\n", "template/a"],
}


@pytest.mark.parametrize(
    ("parse", "value"),
    [(parse, value) for parse, values in INVALID_NAMES.items() for value in values],
    ids=lambda p: p.__name__ if callable(p) else repr(p),
)
def test_invalid_names_name_the_field(parse, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(value, "request.parent")
    error = info.value
    assert [v.field for v in error.violations] == ["request.parent"]
    assert error.reason == "INVALID_NAME"


def test_default_field_names() -> None:
    with pytest.raises(InvalidArgument) as info:
        names.parse_dataset("nope")
    assert info.value.violations[0].field == "name"
    with pytest.raises(InvalidArgument) as info:
        names.parse_template("nope")
    assert info.value.violations[0].field == "template"


def test_version_sort_key() -> None:
    assert sorted(["v10", "v2", "v1", "zeta", "alpha"], key=names.version_sort_key) == [
        "v1",
        "v2",
        "v10",
        "alpha",
        "zeta",
    ]


ITEMS = list(range(123))


def test_paginate_walks_every_item_once() -> None:
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page, token = names.paginate(ITEMS, 50, token)
        seen += page
        pages += 1
        if not token:
            break
    assert seen == ITEMS
    assert pages == 3


def test_paginate_sizes() -> None:
    page, token = names.paginate(ITEMS, 0, "")  # 0 means the default, 50
    assert page == ITEMS[:50]
    assert token
    page, token = names.paginate(ITEMS, 123, "")
    assert page == ITEMS
    assert token == ""  # an exact fit leaves no next page
    page, token = names.paginate(list(range(5000)), 10_000, "")
    assert len(page) == 1000  # capped
    page, token = names.paginate([], 10, "")
    assert (page, token) == ([], "")
    first, token = names.paginate(ITEMS, 7, "")
    second, _ = names.paginate(ITEMS, 7, token)
    assert first == ITEMS[:7]
    assert second == ITEMS[7:14]


def test_paginate_token_past_the_end_is_an_empty_page() -> None:
    _, token = names.paginate(ITEMS, 100, "")
    page, nxt = names.paginate(ITEMS[:10], 100, token)  # the list shrank meanwhile
    assert (page, nxt) == ([], "")


def test_paginate_negative_page_size() -> None:
    with pytest.raises(InvalidArgument) as info:
        names.paginate(ITEMS, -1, "", field_prefix="request.")
    assert info.value.violations[0].field == "request.page_size"


@pytest.mark.parametrize(
    "token",
    ["x", "o", "o-1", "o+1", "o01", "o1.5", "o 1", "1", "o1\n", "o²", "o١٢", "o" + "9" * 5000, "../o1"],
    ids=lambda t: repr(t)[:20],
)
def test_paginate_bad_tokens(token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.paginate(ITEMS, 10, token)
    assert [v.field for v in info.value.violations] == ["page_token"]
