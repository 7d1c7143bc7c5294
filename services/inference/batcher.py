"""Micro-batching: one lane (a FIFO and a worker thread) per loaded base model.

A request becomes a Work item in its base model's lane. The worker takes the
item at the head, waits until `batch_wait_ms` after that item arrived (or
until `max_batch_size` texts that can share a forward pass are waiting), and
runs them together: for classification every request of the base model fits,
whatever its adapter (PEFT mixed-adapter batches); for generation, requests
with the same decoding parameters. Under load the head has already waited, so
the window adds no latency: batches simply grow.

Admission is bounded across lanes (`queue_size` waiting requests, beyond it
RESOURCE_EXHAUSTED). Work whose RPC was cancelled or whose deadline passed
leaves the queue at once (a gRPC callback) and is checked again before it runs,
so no forward pass is spent on an answer nobody will read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from textft.errors import Cancelled, DeadlineExceeded, ResourceExhausted, TextftError, Unavailable

from .metrics import InferenceMetrics

log = logging.getLogger("textft.inference.batcher")

CLASSIFY, GENERATE, STREAM = "classify", "generate", "stream"


@dataclass(eq=False, repr=False)
class Work:
    """One request waiting for (or in) a forward pass."""

    adapter: Any  # engine.Adapter
    kind: str
    texts: list[str]
    params: Any  # inference_pb2.GenerationParameters
    key: Hashable  # requests with equal keys may share a forward pass
    deadline: float | None = None  # time.monotonic() value; None: no deadline
    future: Future[Any] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    # Streams only: ("tokens", [ids]) / ("end", outcome) / ("error", exc) items.
    events: queue.Queue[tuple[str, Any]] | None = None
    outcome: str = ""

    def __repr__(self) -> str:
        # Short on purpose: the dataclass repr would print the adapter, its base and the whole model.
        version = getattr(self.adapter, "version", None)
        return f"<Work {self.kind} {version} rows={len(self.texts)}>"

    @property
    def rows(self) -> int:
        return len(self.texts)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
        if self.events is not None:
            self.events.put(("error", error))

    def succeed(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)


class Admission:
    """A bound on waiting requests shared by every lane."""

    def __init__(self, limit: int, metrics: InferenceMetrics) -> None:
        self.limit = max(1, limit)
        self.metrics = metrics
        self.waiting = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.waiting >= self.limit:
                self.metrics.rejected.inc(reason="queue_full")
                raise ResourceExhausted(
                    f"the inference queue is full ({self.limit} requests waiting); retry with backoff, "
                    "send several texts per request, or add replicas / raise TEXTFT_INFERENCE_QUEUE_SIZE",
                    reason="INFERENCE_QUEUE_FULL",
                    metadata={"queue_size": str(self.limit)},
                )
            self.waiting += 1
            self.metrics.queue_depth.set(self.waiting)

    def release(self, n: int = 1) -> None:
        with self._lock:
            self.waiting -= n
            self.metrics.queue_depth.set(self.waiting)


class Lane:
    """The queue and worker thread of one base model."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[Work]], None],
        admission: Admission,
        metrics: InferenceMetrics,
        wait_ms: int,
        max_batch: int,
    ) -> None:
        self.name = name
        self.run = run
        self.admission = admission
        self.metrics = metrics
        self.wait = max(0, wait_ms) / 1000
        self.max_batch = max(1, max_batch)
        self.items: deque[Work] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"lane-{name}", daemon=True)
        self.thread.start()

    def submit(self, work: Work) -> None:
        if work.expired():
            self.metrics.dropped.inc(reason="deadline")
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        with self.cond:
            if self.closed:
                raise Unavailable("the base model was just unloaded; retry", reason="BASE_MODEL_UNLOADED")
            self.admission.acquire()
            self.items.append(work)
            self.cond.notify()

    def abandon(self, work: Work) -> None:
        """The RPC ended (cancelled, deadline): forget the work if it still waits;
        a running stream sees `cancelled` and stops. Called at the end of every
        RPC, so the common case (the work is done) costs no lock."""
        work.cancelled.set()
        if work.future.done():
            return
        with self.cond:
            if work not in self.items:  # identity (eq=False); deque.remove would format a repr when absent
                return  # already taken (running)
            self.items.remove(work)
            self.admission.release()
            self.cond.notify()
        reason = "deadline" if work.expired() else "cancelled"
        self.metrics.dropped.inc(reason=reason)
        work.fail(
            DeadlineExceeded("deadline exceeded while queued") if reason == "deadline" else Cancelled("cancelled")
        )

    def close(self) -> None:
        with self.cond:
            self.closed = True
            pending = list(self.items)
            self.items.clear()
            self.admission.release(len(pending))
            self.cond.notify_all()
        for work in pending:
            work.fail(Unavailable("the base model was unloaded while the request waited; retry"))

    def _take(self) -> list[Work] | None:
        with self.cond:
            while True:
                while not self.items and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return None
                head = self.items[0]
                if head.kind != STREAM:
                    close_at = head.enqueued + self.wait
                    while not self.closed and self.items and self.items[0] is head:
                        rows = sum(w.rows for w in self.items if w.key == head.key)
                        remaining = close_at - time.monotonic()
                        if rows >= self.max_batch or remaining <= 0:
                            break
                        self.cond.wait(remaining)
                    if not self.items or self.items[0] is not head:
                        continue  # the head was abandoned while we waited: start over
                taken, rows = [], 0
                for work in list(self.items):
                    if work.key != head.key or (taken and rows + work.rows > self.max_batch):
                        continue
                    taken.append(work)
                    rows += work.rows
                    if head.kind == STREAM or rows >= self.max_batch:
                        break
                for work in taken:
                    self.items.remove(work)
                self.admission.release(len(taken))
                return taken

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            now = time.monotonic()
            live = []
            for work in taken:  # dropped before any compute is spent on them
                if work.expired(now):
                    self.metrics.dropped.inc(reason="deadline")
                    work.fail(DeadlineExceeded("deadline exceeded while queued"))
                elif work.cancelled.is_set():
                    self.metrics.dropped.inc(reason="cancelled")
                    work.fail(Cancelled("cancelled"))
                else:
                    live.append(work)
            if not live:
                continue
            try:
                self.run(live)
            except TextftError as exc:
                for work in live:
                    work.fail(exc)
            except Exception as exc:  # the RPC maps it to INTERNAL; the details stay in this log
                log.exception("batch of %d request(s) failed on %s", len(live), self.name)
                for work in live:
                    work.fail(exc)
