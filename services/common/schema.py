"""The metadata database's tables (SQLAlchemy Core), the one description of the
schema. Alembic's migrations (services/migrations/) create it; a test checks
that applying every migration gives exactly these tables.

What lives here: apps, datasets and their versions, models, model versions,
their events and evaluations, the job queue with its leases, id counters, and
(for the tenancy work) API keys and the audit log. Bytes never do: rows,
source files, adapters and checkpoints stay in the object store, and a row
here points at them.

Conventions:
- Times are float seconds since the epoch (`*_at`), taken from the database's
  clock where they are compared across replicas (leases: see db.now_expr()).
- `record` columns hold the resource's public proto as JSON (json_format), so
  Get and List answer from one column; the other columns are what queries,
  constraints and locks need.
- Datasets and models, and their versions, are keyed by full name. Version
  numbers come from `id_counters`, which deletes never touch, so a re-created
  dataset or model does not get v1 back and a version name is never reused
  (caches and lineage key on version names).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

ID = sa.String(63)  # [a-z0-9][a-z0-9-]{0,62}, see names.check_id
UID = sa.String(32)  # uuid4().hex
NAME = sa.String(255)  # a resource's full name (names.py)
DEFAULT_APP = "default"

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("app_id", ID, primary_key=True),
    sa.Column("uid", UID, nullable=False, unique=True),
    sa.Column("record", sa.Text, nullable=False, server_default="{}"),
    # Per-app limits as JSON ({"stored_bytes": ..., "running_jobs": ...}); absent keys take the defaults.
    sa.Column("quotas", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
)

# The last number handed out per (app, kind, parent): dataset and model versions,
# evaluations. Deleting a dataset or model leaves its counter, so numbers never repeat.
id_counters = sa.Table(
    "id_counters",
    metadata,
    sa.Column("app", ID, primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("parent", sa.String(255), primary_key=True),
    sa.Column("last", sa.BigInteger, nullable=False),
)

# A dataset and its versions, keyed by their full names (names.py: `datasets/x`,
# `apps/{app}/datasets/x`), which are also their store prefixes; `app` serves listings.
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("app", ID, nullable=False),
    sa.Column("dataset_id", ID, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # textft.v1.Dataset (latest_version is computed)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index(None, "app", "dataset_id"),
)

dataset_versions = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("app", ID, nullable=False),
    sa.Column("dataset", NAME, sa.ForeignKey("datasets.name", ondelete="CASCADE"), nullable=False),
    sa.Column("number", sa.BigInteger, nullable=False),
    # UPLOADING: reserved, its objects are being written; PUBLISHED: visible (Get, List), never changed.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("record", sa.Text, nullable=True),  # textft.v1.DatasetVersion once PUBLISHED
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("dataset", "number"),
    sa.Index(None, "dataset", "sha256"),
)

# Models, their versions and the versions' events, keyed by full name
# (models/{model}, apps/{app}/models/{model}, .../versions/{version}): the
# trainer's records (services/trainer/records.py). `app` is for listing.

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("app", ID, nullable=False, server_default=DEFAULT_APP),
    sa.Column("record", sa.Text, nullable=False),  # textft.v1.Model
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index(None, "app", "name"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("name", NAME, nullable=False, unique=True),
    sa.Column("app", ID, nullable=False, server_default=DEFAULT_APP),
    sa.Column("model_name", NAME, sa.ForeignKey("models.name", ondelete="CASCADE"), nullable=False),
    sa.Column("number", sa.BigInteger, nullable=False),  # names.version_sort_key: v3 is 3
    sa.Column("state", sa.Integer, nullable=False),  # textft.v1.ModelVersion.State
    sa.Column("record", sa.Text, nullable=False),  # textft.v1.ModelVersion
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index(None, "model_name", "number"),
    sa.Index(None, "state"),
)

# A run's events, in order; `sequence` is the event's ModelVersionEvent.sequence.
model_version_events = sa.Table(
    "model_version_events",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("version_name", NAME, sa.ForeignKey("model_versions.name", ondelete="CASCADE"), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # textft.v1.ModelVersionEvent
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("version_name", "sequence"),
)

model_evaluations = sa.Table(
    "model_evaluations",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("version_pk", sa.BigInteger, sa.ForeignKey("model_versions.pk", ondelete="CASCADE"), nullable=False),
    sa.Column("evaluation_id", sa.String(32), nullable=False),
    sa.Column("state", sa.Integer, nullable=False),  # textft.v1.ModelEvaluation.State
    sa.Column("record", sa.Text, nullable=False),  # textft.v1.ModelEvaluation
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("version_pk", "evaluation_id"),
)

# The work queue shared by trainer replicas. A replica claims a QUEUED job, or a
# RUNNING one whose lease has expired, with SELECT ... FOR UPDATE SKIP LOCKED
# (SQLite: inside an immediate transaction), and renews `lease_expires_at` by
# heartbeat while it runs the job.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("app", ID, nullable=False, server_default=DEFAULT_APP),
    sa.Column("kind", sa.String(16), nullable=False),  # train | evaluate
    sa.Column("target", sa.String(255), nullable=False),  # the resource name the job works for
    sa.Column("state", sa.String(16), nullable=False),  # QUEUED | RUNNING | DONE
    sa.Column("spec_key", sa.String(1024), nullable=False),  # the TrainingJobSpec's store key
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index(None, "state", "pk"),
    sa.Index(None, "target"),
)

# Tenancy (apps, roles, keys): keys are stored hashed; `key_id` is the public part
# a key starts with, so a key is found without scanning.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("app", ID, nullable=False),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Index(None, "app"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("app", ID, nullable=False),
    sa.Column("method", sa.String(255), nullable=False),
    sa.Column("resource", sa.String(1024), nullable=False, server_default=""),
    sa.Column("outcome", sa.String(32), nullable=False),  # a grpc.StatusCode name
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Index(None, "app", "at"),
)

# Bytes each dataset version and model version holds in the store, per app
# (usage.py): measured once when it is published or its run ends, so the
# TEXTFT_QUOTA_STORED_BYTES check is one SUM, never a listing of the store.
stored_bytes = sa.Table(
    "stored_bytes",
    metadata,
    sa.Column("app", ID, primary_key=True),
    sa.Column("resource", sa.String(255), primary_key=True),  # the version's name, which is its store prefix
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
