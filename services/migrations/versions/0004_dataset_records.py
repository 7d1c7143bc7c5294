"""dataset records in the database, keyed by name

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:05:00.000000

0001's datasets and dataset_versions (keyed by uid) were never written: they
are replaced by tables keyed by the resource's full name, its store prefix.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_app_dataset_id"), ["app", "dataset_id"], unique=False)
    op.create_table(
        "dataset_versions",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("record", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset"], ["datasets.name"], name=op.f("fk_dataset_versions_dataset_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset", "number", name=op.f("uq_dataset_versions_dataset_number")),
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_versions_dataset_sha256"), ["dataset", "sha256"], unique=False)


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
    op.create_table(
        "datasets",
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("app", sa.String(length=63), server_default="default", nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_datasets")),
        sa.UniqueConstraint("app", "dataset_id", name=op.f("uq_datasets_app_dataset_id")),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("dataset_uid", sa.String(length=32), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("record", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_uid"], ["datasets.uid"], name=op.f("fk_dataset_versions_dataset_uid_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset_uid", "number", name=op.f("uq_dataset_versions_dataset_uid_number")),
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dataset_versions_dataset_uid_sha256"), ["dataset_uid", "sha256"], unique=False
        )
