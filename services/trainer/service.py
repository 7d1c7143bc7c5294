"""The trainer service's parts, put together: the metadata database holds
the records, the store the artifacts, memory the live runs.

    records.py     model and version records and events (database), the store layout, live runs
    runlog.py      a run's events: appended, published to watchers, written to the database
    scheduler.py   the queue: claims, leases, recovery, cancel, following a job to its end
    catalog.py     templates, models, creating (admitting, queueing) versions
    evaluations.py evaluations of READY versions, a long-running operation
    server.py      the gRPC handlers over these

Calls that need the store (creating a version: its job.json) or the
database answer UNAVAILABLE while it is unavailable, which clients may retry;
a live run rides a database outage out in memory (runlog.py).
"""

from __future__ import annotations

import logging
import time

from textft import Client

from ..common.config import Settings
from ..common.db import Database, open_database
from ..common.store import ObjectStore
from ..common.usage import StoredBytes
from .catalog import Catalog
from .evaluations import Evaluations
from .jobqueue import JobQueue, replica_id
from .launcher import Launcher
from .records import Records
from .runlog import RunLog
from .scheduler import Scheduler

log = logging.getLogger("textft.trainer")


class TrainerCore:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        launcher: Launcher,
        datasets: Client | None = None,
        database: Database | None = None,
    ) -> None:
        self.settings = settings
        # Version numbers come from the metadata database (never reused: see Catalog._allocate_version).
        database = database or open_database(settings)
        datasets = datasets or Client(dataset_target=settings.dataset_addr, api_key=settings.service_key)
        jobs = JobQueue(database, replica_id(), settings.trainer_lease_seconds)
        self.records = Records(store, database)
        stored = StoredBytes(database)
        self.runlog = RunLog(self.records, jobs, stored)
        self.scheduler = Scheduler(settings, self.records, self.runlog, jobs, launcher)
        self.catalog = Catalog(settings, self.records, database, datasets, jobs, self.runlog, self.scheduler, stored)
        self.evaluations = Evaluations(
            settings, self.records, launcher, self.catalog.resolve_dataset, lambda: self.scheduler.stopping
        )

    def start(self) -> None:
        self.runlog.start()
        self.scheduler.start()

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stops running jobs and leaves their versions as they are in the
        database, for the next start to resume (or fail) them."""
        deadline = time.monotonic() + timeout
        self.scheduler.stop()
        self.evaluations.stop()
        self.scheduler.join(deadline)
        self.runlog.close(deadline)
