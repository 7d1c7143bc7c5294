"""The shared training queue's claim latency with two trainer replicas.

    python -m bench queue                     # 400 jobs, 2 replicas x 2 workers, PostgreSQL via pgserver
    python -m bench queue --jobs=1000

Two replicas (each its own engine and connection pool, as two processes
would have) claim jobs from one PostgreSQL 16 (started here with pgserver)
through services/trainer/jobqueue.py, two worker threads each, while a fifth
thread keeps enqueueing: the latency of each successful claim (the
transaction: SELECT ... FOR UPDATE SKIP LOCKED, then the lease UPDATE), p50
and p99, and the claims that returned a job someone else also got (must be 0).
The SQLite file (the single-machine default) is measured the same way for
comparison. Absolute milliseconds are this machine's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _run(url: str, jobs: int) -> dict[str, Any]:
    from textft_services.common.db import Database
    from textft_services.trainer.jobqueue import JobQueue

    replicas = [Database(url), Database(url)]
    replicas[0].migrate()
    queues = [JobQueue(db, f"bench-replica-{i}:{i}:x", 30.0) for i, db in enumerate(replicas)]
    latencies: list[float] = []
    claimed: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce() -> None:
        for i in range(jobs):
            queues[i % 2].enqueue(f"models/bench/versions/v{i + 1}", "spec")
        done.set()

    def consume(queue: Any) -> None:
        while True:
            started = time.perf_counter()
            claim = queue.claim()
            elapsed = time.perf_counter() - started
            if claim is None:
                if done.is_set():
                    return
                time.sleep(0.001)  # an idle worker's poll (the service waits on its wake-up event)
                continue
            with lock:
                latencies.append(elapsed)
                claimed.append(claim.target)

    threads = [threading.Thread(target=produce)]
    threads += [threading.Thread(target=consume, args=(q,)) for q in queues for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for db in replicas:
        db.close()
    twice = sum(1 for _, n in Counter(claimed).items() if n > 1)
    ordered = sorted(latencies)
    return {
        "claims": len(claimed),
        "double_claims": twice,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench queue")
    parser.add_argument("--jobs", type=int, default=400)
    args = parser.parse_args(argv)
    from tests.support.databases import fresh_postgres_database, start_postgres

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server, admin = start_postgres(Path(tmp) / "pg")
        try:
            figures["postgresql"] = _run(fresh_postgres_database(admin), args.jobs)
        finally:
            server.cleanup()
        figures["sqlite"] = _run(f"sqlite:///{Path(tmp) / 'textft.db'}", args.jobs)
    print(f"{'database':<12} {'claims':>7} {'double':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, f in figures.items():
        print(f"{name:<12} {f['claims']:>7} {f['double_claims']:>7} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}")
    print("2 replicas x 2 workers claiming while one thread enqueues; every job claimed once")
    return figures


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
