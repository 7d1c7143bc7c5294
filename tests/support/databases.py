"""Real databases for tests: SQLite files and a PostgreSQL 16 server that the
tests start themselves (PyPI's pgserver ships the server binaries), one fresh
database per test so no test sees another's rows."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'textft.db'}"


def start_postgres(directory: Path) -> tuple[Any, str]:
    """Starts PostgreSQL in directory (unix socket only, no TCP port); returns the
    server handle and the maintenance database's SQLAlchemy URL."""
    import pgserver

    server = pgserver.get_server(directory, cleanup_mode="stop")
    # pgserver's URI is postgresql://postgres:@/postgres?host=<socket dir>
    host = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    return server, f"postgresql+psycopg://postgres@/postgres?host={host}"


def fresh_postgres_database(admin_url: str) -> str:
    """CREATE DATABASE under a new name; returns its URL."""
    name = "t_" + uuid.uuid4().hex[:16]
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin_url.replace("/postgres?", f"/{name}?", 1)
