"""The trainer's records in the metadata database (services/trainer/records.py),
on SQLite and on a real PostgreSQL: models per app, versions and events that
every replica reads the same, deletes that take a model's rows with it, the
database being away as UNAVAILABLE, and the one-time import of the records a
store kept before the database held them (model.json, version.json,
events.jsonl), which an upgraded trainer serves as before."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from support import EV, MV

from textft import Client
from textft.errors import AlreadyExists, NotFound, Unavailable
from textft.v1 import trainer_pb2
from textft_services.common.db import Database, default_url
from textft_services.common.protojson import to_dict
from textft_services.common.store import LocalStore, ObjectStore, S3Store
from textft_services.stack import start_service
from textft_services.trainer.jobqueue import JobQueue
from textft_services.trainer.records import Records

pytestmark = pytest.mark.integration
CLS = 1  # TASK_TEXT_CLASSIFICATION


@pytest.fixture()
def records(db: Database, tmp_path: Path) -> Records:
    return Records(LocalStore(tmp_path / "store"), db)


def _model(name: str) -> trainer_pb2.Model:
    return trainer_pb2.Model(name=name, task=CLS, description=f"about {name}")


def _version(name: str, state: int = MV.STATE_QUEUED) -> trainer_pb2.ModelVersion:
    return trainer_pb2.ModelVersion(name=name, task=CLS, state=state)


def _events(*messages: str, start: int = 0) -> list[trainer_pb2.ModelVersionEvent]:
    return [
        trainer_pb2.ModelVersionEvent(sequence=start + i, kind=EV.KIND_LOG, message=m) for i, m in enumerate(messages)
    ]


def test_models_per_app_and_unique_names(records: Records) -> None:
    for name in ["models/b", "models/a", "apps/team/models/a"]:
        records.create_model(_model(name))
    with pytest.raises(AlreadyExists) as info:
        records.create_model(_model("models/a"))
    assert info.value.reason == "MODEL_EXISTS" and "models/a" in info.value.message
    assert [m.name for m in records.list_models()] == ["models/a", "models/b"]
    assert [m.name for m in records.list_models("team")] == ["apps/team/models/a"]
    assert records.get_model("apps/team/models/a").description == "about apps/team/models/a"
    with pytest.raises(NotFound) as missing:
        records.get_model("models/c")
    assert missing.value.reason == "MODEL_NOT_FOUND"


def test_versions_and_events_are_the_same_on_every_replica(records: Records, db: Database, tmp_path: Path) -> None:
    other_db = Database(db.url)  # another replica: its own pool, nothing shared in memory
    other = Records(LocalStore(tmp_path / "store"), other_db)
    try:
        records.create_model(_model("models/m"))
        for n in (2, 10, 9):
            records.save_version(_version(f"models/m/versions/v{n}"))
        assert [v.name for v in other.list_versions("models/m")] == [f"models/m/versions/v{n}" for n in (10, 9, 2)]
        assert other.highest_number("models/m") == 10

        name = "models/m/versions/v10"
        records.save_run(_version(name, MV.STATE_TRAINING), _events("a", "b"))
        records.save_run(_version(name, MV.STATE_TRAINING), _events("c", start=2))  # only the new ones
        assert [e.message for e in other.stored_events(name)] == ["a", "b", "c"]
        assert [e.message for e in other.stored_events(name, from_sequence=1)] == ["b", "c"]
        # The replaced owner wrote one more before it noticed the takeover; the
        # new owner writes from where it read (after "b"): its history wins, tail included.
        records.save_run(_version(name, MV.STATE_TRAINING), _events("d", start=3))
        other.save_run(_version(name, MV.STATE_TRAINING), _events("c taken over", start=2))
        assert [e.message for e in records.stored_events(name)] == ["a", "b", "c taken over"]

        records.save_run(_version(name, MV.STATE_READY), _events("READY", start=3), latest_ready=True)
        assert other.get_version(name).state == MV.STATE_READY
        assert other.get_model("models/m").latest_ready_version == name
        with pytest.raises(NotFound) as missing:
            other.get_version("models/m/versions/v3")
        assert missing.value.reason == "MODEL_VERSION_NOT_FOUND"
    finally:
        other_db.close()


def test_delete_takes_versions_and_events_with_it(records: Records) -> None:
    records.create_model(_model("models/gone"))
    records.save_run(_version("models/gone/versions/v1"), _events("queued"))
    records.delete_model("models/gone")
    with pytest.raises(NotFound):
        records.get_model("models/gone")
    assert records.stored_events("models/gone/versions/v1") == []
    # A late write of a run of the deleted model finds it gone, and writes nothing.
    with pytest.raises(NotFound) as info:
        records.save_run(_version("models/gone/versions/v1"), _events("late"))
    assert info.value.reason == "MODEL_NOT_FOUND"
    records.create_model(_model("models/gone"))  # the name is free again, with no versions
    assert records.list_versions("models/gone") == []


def test_database_away_is_unavailable(tmp_path: Path) -> None:
    db = Database("postgresql+psycopg://textft@127.0.0.1:1/textft")  # nothing listens on port 1
    try:
        records = Records(LocalStore(tmp_path / "store"), db)
        with pytest.raises(Unavailable) as info:
            records.get_model("models/m")
        assert info.value.retryable and "retry" in info.value.message and "127.0.0.1" not in info.value.message
    finally:
        db.close()


def _legacy_store(store: ObjectStore) -> None:
    """A store as a trainer before this change left it: records as JSON beside the artifacts."""
    ready, running = "models/old/versions/v3", "apps/team/models/old/versions/v1"
    store.put_json("models/old/model.json", {**to_dict(_model("models/old")), "latestReadyVersion": ready})
    store.put_json("apps/team/models/old/model.json", to_dict(_model("apps/team/models/old")))
    store.put_json(f"{ready}/version.json", to_dict(_version(ready, MV.STATE_READY)))
    store.put_json(f"{running}/version.json", to_dict(_version(running, MV.STATE_TRAINING)))
    lines = [to_dict(e) for e in _events("queued", "training", "READY")]
    lines[2]["sequence"] = 7  # a crash once left a gap: the import renumbers
    store.put_bytes(f"{ready}/events.jsonl", "".join(json.dumps(e) + "\n" for e in lines).encode())
    store.put_json("models/old/versions/v3/adapter/textft.json", {"not": "a record"})


def test_import_of_a_store_from_before_runs_once(db: Database, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _legacy_store(store)
    replicas = [Database(db.url) for _ in range(3)]
    barrier = threading.Barrier(len(replicas))

    def start(database: Database) -> list[str]:
        barrier.wait()
        return [v.name for v in Records(store, database).import_store()]

    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            imported = list(pool.map(start, replicas))
    finally:
        for database in replicas:
            database.close()
    # One replica imported; the others found it done. The unfinished version is returned, for the queue.
    assert sorted(imported, key=len) == [[], [], ["apps/team/models/old/versions/v1"]]
    records = Records(store, db)
    assert records.get_model("models/old").latest_ready_version == "models/old/versions/v3"
    assert [m.name for m in records.list_models("team")] == ["apps/team/models/old"]
    assert records.get_version("models/old/versions/v3").state == MV.STATE_READY
    assert [(e.sequence, e.message) for e in records.stored_events("models/old/versions/v3")] == [
        (0, "queued"),
        (1, "training"),
        (2, "READY"),
    ]
    assert records.highest_number("models/old") == 3  # the next version is v4
    # Once: what changes in the database afterwards is not overwritten by the store's old copy.
    records.delete_model("apps/team/models/old")
    assert records.import_store() == []
    assert records.list_models("team") == []

    queue = JobQueue(db, "host:1:x", 30.0)
    assert queue.adopt([("apps/team/models/old/versions/v1", "apps/team/models/old/versions/v1/job.json")]) == 1


def test_upgraded_trainer_serves_the_stores_records(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    """A trainer started on a store from before, with a new database, serves
    its models, versions and event histories over the API."""
    bucket = unique_bucket()
    store = S3Store(s3_endpoint.settings(bucket))
    ready = "models/old/versions/v3"
    store.put_json("models/old/model.json", {**to_dict(_model("models/old")), "latestReadyVersion": ready})
    store.put_json(f"{ready}/version.json", to_dict(_version(ready, MV.STATE_READY)))
    store.put_bytes(f"{ready}/events.jsonl", "".join(json.dumps(to_dict(e)) + "\n" for e in _events("a", "b")).encode())
    env = s3_endpoint.service_env(tmp_path / "home", bucket)
    with open(tmp_path / "trainer.log", "w") as log:
        trainer = start_service("trainer", env, log=log)
        try:
            with Client(trainer_target=trainer.address, api_key=API_KEY) as client:
                assert client.get_model("old").latest_ready_version == ready
                assert [v.name for v in client.list_model_versions("old").model_versions] == [ready]
                assert [e.message for e in client.watch(ready, timeout=30)] == ["a", "b"]
        finally:
            trainer.stop()
    database = Database(default_url(tmp_path / "home"))
    try:
        assert Records(store, database).get_version(ready).state == MV.STATE_READY  # in the database now
    finally:
        database.close()
