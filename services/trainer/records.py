"""The trainer's records: models, model versions and their events in the
metadata database (services/common/schema.py), the live Run of a version this
replica holds, and the store layout of a version's artifacts.

Every replica reads the same rows: a finished version, a listing, the events
of a run another replica owns. The database being away is a hard failure
(UNAVAILABLE); the store being away touches no record, only artifacts.

Store layout (artifacts only):
    models/{model}/versions/{version}/job.json       what the job runs (TrainingJobSpec)
    models/{model}/versions/{version}/metrics.json   evaluation (+ "evaluations": per dataset version)
    models/{model}/versions/{version}/evaluations/{evaluation}/evaluation.json   (evaluations.py)
    models/{model}/versions/{version}/adapter/       PEFT save_pretrained layout + tokenizer + textft.json
    models/{model}/versions/{version}/checkpoints/step-{n}/   Trainer checkpoints (see checkpoints.py)
(apps/{app}/models/... outside the default app). Stores from before this
layout also hold model.json, version.json and events.jsonl: import_store()
copies them into the database once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format

from textft.errors import AlreadyExists, NotFound, Unavailable
from textft.v1 import trainer_pb2

from ..common import names, schema
from ..common.db import Database
from ..common.protojson import to_dict
from ..common.store import ObjectStore

log = logging.getLogger("textft.trainer")
MV = trainer_pb2.ModelVersion
FINAL = {MV.STATE_READY, MV.STATE_FAILED, MV.STATE_CANCELLED}
# A one-time flag in id_counters: the store's records were imported (import_store).
IMPORT_KIND, IMPORT_PARENT = "store_import", "trainer_records"
IMPORT_LOCK = 0x7465787466740003  # pg_advisory_xact_lock key: replicas starting together import once


def model_prefix(model: names.ModelName) -> str:
    """A model's store prefix is its name (apps/{app}/models/{model}, models/{model} in the default app)."""
    return str(model)


def version_prefix(name: names.ModelVersionName) -> str:
    return str(name)


@contextmanager
def _database() -> Iterator[None]:
    """The database away (connection refused, dropped, timed out) is UNAVAILABLE, retryable."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        log.warning("metadata database unavailable: %s", type(exc.orig).__name__ if exc.orig else exc)
        raise Unavailable("the metadata database is unavailable; retry later") from None


def _parse(message: Any, record: str) -> Any:
    return json_format.Parse(record, message, ignore_unknown_fields=True)


@dataclass
class Run:
    """A live training run: its current record, events, and watchers' condition.

    Watchers see events[:published]: an event that is persisted is published
    once its write was attempted, so a watcher that sees the final state finds
    it in the database too (unless the database is down: then the run is dirty
    and the flusher writes it when the database returns)."""

    version: trainer_pb2.ModelVersion
    events: list[trainer_pb2.ModelVersionEvent] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    handle: Any = None
    cancel_requested: bool = False
    published: int = -1
    # Database writes of this run, one at a time, each with the newest snapshot.
    persist_lock: threading.Lock = field(default_factory=threading.Lock)
    stored: int = -1  # events[:stored] are in the database
    dirty: bool = False  # memory is ahead of the database (a write failed)
    latest_ready_pending: bool = False  # the model's latest_ready_version still to be written
    failed_writes: int = 0
    app: str = schema.DEFAULT_APP  # whose quota the run counts against
    time_limited: bool = False  # stopped for running past TEXTFT_TRAINER_JOB_MAX_SECONDS
    lease_lost: bool = False  # another replica took the job over: this one stops, writing nothing
    claimed: bool = False  # this replica holds its job's lease (else: queued here, not yet claimed)

    def __post_init__(self) -> None:
        if self.published < 0:
            self.published = len(self.events)
        if self.stored < 0:
            self.stored = len(self.events)

    @property
    def final(self) -> bool:
        return self.version.state in FINAL


class Records:
    """Models, versions and events as the database holds them, and the runs
    this replica holds in memory (the truth for a live run, ahead of the
    database between writes)."""

    def __init__(self, store: ObjectStore, database: Database) -> None:
        self.store = store
        self.db = database
        self.runs: dict[str, Run] = {}
        self.lock = threading.Lock()  # guards runs

    # ---- models ----
    def create_model(self, model: trainer_pb2.Model) -> None:
        parsed = names.parse_model(model.name)
        t = schema.models
        with _database():
            try:
                with self.db.write() as conn:
                    conn.execute(
                        t.insert().values(name=model.name, app=parsed.app, record=_json(model), created_at=time.time())
                    )
            except sa.exc.IntegrityError:
                raise AlreadyExists(f"model {model.name} already exists", reason="MODEL_EXISTS") from None

    def get_model(self, name: str, field_name: str = "name") -> trainer_pb2.Model:
        model = str(names.parse_model(name, field_name))
        t = schema.models
        with _database(), self.db.read() as conn:
            record = conn.execute(sa.select(t.c.record).where(t.c.name == model)).scalar_one_or_none()
        if record is None:
            raise NotFound(f"model {name} not found", reason="MODEL_NOT_FOUND")
        return _parse(trainer_pb2.Model(), record)

    def list_models(self, app: str = schema.DEFAULT_APP) -> list[trainer_pb2.Model]:
        t = schema.models
        with _database(), self.db.read() as conn:
            rows = conn.execute(sa.select(t.c.record).where(t.c.app == app).order_by(t.c.name)).scalars().all()
        return [_parse(trainer_pb2.Model(), r) for r in rows]

    def delete_model(self, name: str) -> None:
        """Its rows (versions and events with it); its artifacts are the caller's to delete."""
        t = schema.models
        with _database(), self.db.write() as conn:
            conn.execute(t.delete().where(t.c.name == name))

    # ---- versions ----
    def load_version(self, name: str) -> trainer_pb2.ModelVersion:
        """The version's row; NotFound when there is none."""
        t = schema.model_versions
        with _database(), self.db.read() as conn:
            record = conn.execute(sa.select(t.c.record).where(t.c.name == name)).scalar_one_or_none()
        if record is None:
            raise NotFound(f"model version {name} not found", reason="MODEL_VERSION_NOT_FOUND")
        return _parse(trainer_pb2.ModelVersion(), record)

    def delete_version(self, name: str) -> None:
        """Its row and events (a version refused at the last moment)."""
        t = schema.model_versions
        with _database(), self.db.write() as conn:
            conn.execute(t.delete().where(t.c.name == name))

    def save_version(self, version: trainer_pb2.ModelVersion) -> None:
        self.save_run(version, [])

    def save_run(
        self,
        version: trainer_pb2.ModelVersion,
        events: list[trainer_pb2.ModelVersionEvent],
        latest_ready: bool = False,
    ) -> None:
        """The version's record, events (upserted by sequence: after a takeover
        the newest owner's write wins, tail included) and, when asked, the
        model's latest_ready_version, in one transaction. NotFound when the
        model is gone."""
        with _database():
            try:
                with self.db.write() as conn:
                    self._upsert_version(conn, version)
                    self._upsert_events(conn, version.name, events)
                    if latest_ready:
                        self._set_latest_ready(conn, version.name)
            except sa.exc.IntegrityError:  # the model's row is gone: deleted meanwhile
                raise NotFound(f"model of {version.name} not found (deleted?)", reason="MODEL_NOT_FOUND") from None

    def _upsert_version(self, conn: sa.Connection, version: trainer_pb2.ModelVersion) -> None:
        parsed = names.parse_model_version(version.name)
        t = schema.model_versions
        now = time.time()
        values = {"state": int(version.state), "record": _json(version), "updated_at": now}
        stmt = self.db.insert(t).values(
            name=version.name,
            app=parsed.app,
            model_name=str(parsed.parent),
            number=min(names.version_sort_key(parsed.version)[0], 1 << 62),
            created_at=now,
            **values,
        )
        conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.name], set_=values))

    def _upsert_events(self, conn: sa.Connection, name: str, events: list[trainer_pb2.ModelVersionEvent]) -> None:
        if not events:
            return
        t = schema.model_version_events
        now = time.time()
        rows = [{"version_name": name, "sequence": e.sequence, "record": _json(e), "created_at": now} for e in events]
        stmt = self.db.insert(t).values(rows)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.version_name, t.c.sequence], set_={"record": stmt.excluded.record}
            )
        )
        # Events past these are a replaced owner's, written after the takeover: the history is the writer's.
        conn.execute(t.delete().where(t.c.version_name == name, t.c.sequence > events[-1].sequence))

    def _set_latest_ready(self, conn: sa.Connection, version_name: str) -> None:
        t = schema.models
        model_name = version_name.rsplit("/versions/", 1)[0]
        query = sa.select(t.c.record).where(t.c.name == model_name)
        if self.db.dialect == "postgresql":
            query = query.with_for_update()  # SQLite: the write transaction holds the lock
        record = conn.execute(query).scalar_one_or_none()
        if record is None:
            return
        model = _parse(trainer_pb2.Model(), record)
        model.latest_ready_version = version_name
        conn.execute(t.update().where(t.c.name == model_name).values(record=_json(model)))

    def get_version(self, name: str, field_name: str = "name") -> trainer_pb2.ModelVersion:
        parsed = names.parse_model_version(name, field_name)
        run = self.runs.get(str(parsed))
        # A live run from memory; a finished one from the database (an evaluation
        # on another replica may have added to it), unless the database is behind.
        if run is not None and (not run.final or run.dirty):
            with run.cond:
                return trainer_pb2.ModelVersion().FromString(run.version.SerializeToString())
        return self.load_version(str(parsed))

    def list_versions(self, parent: str) -> list[trainer_pb2.ModelVersion]:
        """Newest first (v10 before v9)."""
        model = self.get_model(parent, "parent")
        t = schema.model_versions
        query = (
            sa.select(t.c.name, t.c.record)
            .where(t.c.model_name == model.name)
            .order_by(t.c.number.desc(), t.c.name.desc())
        )
        with _database(), self.db.read() as conn:
            rows = conn.execute(query).all()
        versions = []
        for name, record in rows:
            run = self.runs.get(name)
            if run is not None and (not run.final or run.dirty):
                with run.cond:
                    versions.append(trainer_pb2.ModelVersion().FromString(run.version.SerializeToString()))
            else:
                versions.append(_parse(trainer_pb2.ModelVersion(), record))
        return versions

    def highest_number(self, model_name: str) -> int:
        """The highest vN among the model's versions (0: none)."""
        t = schema.model_versions
        query = sa.select(sa.func.max(t.c.number)).where(t.c.model_name == model_name, t.c.number < 1 << 62)
        with _database(), self.db.read() as conn:
            return int(conn.execute(query).scalar_one() or 0)

    def stored_events(self, name: str, from_sequence: int = 0) -> list[trainer_pb2.ModelVersionEvent]:
        """The version's events in the database, from from_sequence on."""
        t = schema.model_version_events
        query = (
            sa.select(t.c.record).where(t.c.version_name == name, t.c.sequence >= from_sequence).order_by(t.c.sequence)
        )
        with _database(), self.db.read() as conn:
            rows = conn.execute(query).scalars().all()
        return [_parse(trainer_pb2.ModelVersionEvent(), r) for r in rows]

    def stored_run(self, name: str) -> Run:
        """A version no replica holds, from its rows, now held here."""
        version = self.load_version(name)
        run = Run(version, events=self.stored_events(name))
        with self.lock:
            self.runs[name] = run
        return run

    def forget(self, name: str) -> None:
        """Drops the copy of a run queued here that another replica has claimed."""
        with self.lock:
            run = self.runs.get(name)
            if run is not None and not run.claimed and not run.final:
                self.runs.pop(name)

    # ---- stores from before the database held the records ----
    def import_store(self) -> list[trainer_pb2.ModelVersion]:
        """Copies model.json, version.json and events.jsonl a store holds from
        before into the database, once (a flag row), serialised so replicas
        starting together import each record once; rows already there are kept.
        Returns the unfinished versions imported, for the queue to adopt."""
        counters = schema.id_counters
        flag = sa.and_(
            counters.c.app == schema.DEFAULT_APP,
            counters.c.kind == IMPORT_KIND,
            counters.c.parent == IMPORT_PARENT,
        )
        with _database(), self.db.write() as conn:
            if self.db.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": IMPORT_LOCK})
            if conn.execute(sa.select(counters.c.last).where(flag)).scalar_one_or_none() is not None:
                return []
            unfinished = self._import(conn)
            conn.execute(
                counters.insert().values(app=schema.DEFAULT_APP, kind=IMPORT_KIND, parent=IMPORT_PARENT, last=1)
            )
        if unfinished:
            log.info("imported %d unfinished versions from the store's records", len(unfinished))
        return unfinished

    def _import(self, conn: sa.Connection) -> list[trainer_pb2.ModelVersion]:
        keys = [*self.store.list("models/"), *self.store.list("apps/")]
        model_keys = [k for k in keys if k.endswith("/model.json") and _is_model_key(k)]
        version_keys = [k for k in keys if k.endswith("/version.json") and _is_version_key(k)]
        models, versions = schema.models, schema.model_versions
        have_models = set(conn.execute(sa.select(models.c.name)).scalars())
        have_versions = set(conn.execute(sa.select(versions.c.name)).scalars())
        for key in model_keys:
            model = json_format.ParseDict(self.store.get_json(key), trainer_pb2.Model(), ignore_unknown_fields=True)
            name = key[: -len("/model.json")]
            if name in have_models:
                continue
            model.name = name
            conn.execute(
                models.insert().values(
                    name=name, app=names.parse_model(name).app, record=_json(model), created_at=time.time()
                )
            )
            have_models.add(name)
        unfinished = []
        for key in version_keys:
            name = key[: -len("/version.json")]
            if name in have_versions or name.rsplit("/versions/", 1)[0] not in have_models:
                continue
            version = json_format.ParseDict(
                self.store.get_json(key), trainer_pb2.ModelVersion(), ignore_unknown_fields=True
            )
            version.name = name
            self._upsert_version(conn, version)
            self._upsert_events(conn, name, self._legacy_events(name))
            if version.state not in FINAL:
                unfinished.append(version)
        return sorted(unfinished, key=lambda v: (v.create_time.seconds, v.create_time.nanos))

    def _legacy_events(self, name: str) -> list[trainer_pb2.ModelVersionEvent]:
        try:
            data = self.store.get_bytes(f"{name}/events.jsonl").decode()
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


def _json(message: Any) -> str:
    return json.dumps(to_dict(message), separators=(",", ":"))


def _is_model_key(key: str) -> bool:
    try:
        names.parse_model(key[: -len("/model.json")])
    except Exception:
        return False
    return True


def _is_version_key(key: str) -> bool:
    try:
        names.parse_model_version(key[: -len("/version.json")])
    except Exception:
        return False
    return True
