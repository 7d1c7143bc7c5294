"""The training queue, shared by every trainer replica through the metadata
database (one row per model version in `jobs`).

A replica claims the oldest QUEUED job, or a RUNNING one whose lease has
expired, in one transaction (PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so
replicas claiming at once never wait on each other or take the same row;
SQLite: the write lock). While the job runs the owner renews its lease
(heartbeat); a replica that dies stops renewing, and once the lease expires
another replica claims the job and resumes it from its last checkpoint in the
store. Cancel is a flag on the row that the owner's heartbeat reads, so it
works from any replica. Leases are compared on the database's clock.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..common import schema
from ..common.db import Database

log = logging.getLogger("textft.trainer.queue")
KIND = "train"
QUEUED, RUNNING, DONE = "QUEUED", "RUNNING", "DONE"


def replica_id() -> str:
    """host:pid:random, unique per process; the host and pid let a restarted
    trainer on the same host release its dead predecessor's leases at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claim:
    target: str  # models/{model}/versions/{version}
    app: str
    attempts: int  # including this one
    previous_owner: str | None  # set when the job is taken over from another replica


@dataclass(frozen=True)
class Lease:
    held: bool  # False: another replica took the job over (this one must stop)
    cancel_requested: bool


class JobQueue:
    def __init__(self, database: Database, owner: str, lease_seconds: float) -> None:
        self.db = database
        self.owner = owner
        self.lease_seconds = lease_seconds

    def enqueue(
        self, target: str, spec_key: str, app: str = schema.DEFAULT_APP, max_queued: int = 0, app_quota: int = 0
    ) -> None:
        """Adds the job, counting the queue's bound (jobs waiting, every app)
        and the app's quota (its queued + running jobs) in the same serialised
        transaction, so replicas admitting at once never pass either; 0: no
        bound. QueueFull when one is reached."""
        t = schema.jobs
        with self.db.write() as conn:
            if max_queued > 0 or app_quota > 0:
                self._serialise(conn, ENQUEUE_LOCK)
                queued, live = self._counts(conn, app)
                if max_queued > 0 and queued >= max_queued:
                    raise QueueFull("queue", queued, max_queued)
                if app_quota > 0 and live >= app_quota:
                    raise QueueFull("app", live, app_quota)
            now = self.db.now(conn)
            conn.execute(
                t.insert().values(
                    app=app, kind=KIND, target=target, state=QUEUED, spec_key=spec_key, created_at=now, updated_at=now
                )
            )

    def adopt(self, targets: list[tuple[str, str]]) -> int:
        """Rows for unfinished versions a store holds from before the queue
        lived in the database ((target, spec_key) pairs); idempotent, and
        serialised so replicas starting together add each row once."""
        t = schema.jobs
        added = 0
        with self.db.write() as conn:
            self._serialise(conn, ADOPT_LOCK)
            known = {row.target for row in conn.execute(sa.select(t.c.target).where(t.c.kind == KIND))}
            now = self.db.now(conn)
            for target, spec_key in targets:
                if target not in known:
                    conn.execute(
                        t.insert().values(
                            kind=KIND, target=target, state=QUEUED, spec_key=spec_key, created_at=now, updated_at=now
                        )
                    )
                    added += 1
        return added

    def release_dead_local_owners(self) -> int:
        """Expires the leases of trainer processes on this host that are gone
        (a restart after a crash): their jobs are claimable at once instead of
        after the lease time."""
        host = self.owner.split(":", 1)[0]
        t = schema.jobs
        with self.db.write() as conn:
            rows = conn.execute(sa.select(t.c.pk, t.c.lease_owner).where(t.c.kind == KIND, t.c.state == RUNNING)).all()
            mine = [row for row in rows if (row.lease_owner or "").split(":", 1)[0] == host]
            dead = [row.pk for row in mine if not _alive(row.lease_owner)]
            if dead:
                conn.execute(t.update().where(t.c.pk.in_(dead)).values(lease_expires_at=0.0))
        return len(dead)

    def claim(self) -> Claim | None:
        t = schema.jobs

        def claimable(now: Any) -> Any:
            return sa.or_(t.c.state == QUEUED, sa.and_(t.c.state == RUNNING, t.c.lease_expires_at < now))

        # Idle workers ask often: a read first, so an empty queue never takes the write lock.
        with self.db.read() as conn:
            probe = sa.select(t.c.pk).where(t.c.kind == KIND, claimable(self.db.now_expr())).limit(1)
            if conn.execute(probe).first() is None:
                return None
        with self.db.write() as conn:
            now = self.db.now(conn)
            stmt = sa.select(t).where(t.c.kind == KIND, claimable(now)).order_by(t.c.pk).limit(1)
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            row = conn.execute(stmt).first()
            if row is None:
                return None
            conn.execute(
                t.update()
                .where(t.c.pk == row.pk)
                .values(
                    state=RUNNING,
                    lease_owner=self.owner,
                    lease_expires_at=now + self.lease_seconds,
                    attempts=t.c.attempts + 1,
                    updated_at=now,
                )
            )
        previous = row.lease_owner if row.state == RUNNING else None
        return Claim(row.target, row.app, row.attempts + 1, previous)

    def renew(self, target: str) -> Lease:
        t = schema.jobs
        with self.db.write() as conn:
            now = self.db.now(conn)
            row = conn.execute(
                t.update()
                .where(t.c.kind == KIND, t.c.target == target, t.c.state == RUNNING, t.c.lease_owner == self.owner)
                .values(lease_expires_at=now + self.lease_seconds, updated_at=now)
                .returning(t.c.cancel_requested)
            ).first()
        return Lease(held=row is not None, cancel_requested=bool(row and row.cancel_requested))

    def finish(self, target: str) -> None:
        t = schema.jobs
        with self.db.write() as conn:
            now = self.db.now(conn)
            conn.execute(t.update().where(t.c.kind == KIND, t.c.target == target).values(state=DONE, updated_at=now))

    def release(self, target: str) -> None:
        """Back to QUEUED (a graceful shutdown): the next replica takes it at once."""
        t = schema.jobs
        with self.db.write() as conn:
            now = self.db.now(conn)
            conn.execute(
                t.update()
                .where(t.c.kind == KIND, t.c.target == target, t.c.lease_owner == self.owner, t.c.state == RUNNING)
                .values(state=QUEUED, lease_owner=None, lease_expires_at=None, updated_at=now)
            )

    def request_cancel(self, target: str) -> str:
        """QUEUED jobs are done at once ("queued": the caller records the
        cancel); RUNNING ones get the flag their owner acts on ("running");
        "done" when there is nothing to cancel."""
        t = schema.jobs
        with self.db.write() as conn:
            now = self.db.now(conn)
            stmt = sa.select(t.c.pk, t.c.state).where(t.c.kind == KIND, t.c.target == target)
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update()
            row = conn.execute(stmt).first()
            if row is None or row.state == DONE:
                return "done"
            if row.state == QUEUED:
                conn.execute(t.update().where(t.c.pk == row.pk).values(state=DONE, updated_at=now))
                return "queued"
            conn.execute(t.update().where(t.c.pk == row.pk).values(cancel_requested=True, updated_at=now))
            return "running"

    def state(self, target: str) -> str | None:
        t = schema.jobs
        with self.db.read() as conn:
            return conn.execute(sa.select(t.c.state).where(t.c.kind == KIND, t.c.target == target)).scalar()

    def counts(self, app: str) -> tuple[int, int]:
        """(jobs waiting to start, everywhere; the app's queued + running jobs)."""
        with self.db.read() as conn:
            return self._counts(conn, app)

    @staticmethod
    def _counts(conn: sa.Connection, app: str) -> tuple[int, int]:
        t = schema.jobs
        queued = conn.execute(sa.select(sa.func.count()).where(t.c.kind == KIND, t.c.state == QUEUED)).scalar_one()
        live = conn.execute(
            sa.select(sa.func.count()).where(t.c.kind == KIND, t.c.state != DONE, t.c.app == app)
        ).scalar_one()
        return int(queued), int(live)

    def _serialise(self, conn: sa.Connection, key: int) -> None:
        """PostgreSQL: a transaction-scoped advisory lock (SQLite's write lock already serialises)."""
        if self.db.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


ADOPT_LOCK = 0x7465787466740002
ENQUEUE_LOCK = 0x7465787466740003


class QueueFull(Exception):
    """enqueue refused: `bound` is "queue" (TEXTFT_TRAINER_MAX_QUEUED) or "app" (TEXTFT_QUOTA_JOBS)."""

    def __init__(self, bound: str, count: int, limit: int) -> None:
        super().__init__(f"{bound}: {count} >= {limit}")
        self.bound, self.count, self.limit = bound, count, limit


def _alive(owner: str | None) -> bool:
    try:
        pid = int((owner or "").split(":")[1])
    except (IndexError, ValueError):
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
