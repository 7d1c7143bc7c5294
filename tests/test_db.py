"""The metadata database on both backends (a SQLite file and a real PostgreSQL
16 that the fixtures start): migrations, the schema they build, and the
primitives replicas rely on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from textft_services.common import schema
from textft_services.common.db import Database, redact

pytestmark = pytest.mark.integration


def test_migrations_build_exactly_the_schema(db: Database) -> None:
    assert db.revision() == "0004"
    with db.read() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), schema.metadata)
    assert diff == [], f"services/common/schema.py and the migrations differ: {diff}"


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    replicas = [Database(database_url) for _ in range(3)]
    barrier = threading.Barrier(len(replicas))

    def start(database: Database) -> str:
        barrier.wait()
        return database.migrate()

    with ThreadPoolExecutor(len(replicas)) as pool:
        revisions = list(pool.map(start, replicas))
    assert revisions == ["0004"] * 3
    with replicas[0].read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    for database in replicas:
        database.close()


def test_allocation_never_collides_across_replicas(db: Database) -> None:
    """Two engines (two replicas' pools), 8 threads, 200 allocations: 1..200, each once."""
    other = Database(db.url)
    barrier = threading.Barrier(8)

    def allocate(i: int) -> list[int]:
        database = db if i % 2 else other
        barrier.wait()
        got = []
        for _ in range(25):
            with database.write() as conn:
                got.append(database.allocate(conn, "model_version", "m"))
        return got

    with ThreadPoolExecutor(8) as pool:
        numbers = [n for chunk in pool.map(allocate, range(8)) for n in chunk]
    other.close()
    assert sorted(numbers) == list(range(1, 201))


def test_allocation_is_per_parent_and_survives_rollback_only_when_committed(db: Database) -> None:
    with db.write() as conn:
        assert db.allocate(conn, "dataset_version", "a") == 1
        assert db.allocate(conn, "dataset_version", "b") == 1
        assert db.allocate(conn, "dataset_version", "a") == 2
    with pytest.raises(RuntimeError), db.write() as conn:
        assert db.allocate(conn, "dataset_version", "a") == 3
        raise RuntimeError("the upload failed before its row was committed")
    with db.write() as conn:  # the rolled-back number was never handed out to anyone
        assert db.allocate(conn, "dataset_version", "a") == 3


def test_allocation_starts_past_what_the_store_held_before(db: Database) -> None:
    with db.write() as conn:
        assert db.allocate(conn, "dataset_version", "old", floor=5) == 6  # v1..v5 predate the database
        assert db.allocate(conn, "dataset_version", "old", floor=5) == 7
        assert db.allocate(conn, "dataset_version", "old", floor=9) == 10  # a floor above the count wins
        assert db.allocate(conn, "dataset_version", "old") == 11


def test_database_clock_is_epoch_seconds(db: Database) -> None:
    with db.read() as conn:
        now = db.now(conn)
    assert abs(now - time.time()) < 60


def test_unsupported_url_names_the_variable_without_the_password() -> None:
    with pytest.raises(ValueError) as err:
        Database("mysql://admin:hunter22@db/textft")
    assert "TEXTFT_DATABASE_URL" in str(err.value)
    assert "hunter22" not in str(err.value)
    assert "hunter22" not in redact("postgresql+psycopg://admin:hunter22@db/textft")
