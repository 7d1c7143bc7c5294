"""How a job reports to its launcher: textft.internal.v1.JobEvent messages,
one per stdout line (EVENT_PREFIX, then the event as proto3 JSON). Anything
else a library prints on stdout is not an event and is skipped."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import json_format

from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, trainer_pb2

EVENT_PREFIX = "TEXTFT_EVENT "


def encode(event: job_pb2.JobEvent) -> str:
    return EVENT_PREFIX + json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True) + "\n"


def parse_events(lines: Iterable[str]) -> Iterator[job_pb2.JobEvent]:
    """The events among a job's stdout lines; other lines and broken ones are skipped."""
    for line in lines:
        if line.startswith(EVENT_PREFIX):
            try:
                yield json_format.Parse(line[len(EVENT_PREFIX) :], job_pb2.JobEvent(), ignore_unknown_fields=True)
            except json_format.ParseError:
                continue


class Emitter:
    """Writes events for the launcher; never raises (a closed pipe must not kill
    training). Silent on ranks other than 0, so a DDP job reports once."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled

    def emit(self, event: job_pb2.JobEvent) -> None:
        if not self.enabled:
            return
        try:
            self.stream.write(encode(event))
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def state(self, state: trainer_pb2.ModelVersion.State) -> None:
        self.emit(job_pb2.JobEvent(state=state))

    def log(self, message: str) -> None:
        self.emit(job_pb2.JobEvent(log=message))

    def failure(self, reason: str, message: str, field: str = "", rows: list[int] | None = None) -> None:
        self.emit(job_pb2.JobEvent(failure=common_pb2.Failure(reason=reason, message=message, field=field, rows=rows)))
