"""Stored bytes per app (TEXTFT_QUOTA_STORED_BYTES), kept in the metadata
database: each dataset version and model version is measured once, when it
is published or its run ends, and forgotten when it is deleted, so checking
the quota costs one query and never a listing of the store."""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from textft.errors import ResourceExhausted

from . import schema
from .db import Database
from .store import ObjectStore

log = logging.getLogger("textft.usage")
QUOTA = "TEXTFT_QUOTA_STORED_BYTES"


class StoredBytes:
    def __init__(self, db: Database) -> None:
        self.db = db

    def used(self, app: str) -> int:
        t = schema.stored_bytes
        with self.db.read() as conn:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.bytes), 0)).where(t.c.app == app)).scalar_one()
            )

    def measure(self, store: ObjectStore, app: str, resource: str) -> int:
        """Records what the store holds under a resource's prefix (its name)."""
        total = sum(store.size(key) for key in store.list(resource + "/"))
        t = schema.stored_bytes
        with self.db.write() as conn:
            conn.execute(t.delete().where((t.c.app == app) & (t.c.resource == resource)))
            conn.execute(t.insert().values(app=app, resource=resource, bytes=total, updated_at=time.time()))
        return total

    def measure_quietly(self, store: ObjectStore, app: str, resource: str) -> None:
        try:
            self.measure(store, app, resource)
        except Exception:  # the resource exists whatever its count; the next measure corrects it
            log.exception("could not measure the stored bytes of %s", resource)

    def forget(self, app: str, resource: str) -> None:
        """A resource deleted, with everything under it."""
        t = schema.stored_bytes
        under = (t.c.resource == resource) | t.c.resource.startswith(resource + "/", autoescape=True)
        with self.db.write() as conn:
            conn.execute(t.delete().where((t.c.app == app) & under))


def exceeded(app: str, quota: int, stored: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"app {app} would store {stored} bytes; its quota ({QUOTA}) is {quota} bytes: delete datasets or "
        "models of the app, or ask the operator to raise the quota",
        reason="QUOTA_STORED_BYTES",
        metadata={"quota": QUOTA, "limit": str(quota), "app": app},
    )
