"""A run's event history: appended here, published to watchers, and written
to the metadata database.

A live run's record (its version row, new events, the model's
latest_ready_version) is written in one transaction by persist, which never
raises. The store plays no part in records: a store outage only concerns the
job's artifacts (the job retries for TEXTFT_STORE_RETRY_SECONDS, then FAILS
with MODEL_TRAINING_STORE_UNAVAILABLE). When the database is unavailable the
run's truth stays in memory (GetModelVersion and WatchModelVersion serve live
runs from memory; everything else answers UNAVAILABLE), the run is marked
dirty, and it is written again on its next event and by a background flusher
(capped exponential backoff) until the database takes it or the service stops.

Watchers of a run this replica holds follow it in memory; watchers of a run
another replica owns follow its events in the database, where the owner
writes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from textft.errors import NotFound, TextftError, Unavailable
from textft.v1 import common_pb2, trainer_pb2

from ..common import names
from ..common.protojson import now
from ..common.usage import StoredBytes
from .jobqueue import JobQueue
from .records import FINAL, MV, Records, Run

log = logging.getLogger("textft.trainer")
FLUSH_FIRST_DELAY = 0.5  # seconds before the flusher retries a failed write; doubles up to FLUSH_MAX_DELAY
FLUSH_MAX_DELAY = 10.0
WATCH_POLL_SECONDS = 1.0  # how often a watcher of a run another replica owns reads its events


class RunLog:
    def __init__(self, records: Records, jobs: JobQueue, stored: StoredBytes) -> None:
        self.records = records
        self.jobs = jobs
        self.stored = stored
        self.stopped = threading.Event()
        self._flush_wakeup = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="records-flusher", daemon=True)

    def start(self) -> None:
        self._flusher.start()

    def close(self, deadline: float) -> None:
        """Stops the flusher (by the monotonic deadline) and tries once more to
        write what the database has not taken yet."""
        self.stopped.set()
        self._flush_wakeup.set()
        if self._flusher.is_alive():
            self._flusher.join(max(0.0, deadline - time.monotonic()))
        for run in list(self.records.runs.values()):
            if run.dirty and not self.persist(run):
                log.error(
                    "run %s: the database is still unavailable at shutdown; it holds an older record of this run "
                    "(state %s in memory)",
                    run.version.name,
                    MV.State.Name(run.version.state),
                )

    # ---- appending and publishing ----
    def append(self, run: Run, **fields: Any) -> trainer_pb2.ModelVersionEvent:
        """Adds an event to the run's history; the caller holds run.cond."""
        event = trainer_pb2.ModelVersionEvent(sequence=len(run.events), time=now(), **fields)
        run.events.append(event)
        return event

    def publish(self, run: Run, event: trainer_pb2.ModelVersionEvent, persist: bool) -> None:
        """Persists the run (if asked), then lets watchers see the event."""
        if persist:
            self.persist(run)
        with run.cond:
            run.published = max(run.published, event.sequence + 1)
            run.cond.notify_all()

    def event(self, run: Run, persist: bool = True, **fields: Any) -> None:
        with run.cond:
            event = self.append(run, **fields)
        self.publish(run, event, persist)

    def set_state(self, run: Run, state: int, message: str = "") -> None:
        with run.cond:
            run.version.state = state
            run.version.update_time.CopyFrom(now())
            event = self.append(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_STATE,
                state=state,
                message=message or MV.State.Name(state),
            )
        self.publish(run, event, persist=True)

    def finish(self, run: Run, state: int, failure: common_pb2.Failure | None = None) -> None:
        with run.cond:
            if run.final:
                return
            run.version.state = state
            run.version.update_time.CopyFrom(now())
            # READY sets the model's latest_ready_version in the same write.
            run.latest_ready_pending = state == MV.STATE_READY
            if failure is not None:
                run.version.failure.CopyFrom(failure)
            # State and event together: a watcher never sees a final run without its final event.
            event = self.append(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_STATE,
                state=state,
                failure=failure,
                message=failure.message if failure is not None else MV.State.Name(state),
            )
        self.publish(run, event, persist=True)
        app = names.parse_model_version(run.version.name).app
        self.stored.measure_quietly(self.records.store, app, run.version.name)  # its adapter and checkpoints
        try:
            self.jobs.finish(run.version.name)
        except Exception:  # the record says final; a claim of the row finds that and drops it
            log.exception("run %s: could not mark its job done in the database", run.version.name)

    # ---- writing to the database ----
    def persist(self, run: Run) -> bool:
        """Writes the run's record, its events not written yet (and a pending
        latest_ready_version) in one transaction. Never raises: when the
        database is unavailable the run is marked dirty and the flusher tries
        again. True when the database is up to date."""
        with run.persist_lock:
            if self.records.runs.get(run.version.name) is not run:  # deleted meanwhile: nothing to write back
                return True
            if run.lease_lost:  # another replica owns the run now: its writes are the truth
                return True
            with run.cond:
                events = list(run.events[run.stored :])
                version = trainer_pb2.ModelVersion().FromString(run.version.SerializeToString())
                latest_ready = run.latest_ready_pending
            try:
                self.records.save_run(version, events, latest_ready)
            except NotFound:  # the model was deleted meanwhile: nothing to write back
                log.info("run %s: its model is gone; its record is not written", version.name)
                return True
            except (Unavailable, OSError) as exc:
                self._persist_failed(run, exc)
                return False
            with run.cond:
                run.stored = max(run.stored, events[-1].sequence + 1) if events else run.stored
                if latest_ready:
                    run.latest_ready_pending = False
                was_dirty, failures = run.dirty, run.failed_writes
                run.dirty, run.failed_writes = False, 0
            if was_dirty:
                log.info("run %s: record written to the database again after %d failed writes", version.name, failures)
            return True

    def _persist_failed(self, run: Run, exc: Exception) -> None:
        with run.cond:
            first = not run.dirty
            run.dirty = True
            run.failed_writes += 1
            state = MV.State.Name(run.version.state)
        detail = exc.message if isinstance(exc, TextftError) else f"{type(exc).__name__}: {exc}"
        if first:
            log.warning(
                "run %s (%s): could not write its record to the database (%s); kept in memory, retrying until "
                "the database takes it",
                run.version.name,
                state,
                detail,
            )
        self._flush_wakeup.set()

    def _flush_loop(self) -> None:
        """Writes dirty runs again, with capped exponential backoff, until the
        database takes them or the service stops."""
        delay = FLUSH_FIRST_DELAY
        while not self.stopped.is_set():
            self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            while not self.stopped.is_set():
                dirty = [r for r in list(self.records.runs.values()) if r.dirty]
                if not dirty:
                    delay = FLUSH_FIRST_DELAY
                    break
                if self.stopped.wait(delay):  # the write that made it dirty has just failed
                    return
                results = [self.persist(r) for r in dirty]
                delay = FLUSH_FIRST_DELAY if all(results) else min(delay * 2, FLUSH_MAX_DELAY)

    # ---- watching ----
    def watch(
        self, name: str, from_sequence: int, is_active: Callable[[], bool]
    ) -> Iterator[trainer_pb2.ModelVersionEvent]:
        """History first, then live events until the run is final or the client
        leaves: from memory while this replica owns the run, else from the
        database, where the owner persists them."""
        version = self.records.get_version(name)
        index = max(0, from_sequence)
        while True:
            with self.records.lock:
                run = self.records.runs.get(version.name)
            if run is not None:
                index = yield from self._watch_run(run, index, is_active)
                if index < 0:
                    return
                continue  # the run left this replica's memory: follow it in the database
            final = self.records.get_version(version.name).state in FINAL
            # Read after the state: the final record and its final event are one transaction.
            events = self.records.stored_events(version.name, index)
            yield from events
            index = events[-1].sequence + 1 if events else index
            if final:
                return
            if not is_active() or self.stopped.wait(WATCH_POLL_SECONDS):
                return

    def _watch_run(
        self, run: Run, index: int, is_active: Callable[[], bool]
    ) -> Generator[trainer_pb2.ModelVersionEvent, None, int]:
        """Events from memory; returns -1 when done, or the next index when the
        run has left this replica's memory (another replica took it)."""
        runs = self.records.runs
        while True:
            with run.cond:
                # The run is over for watchers once its final event is published.
                while (
                    index >= run.published
                    and not (run.final and run.published >= len(run.events))
                    and is_active()
                    and runs.get(run.version.name) is run
                ):
                    run.cond.wait(timeout=1.0)  # wakes to notice a departed client or a departed run
                batch = run.events[index : run.published]
                done = run.final and run.published >= len(run.events)
            yield from batch
            index += len(batch)
            if (done and index >= len(run.events)) or not is_active():
                return -1
            if runs.get(run.version.name) is not run:
                return index
