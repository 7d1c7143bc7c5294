"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-02 19:04:22.224218
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("principal", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_app"), ["app"], unique=False)

    op.create_table(
        "apps",
        sa.Column("app_id", sa.String(length=63), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("record", sa.Text(), server_default="{}", nullable=False),
        sa.Column("quotas", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_apps")),
        sa.UniqueConstraint("uid", name=op.f("uq_apps_uid")),
    )
    op.create_table(
        "audit_log",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("principal", sa.String(length=255), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("method", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_app_at"), ["app", "at"], unique=False)

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
        "id_counters",
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("parent", sa.String(length=255), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("app", "kind", "parent", name=op.f("pk_id_counters")),
    )
    op.create_table(
        "jobs",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("app", sa.String(length=63), server_default="default", nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec_key", sa.String(length=1024), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_state_pk"), ["state", "pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_target"), ["target"], unique=False)

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

    op.create_table(
        "model_versions",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
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
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_state"), ["state"], unique=False)

    op.create_table(
        "model_evaluations",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
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
    op.create_table(
        "model_version_events",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
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


def downgrade() -> None:
    op.drop_table("model_version_events")
    op.drop_table("model_evaluations")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_state"))

    op.drop_table("model_versions")
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_versions_dataset_uid_sha256"))

    op.drop_table("dataset_versions")
    op.drop_table("models")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_target"))
        batch_op.drop_index(batch_op.f("ix_jobs_state_pk"))

    op.drop_table("jobs")
    op.drop_table("id_counters")
    op.drop_table("datasets")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_app_at"))

    op.drop_table("audit_log")
    op.drop_table("apps")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_app"))

    op.drop_table("api_keys")
