"""The shared training queue (services/trainer/jobqueue.py) on SQLite and on a
real PostgreSQL: claims in order and each job once, leases that expire and
are taken over, cancel flags read by the owner's heartbeat, release on a
graceful stop, and the counts the queue's bound and quotas use."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from textft_services.common import schema
from textft_services.common.db import Database
from textft_services.trainer.jobqueue import JobQueue, QueueFull

pytestmark = pytest.mark.integration


def _expire(db: Database, target: str) -> None:
    with db.write() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.target == target).values(lease_expires_at=0.0))


def test_claims_in_order_each_job_once_across_replicas(db: Database) -> None:
    other = Database(db.url)
    replicas = [JobQueue(db, "host-a:1:x", 30.0), JobQueue(other, "host-b:2:y", 30.0)]
    for i in range(60):
        replicas[0].enqueue(f"models/m/versions/v{i + 1}", "spec")
    barrier = threading.Barrier(6)

    def drain(queue: JobQueue) -> list[str]:
        barrier.wait()
        got = []
        while (claim := queue.claim()) is not None:
            got.append(claim.target)
        return got

    with ThreadPoolExecutor(6) as pool:
        claimed = [t for chunk in pool.map(drain, [replicas[i % 2] for i in range(6)]) for t in chunk]
    other.close()
    assert sorted(claimed) == sorted(f"models/m/versions/v{i + 1}" for i in range(60))
    assert replicas[0].counts("default") == (0, 60)  # none waits; all 60 are the app's, running


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_told(db: Database) -> None:
    a, b = JobQueue(db, "host-a:1:x", 30.0), JobQueue(db, "host-b:2:y", 30.0)
    a.enqueue("models/m/versions/v1", "spec")
    first = a.claim()
    assert first is not None and first.previous_owner is None and first.attempts == 1
    assert b.claim() is None  # held
    assert a.renew("models/m/versions/v1").held
    _expire(db, "models/m/versions/v1")
    second = b.claim()
    assert second is not None and second.previous_owner == "host-a:1:x" and second.attempts == 2
    assert not a.renew("models/m/versions/v1").held  # a must stop its job
    assert b.renew("models/m/versions/v1").held


def test_cancel_from_any_replica(db: Database) -> None:
    a, b = JobQueue(db, "host-a:1:x", 30.0), JobQueue(db, "host-b:2:y", 30.0)
    a.enqueue("models/m/versions/v1", "spec")
    a.enqueue("models/m/versions/v2", "spec")
    assert b.request_cancel("models/m/versions/v2") == "queued"  # nobody runs it: done at once
    claim = a.claim()
    assert claim is not None and claim.target == "models/m/versions/v1"
    assert a.claim() is None  # v2 is done, not claimable
    assert b.request_cancel("models/m/versions/v1") == "running"
    assert a.renew("models/m/versions/v1").cancel_requested  # the owner's heartbeat reads it
    a.finish("models/m/versions/v1")
    assert b.request_cancel("models/m/versions/v1") == "done"


def test_release_and_dead_owners_on_this_host(db: Database) -> None:
    a = JobQueue(db, "host-a:1:x", 30.0)
    a.enqueue("models/m/versions/v1", "spec")
    a.enqueue("models/m/versions/v2", "spec")
    assert a.claim() is not None and a.claim() is not None
    a.release("models/m/versions/v1")  # a graceful stop: back to the queue at once
    assert a.state("models/m/versions/v1") == "QUEUED" and a.counts("default") == (1, 2)
    # A restarted trainer on host-a: the dead owner's lease (pid 2**22 + 1 cannot exist) is
    # released, a live one on another host is not.
    with db.write() as conn:
        conn.execute(
            schema.jobs.update()
            .where(schema.jobs.c.target == "models/m/versions/v2")
            .values(lease_owner=f"host-a:{2**22 + 1}:old")
        )
    b = JobQueue(db, "host-b:2:y", 30.0)
    b.enqueue("models/m/versions/v3", "spec")
    b_claim = b.claim()
    assert b_claim is not None
    restarted = JobQueue(db, "host-a:3:z", 30.0)
    assert restarted.release_dead_local_owners() == 1
    with db.read() as conn:
        leases = dict(conn.execute(sa.select(schema.jobs.c.target, schema.jobs.c.lease_expires_at)).all())
    assert leases["models/m/versions/v2"] == 0.0 and leases[b_claim.target] > 0.0


def test_adopt_adds_each_unfinished_version_once(db: Database) -> None:
    a, b = JobQueue(db, "host-a:1:x", 30.0), JobQueue(db, "host-b:2:y", 30.0)
    targets = [(f"models/m/versions/v{i}", "spec") for i in range(1, 6)]
    with ThreadPoolExecutor(2) as pool:
        added = list(pool.map(lambda q: q.adopt(targets), [a, b]))
    assert sorted(added) == [0, 5]
    assert a.counts("default") == (5, 5)


def test_replicas_enqueueing_at_once_never_pass_the_bound_or_the_quota(db: Database) -> None:
    """The bound and the app quota are counted in the enqueue's own serialised
    transaction: 24 concurrent enqueues on two replicas, a bound of 5 (and, in
    a second round, an app quota of 3), and exactly that many get in."""
    other = Database(db.url)
    replicas = [JobQueue(db, "host-a:1:x", 30.0), JobQueue(other, "host-b:2:y", 30.0)]
    barrier = threading.Barrier(24)

    def attempt(i: int, app: str, max_queued: int, quota: int) -> str:
        barrier.wait()
        try:
            replicas[i % 2].enqueue(f"models/{app}/versions/v{i + 1}", "spec", app, max_queued, quota)
        except QueueFull as full:
            return full.bound
        return "queued"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(lambda i: attempt(i, "a", 5, 0), range(24)))
    assert outcomes.count("queued") == 5 and outcomes.count("queue") == 19
    assert replicas[0].counts("a") == (5, 5)
    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(lambda i: attempt(i, "b", 0, 3), range(24)))
    other.close()
    assert outcomes.count("queued") == 3 and outcomes.count("app") == 21
    assert replicas[0].counts("b") == (8, 3)
