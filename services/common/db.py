"""The metadata database: one engine per service process, migrations, and the
few primitives every service needs (transactions, id allocation, the
database's clock).

The embedded default is a SQLite file under TEXTFT_HOME, so one machine needs
nothing new; deployments set TEXTFT_DATABASE_URL to PostgreSQL
(postgresql+psycopg://...). The same code and the same migrations run on both:
tests run the contract suite against each.

SQLite and several writers: every connection runs in WAL mode with a busy
timeout, and write transactions start with BEGIN IMMEDIATE, so two writers
queue on the database lock instead of failing when a read lock would have to
be upgraded (SQLite's deferred transactions deadlock that way). PostgreSQL runs
READ COMMITTED; what must not race (id allocation, job claims) is one atomic
statement or a row lock.

Migrations: every service runs `alembic upgrade head` when it starts
(TEXTFT_DATABASE_MIGRATE=off leaves that to an operator's `textft-db upgrade`,
e.g. a Kubernetes Job before a rollout). Replicas starting together are
serialised: a PostgreSQL advisory lock, SQLite's write lock.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import schema

log = logging.getLogger("textft.db")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 60.0
# pg_advisory_xact_lock key for migrations: any constant the deployment doesn't use otherwise.
MIGRATION_LOCK = 0x7465787466740001


def default_url(home: Path) -> str:
    """The embedded default: a SQLite file under TEXTFT_HOME."""
    return f"sqlite:///{(home / 'textft.db').resolve()}"


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class Database:
    """One engine (a connection pool) and the transactions services run on it."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        parsed = sa.engine.make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                _sqlite_wal(Path(parsed.database))
            self.engine: Engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            _sqlite_setup(self.engine)
        elif self.dialect == "postgresql":
            # pool_pre_ping: a replica outlives database restarts and failovers.
            self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        else:
            raise ValueError(
                f"TEXTFT_DATABASE_URL: unsupported database {self.dialect!r} in {redact(url)}; "
                "use sqlite:///path or postgresql+psycopg://user:password@host/db"
            )

    def close(self) -> None:
        self.engine.dispose()

    # ---- transactions ----
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (SQLite: deferred, does not take the write lock)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block ends without an exception."""
        with self.engine.connect() as conn:
            conn.execution_options(textft_write=True)
            with conn.begin():
                yield conn

    # ---- primitives ----
    def allocate(self, conn: Connection, kind: str, parent: str, app: str = schema.DEFAULT_APP, floor: int = 0) -> int:
        """The next number for (app, kind, parent): 1, 2, ...; never repeats, even
        across deletes, and one atomic statement, so concurrent callers on any
        replica each get their own. `floor`: numbers up to it are taken already
        (versions a store held before the database kept count)."""
        t = schema.id_counters
        insert = _insert(self.dialect)
        bumped = sa.case((t.c.last + 1 > floor, t.c.last + 1), else_=floor + 1)
        stmt = (
            insert(t)
            .values(app=app, kind=kind, parent=parent, last=floor + 1)
            .on_conflict_do_update(index_elements=[t.c.app, t.c.kind, t.c.parent], set_={"last": bumped})
            .returning(t.c.last)
        )
        return int(conn.execute(stmt).scalar_one())

    def insert(self, table: sa.Table) -> Any:
        """INSERT with this dialect's ON CONFLICT clauses (upserts)."""
        return _insert(self.dialect)(table)

    def now_expr(self) -> sa.ColumnElement[float]:
        """The database's clock in epoch seconds: leases are compared on one clock,
        not on each replica's."""
        if self.dialect == "postgresql":
            return sa.func.extract("epoch", sa.func.clock_timestamp())
        return (sa.func.julianday("now") - 2440587.5) * 86400.0

    def now(self, conn: Connection) -> float:
        return float(conn.execute(sa.select(self.now_expr())).scalar_one())

    # ---- migrations ----
    def migrate(self) -> str:
        """Upgrades the schema to the newest migration; returns the revision."""
        from alembic import command

        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg = _alembic_config(self.url, conn)
            command.upgrade(cfg, "head")
        return self.revision()

    def revision(self) -> str:
        from alembic.runtime.migration import MigrationContext

        with self.read() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""


_OPEN: dict[str, Database] = {}
_OPEN_LOCK = threading.Lock()


def open_database(settings: Any) -> Database:
    """The process's database for these Settings: one engine (one pool) per URL,
    shared by everything in the process that asks (servicers, auth), migrated
    once when TEXTFT_DATABASE_MIGRATE is on."""
    url = settings.database
    with _OPEN_LOCK:
        database = _OPEN.get(url)
        if database is None:
            database = Database(url)
            if settings.database_migrate:
                database.migrate()
            _OPEN[url] = database
    return database


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _sqlite_wal(path: Path) -> None:
    """Puts the file in WAL mode (readers don't block the writer, nor it them).

    The mode is stored in the file, so this runs once per process, not per
    connection: switching modes needs the database to itself, and SQLite answers
    "database is locked" at once, without waiting, when another process is
    inside a transaction then. A file lock makes processes opening a new
    database take turns; once one has switched, the others' switch is a no-op.
    """
    import fcntl
    import sqlite3

    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
            finally:
                connection.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below); pysqlite's own transaction handling is off.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("textft_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _alembic_config(url: str, conn: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def main(argv: list[str] | None = None) -> int:
    """`textft-db upgrade|current`: migrations run by an operator (TEXTFT_DATABASE_MIGRATE=off)."""
    from .config import Settings

    parser = argparse.ArgumentParser(prog="textft-db", description="textft metadata database migrations")
    parser.add_argument("command", choices=["upgrade", "current"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    db = Database(settings.database)
    try:
        revision = db.migrate() if args.command == "upgrade" else db.revision()
    finally:
        db.close()
    print(f"{redact(settings.database)}: revision {revision or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
