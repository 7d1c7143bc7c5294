"""Protobuf helpers shared by the services' store records (JSON with proto field names)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, timestamp_pb2


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def to_dict(message: Any) -> dict[str, Any]:
    """A message as the JSON dict stored in the bucket (field names as in the proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
