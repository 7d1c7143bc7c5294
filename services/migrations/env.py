"""Alembic environment: runs on the connection Database.migrate() hands over
(inside its transaction and lock), or on sqlalchemy.url for `alembic` itself."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from textft_services.common.schema import metadata

config = context.config


def run(connection: sa.engine.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        run(conn)
