"""the trainer's records: models, model versions and events keyed by name

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 12:40:00.000000

The tables 0001 created for models were never written (the trainer kept its
records in the store until this revision), so they are replaced, not altered;
model_evaluations, also never written, is recreated because it refers to
model_versions. The trainer imports the store's records on its next start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _model_evaluations() -> None:
    op.create_table(
        "model_evaluations",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("version_pk", sa.BigInteger(), nullable=False),
        sa.Column("evaluation_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_pk"],
            ["model_versions.pk"],
            name=op.f("fk_model_evaluations_version_pk_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_evaluations")),
        sa.UniqueConstraint("version_pk", "evaluation_id", name=op.f("uq_model_evaluations_version_pk_evaluation_id")),
    )


def _drop_all() -> None:
    op.drop_table("model_version_events")
    op.drop_table("model_evaluations")
    op.drop_table("model_versions")
    op.drop_table("models")


def upgrade() -> None:
    _drop_all()
    op.create_table(
        "models",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("app", sa.String(length=63), server_default="default", nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_models")),
    )
    op.create_index(op.f("ix_models_app_name"), "models", ["app", "name"], unique=False)
    op.create_table(
        "model_versions",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("app", sa.String(length=63), server_default="default", nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_name"], ["models.name"], name=op.f("fk_model_versions_model_name_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(
        op.f("ix_model_versions_model_name_number"), "model_versions", ["model_name", "number"], unique=False
    )
    op.create_index(op.f("ix_model_versions_state"), "model_versions", ["state"], unique=False)
    op.create_table(
        "model_version_events",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("version_name", sa.String(length=255), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_name"],
            ["model_versions.name"],
            name=op.f("fk_model_version_events_version_name_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_version_events")),
        sa.UniqueConstraint("version_name", "sequence", name=op.f("uq_model_version_events_version_name_sequence")),
    )
    _model_evaluations()


def downgrade() -> None:
    _drop_all()
    op.create_table(
        "models",
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("app", sa.String(length=63), server_default="default", nullable=False),
        sa.Column("model_id", sa.String(length=63), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_models")),
        sa.UniqueConstraint("app", "model_id", name=op.f("uq_models_app_model_id")),
    )
    op.create_table(
        "model_versions",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("model_uid", sa.String(length=32), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_uid"], ["models.uid"], name=op.f("fk_model_versions_model_uid_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_uid", "number", name=op.f("uq_model_versions_model_uid_number")),
    )
    op.create_index(op.f("ix_model_versions_state"), "model_versions", ["state"], unique=False)
    _model_evaluations()
    op.create_table(
        "model_version_events",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("version_pk", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_pk"],
            ["model_versions.pk"],
            name=op.f("fk_model_version_events_version_pk_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_version_events")),
        sa.UniqueConstraint("version_pk", "sequence", name=op.f("uq_model_version_events_version_pk_sequence")),
    )
