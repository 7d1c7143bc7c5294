"""What every command group prints with: JSON of protobuf messages, aligned
tables, names of enum values, times, durations, sizes and metrics."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ..v1 import common_pb2, trainer_pb2


def dump(value: Message | dict[str, Any] | list[Any]) -> str:
    if isinstance(value, Message):
        return json_format.MessageToJson(value, preserving_proto_field_name=True, indent=2)
    return json.dumps(value, indent=2, default=str)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Message | dict[str, Any] | list[Any]) -> None:
    print(dump(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def show(name: str, fields: Sequence[tuple[str, object]], out: IO[str] | None = None) -> None:
    """A resource as `get` prints it: its name, then a `label  value` line for
    each field that is set (None or ""), aligned on the longest label."""
    out = out or sys.stdout
    width = max((len(label) for label, _ in fields), default=0)
    out.write(f"{name}\n")
    for label, value in fields:
        if value is not None and value != "":
            out.write(f"  {label.ljust(width)}  {value}\n")


def task_name(task: int) -> str:
    return {
        common_pb2.TASK_TEXT_CLASSIFICATION: "classification",
        common_pb2.TASK_TEXT_GENERATION: "generation",
    }.get(task, "unspecified")


def state_name(state: int) -> str:
    return trainer_pb2.ModelVersion.State.Name(state).removeprefix("STATE_")


def format_time(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    return getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def metrics_text(values: dict[str, float] | Any) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in sorted(dict(values).items()))


def all_pages(fetch: Callable[[str], Any], field: str) -> tuple[list[Any], Any]:
    """Every item of a paged List call, for the tables that show them all."""
    items: list[Any] = []
    token = ""
    while True:
        page = fetch(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items, page


def list_all(
    fetch: Callable[[str], Any],
    field: str,
    as_json: bool,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[object]],
) -> None:
    """A `list` command: every item of a paged List call (fetch(page_token)),
    as JSON under `field` or as a table of row(item)."""
    items, _ = all_pages(fetch, field)
    if as_json:
        print_json({field: [to_dict(item) for item in items]})
    else:
        table(headers, (row(item) for item in items))


def next_page_hint(command: str, name: str, token: str) -> None:
    if token:
        sys.stderr.write(f"more: textft {command} {name} --page-token {token}\n")
