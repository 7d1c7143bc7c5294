"""stored bytes per app

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_bytes",
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("app", "resource", name=op.f("pk_stored_bytes")),
    )


def downgrade() -> None:
    op.drop_table("stored_bytes")
