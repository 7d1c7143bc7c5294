"""What the trainer keeps of a model version while it lives: the store
prefixes of models and versions, and the live Run (record, events, watchers)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from textft.v1 import trainer_pb2

from ..common import names, schema

MV = trainer_pb2.ModelVersion
FINAL = {MV.STATE_READY, MV.STATE_FAILED, MV.STATE_CANCELLED}


def model_prefix(model: names.ModelName) -> str:
    """A model's store prefix is its name (apps/{app}/models/{model}, models/{model} in the default app)."""
    return str(model)


def version_prefix(name: names.ModelVersionName) -> str:
    return str(name)


@dataclass
class Run:
    """A live training run: its current record, events, and watchers' condition.

    Watchers see events[:published]: an event that is persisted is published
    once its write was attempted, so a watcher that sees the final state finds
    it in the store too (unless the store is down: then the run is dirty and
    the flusher writes it when the store returns)."""

    version: trainer_pb2.ModelVersion
    events: list[trainer_pb2.ModelVersionEvent] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    handle: Any = None
    cancel_requested: bool = False
    published: int = -1
    # Store writes of this run, one at a time, each with the newest snapshot.
    persist_lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = False  # memory is ahead of the store (a write failed)
    latest_ready_pending: bool = False  # model.json's latest_ready_version still to be written
    failed_writes: int = 0
    app: str = schema.DEFAULT_APP  # whose quota the run counts against
    time_limited: bool = False  # stopped for running past TEXTFT_TRAINER_JOB_MAX_SECONDS
    lease_lost: bool = False  # another replica took the job over: this one stops, writing nothing
    claimed: bool = False  # this replica holds its job's lease (else: queued here, not yet claimed)

    def __post_init__(self) -> None:
        if self.published < 0:
            self.published = len(self.events)

    @property
    def final(self) -> bool:
        return self.version.state in FINAL
