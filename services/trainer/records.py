"""The trainer's records: where models and versions live in the store, the
live Run of a version this replica holds, and reading and writing the records
(model.json, version.json, events.jsonl).

Store layout:
    models/{model}/model.json
    models/{model}/versions/{version}/version.json   the ModelVersion (proto JSON), rewritten on change
    models/{model}/versions/{version}/job.json       what the job runs (TrainingJobSpec)
    models/{model}/versions/{version}/events.jsonl   the run's events
    models/{model}/versions/{version}/metrics.json   evaluation (+ "evaluations": per dataset version)
    models/{model}/versions/{version}/adapter/       PEFT save_pretrained layout + tokenizer + textft.json
    models/{model}/versions/{version}/checkpoints/step-{n}/   Trainer checkpoints (see checkpoints.py)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from textft.errors import NotFound
from textft.v1 import trainer_pb2

from ..common import names, schema
from ..common.protojson import to_dict
from ..common.store import ObjectStore

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


class Records:
    """Models and versions as the store holds them, and the runs this replica
    holds in memory (the truth for a live run, ahead of the store while the
    store is unavailable)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.runs: dict[str, Run] = {}
        self.lock = threading.Lock()  # guards runs, and each read-modify-write of a model.json

    # ---- models ----
    def get_model(self, name: str, field_name: str = "name") -> trainer_pb2.Model:
        model = names.parse_model(name, field_name)
        try:
            data = self.store.get_json(f"{model_prefix(model)}/model.json")
        except NotFound:
            raise NotFound(f"model {name} not found", reason="MODEL_NOT_FOUND") from None
        return json_format.ParseDict(data, trainer_pb2.Model(), ignore_unknown_fields=True)

    def list_models(self, app: str = schema.DEFAULT_APP) -> list[trainer_pb2.Model]:
        root = names.app_prefix(app) + "models/"
        keys = [k for k in self.store.list(root) if k.count("/", len(root)) == 1 and k.endswith("/model.json")]
        return [
            json_format.ParseDict(self.store.get_json(k), trainer_pb2.Model(), ignore_unknown_fields=True) for k in keys
        ]

    def write_latest_ready(self, version_name: str) -> None:
        """Sets the model's latest_ready_version; raises when the store is unavailable."""
        model_name = version_name.rsplit("/versions/", 1)[0]
        with self.lock:
            try:
                model = self.get_model(model_name)
            except NotFound:
                return
            model.latest_ready_version = version_name
            self.store.put_json(f"{model_name}/model.json", to_dict(model))

    # ---- versions ----
    def load_version(self, key: str) -> trainer_pb2.ModelVersion:
        return json_format.ParseDict(self.store.get_json(key), trainer_pb2.ModelVersion(), ignore_unknown_fields=True)

    def save_version(self, version: trainer_pb2.ModelVersion) -> None:
        name = names.parse_model_version(version.name)
        self.store.put_json(f"{version_prefix(name)}/version.json", to_dict(version))

    def get_version(self, name: str, field_name: str = "name") -> trainer_pb2.ModelVersion:
        parsed = names.parse_model_version(name, field_name)
        run = self.runs.get(str(parsed))
        # A live run from memory; a finished one from the store (an evaluation on
        # another replica may have added to it), unless the store is behind.
        if run is not None and (not run.final or run.dirty):
            with run.cond:
                return trainer_pb2.ModelVersion().FromString(run.version.SerializeToString())
        try:
            return self.load_version(f"{version_prefix(parsed)}/version.json")
        except NotFound:
            raise NotFound(f"model version {name} not found", reason="MODEL_VERSION_NOT_FOUND") from None

    def list_versions(self, parent: str) -> list[trainer_pb2.ModelVersion]:
        model = self.get_model(parent, "parent")
        prefix = model.name + "/versions/"
        keys = [k for k in self.store.list(prefix) if k.endswith("/version.json") and k.count("/", len(prefix)) == 1]
        versions = [self.get_version(k[: -len("/version.json")]) for k in keys]
        return sorted(versions, key=lambda v: names.version_sort_key(v.name.rsplit("/", 1)[1]), reverse=True)

    def stored_events(self, prefix: str) -> list[trainer_pb2.ModelVersionEvent]:
        try:
            data = self.store.get_bytes(f"{prefix}/events.jsonl").decode()
        except NotFound:
            return []
        events = [
            json_format.ParseDict(json.loads(line), trainer_pb2.ModelVersionEvent(), ignore_unknown_fields=True)
            for line in data.splitlines()
            if line.strip()
        ]
        for i, event in enumerate(events):  # contiguous, whatever a crash left unpersisted
            event.sequence = i
        return events

    def stored_run(self, name: str) -> Run:
        """A version no replica holds, from its record and events in the store, now held here."""
        version = self.load_version(f"{name}/version.json")
        run = Run(version, events=self.stored_events(version_prefix(names.parse_model_version(name))))
        with self.lock:
            self.runs[name] = run
        return run

    def forget(self, name: str) -> None:
        """Drops the copy of a run queued here that another replica has claimed."""
        with self.lock:
            run = self.runs.get(name)
            if run is not None and not run.claimed and not run.final:
                self.runs.pop(name)
