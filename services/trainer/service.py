"""Trainer domain: models, model versions (training runs), the job queue, and
event fan-out to watchers. The store holds the truth; memory holds live runs.

Store layout:
    models/{model}/model.json
    models/{model}/versions/{version}/version.json   the ModelVersion (proto JSON), rewritten on change
    models/{model}/versions/{version}/job.json       what the job runs (resolved configs, rows)
    models/{model}/versions/{version}/events.jsonl   the run's events
    models/{model}/versions/{version}/metrics.json   evaluation (+ "evaluations": per dataset version)
    models/{model}/versions/{version}/adapter/       PEFT save_pretrained layout + tokenizer + textft.json
    models/{model}/versions/{version}/checkpoints/step-{n}/   Trainer checkpoints (see checkpoints.py)

Replicas and restarts: the queue lives in the metadata database
(jobqueue.py), shared by every trainer replica on it. A replica claims a job,
holds a lease it renews while the job runs, and keeps the run in memory only
while it owns it; the others serve the run from the store (GetModelVersion,
and WatchModelVersion by polling its events). When a replica dies its leases
expire and another one takes the runs up: QUEUED or PREPARING_DATA ones start
afresh (nothing was trained), later ones resume from their newest checkpoint,
or FAIL with MODEL_TRAINING_INTERRUPTED when they have none. Cancel sets a
flag on the job that the owner's heartbeat acts on, so any replica takes it.

Store outages: a live run's record (version.json, events.jsonl, the model's
latest_ready_version) is written through _persist_events, which never raises.
When the store is unavailable the truth stays in memory (GetModelVersion and
WatchModelVersion serve live runs from memory), the run is marked dirty, and
it is written again on its next event and by a background flusher (capped
exponential backoff) until the store takes it or the service stops. An outage
never fails a run on the service side: only the job decides that (it retries
for TEXTFT_STORE_RETRY_SECONDS, then FAILS with
MODEL_TRAINING_STORE_UNAVAILABLE). Calls that need the store itself (creating
a version, listing) answer UNAVAILABLE, which clients may retry.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from google.protobuf import json_format, struct_pb2

from textft import Client
from textft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TextftError,
    Unauthenticated,
    Unavailable,
)
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, dataset_pb2, trainer_pb2

from ..common import names, schema
from ..common.access import caller_app
from ..common.config import Settings
from ..common.db import Database, open_database
from ..common.protojson import now, to_dict
from ..common.rows import require_rows
from ..common.store import ObjectStore
from ..common.usage import StoredBytes, exceeded
from . import checkpoints, configs
from .evaluations import Evaluations
from .events import parse_events
from .jobqueue import Claim, JobQueue, replica_id
from .launcher import Launcher
from .records import FINAL, MV, Run, model_prefix, version_prefix
from .templates import TEMPLATES, get_template

log = logging.getLogger("textft.trainer")
FLUSH_FIRST_DELAY = 0.5  # seconds before the flusher retries a failed write; doubles up to FLUSH_MAX_DELAY
FLUSH_MAX_DELAY = 10.0
CLAIM_POLL_SECONDS = 1.0  # how often an idle worker asks the database for a job (sooner when woken)
WATCH_POLL_SECONDS = 1.0  # how often a watcher of a run another replica owns reads its events
TASK_NAMES = {
    common_pb2.TASK_TEXT_CLASSIFICATION: "TEXT_CLASSIFICATION",
    common_pb2.TASK_TEXT_GENERATION: "TEXT_GENERATION",
}


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


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
        self.store = store
        # Version numbers come from the metadata database (never reused: see _allocate_version).
        self.database = database or open_database(settings)
        self.launcher = launcher
        self.datasets = datasets or Client(dataset_target=settings.dataset_addr, api_key=settings.service_key)
        self.runs: dict[str, Run] = {}
        self.evaluations = Evaluations(self)
        self.lock = threading.Lock()
        self.jobs = JobQueue(self.database, replica_id(), settings.trainer_lease_seconds)
        self.stored = StoredBytes(self.database)
        self._wakeup = threading.Event()  # a job was queued here: idle workers claim now
        self.threads = [
            threading.Thread(target=self._worker_loop, name=f"train-{i}", daemon=True)
            for i in range(max(1, settings.trainer_concurrency))
        ]
        self.stopping = False
        self._stop = threading.Event()
        self._flush_wakeup = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="store-flusher", daemon=True)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="lease-heartbeat", daemon=True)

    # ---- lifecycle ----
    def start(self) -> None:
        self._adopt()
        released = self.jobs.release_dead_local_owners()
        if released:
            log.info("released %d leases of trainer processes on this host that are gone", released)
        log.info("trainer replica %s: lease %.0fs", self.jobs.owner, self.settings.trainer_lease_seconds)
        self._flusher.start()
        self._heartbeat.start()
        for t in self.threads:
            t.start()

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stops running jobs and leaves their versions as they are in the
        store, for the next start to resume (or fail) them."""
        self.stopping = True
        for run in list(self.runs.values()):
            if run.handle is not None and not run.final:
                run.handle.terminate()
        self.evaluations.stop()
        self._wakeup.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._flush_wakeup.set()
        if self._flusher.is_alive():
            self._flusher.join(max(0.0, deadline - time.monotonic()))
        for run in list(self.runs.values()):  # a last try for records the store has not taken yet
            if run.dirty and not self._persist_events(run):
                log.error(
                    "run %s: the store is still unavailable at shutdown; it holds an older record of this run "
                    "(state %s in memory)",
                    run.version.name,
                    MV.State.Name(run.version.state),
                )

    def _adopt(self) -> None:
        """Job rows for unfinished versions the store holds from before the
        queue lived in the database (an upgrade); a no-op afterwards."""
        pending = []
        for key in self.store.list("models/"):
            if key.endswith("/version.json") and key.count("/") == 4:
                version = self._load_version_key(key)
                if version.state not in FINAL:
                    pending.append(version)
        pending.sort(key=lambda v: (v.create_time.seconds, v.create_time.nanos))
        added = self.jobs.adopt([(v.name, f"{v.name}/job.json") for v in pending])
        if added:
            log.info("queued %d unfinished versions found in the store", added)

    def _take_up(self, claim: Claim) -> Run | None:
        """The run of a job this replica has just claimed: the one in memory
        when it was queued here, else its record from the store, resumed from
        its newest checkpoint when an earlier attempt had started training."""
        with self.lock:
            run = self.runs.get(claim.target)
        if run is not None and not run.final and not run.claimed and claim.previous_owner is None:
            run.claimed = True
            return run
        try:
            version = self._load_version_key(f"{claim.target}/version.json")
        except NotFound:
            log.warning("job %s has no model version in the store (deleted?); dropping it", claim.target)
            self.jobs.finish(claim.target)
            return None
        if version.state in FINAL:
            self.jobs.finish(claim.target)
            return None
        prefix = version_prefix(names.parse_model_version(version.name))
        run = Run(version, events=self._stored_events(prefix), app=claim.app, claimed=True)
        with self.lock:
            self.runs[version.name] = run
        if claim.previous_owner is None and version.state == MV.STATE_QUEUED:
            return run  # queued on another replica (or before a restart): a fresh start
        step = checkpoints.latest_step(self.store, checkpoints.checkpoints_prefix(prefix))
        was = MV.State.Name(version.state)
        who = (
            f"the trainer that ran it ({claim.previous_owner}) stopped" if claim.previous_owner else "a trainer restart"
        )
        if step is not None:
            with run.cond:
                run.version.resumed_from_step = step
            message = f"taken up after {who} while the run was {was}: resumes from checkpoint step {step}"
        elif version.state in (MV.STATE_QUEUED, MV.STATE_PREPARING_DATA):
            message = f"taken up after {who} while the run was {was}: starts again (no training had started)"
        else:
            self._finish(
                run,
                MV.STATE_FAILED,
                common_pb2.Failure(
                    reason="MODEL_TRAINING_INTERRUPTED",
                    message=(
                        f"{who} while this run was {was}, and the run has no checkpoint to resume from; create a "
                        "new version to retry (set trainer_config.save_strategy=steps and save_steps to make long "
                        "runs resumable)"
                    ),
                    field="trainer_config.save_strategy",
                ),
            )
            log.warning("run %s was %s without a checkpoint: FAILED", version.name, was)
            return None
        log.info("run %s: %s", version.name, message)
        self._set_state(run, MV.STATE_QUEUED, message)
        return run

    def _stored_events(self, prefix: str) -> list[trainer_pb2.ModelVersionEvent]:
        try:
            data = self.store.get_bytes(f"{prefix}/events.jsonl").decode()
        except NotFound:
            return []
        events = [
            json_format.ParseDict(json.loads(line), trainer_pb2.ModelVersionEvent(), ignore_unknown_fields=True)
            for line in data.splitlines()
            if line.strip()
        ]
        for i, event in enumerate(events):  # contiguous, whatever a crash left unpersisted
            event.sequence = i
        return events

    # ---- templates ----
    def list_templates(self, task: int) -> list[trainer_pb2.Template]:
        return [self.template_pb(t.template_id) for t in TEMPLATES.values() if task in (0, t.task)]

    def template_pb(self, template_id: str) -> trainer_pb2.Template:
        t = get_template(template_id)
        d = t.defaults()
        return trainer_pb2.Template(
            name=t.name,
            task=t.task,
            description=t.description,
            model_config=_struct(d["model_config"]),
            peft_config=_struct(d["peft_config"]),
            tokenizer_config=_struct(d["tokenizer_config"]),
            trainer_config=_struct(d["trainer_config"]),
        )

    # ---- models ----
    def create_model(self, request: trainer_pb2.CreateModelRequest) -> trainer_pb2.Model:
        app = names.parse_parent_app(request.parent, caller_app())
        model_name = names.ModelName(names.check_id(request.model_id, "model_id"), app)
        if request.task not in TASK_NAMES:
            raise InvalidArgument.for_field("task", "must be TASK_TEXT_CLASSIFICATION or TASK_TEXT_GENERATION")
        key = f"{model_prefix(model_name)}/model.json"
        with self.lock:
            if self.store.exists(key):
                raise AlreadyExists(f"model {model_name} already exists", reason="MODEL_EXISTS")
            model = trainer_pb2.Model(
                name=str(model_name),
                task=request.task,
                description=request.description,
                labels=dict(request.labels),
                create_time=now(),
            )
            self.store.put_json(key, to_dict(model))
        return model

    def _allocate_version(self, model: names.ModelName) -> str:
        """The next version id, from the metadata database: never handed out
        twice, even after the model is deleted and created anew, so the
        inference cache and lineage, keyed by version name, never mistake a new
        v1 for an old one. The store's ids are the floor, for versions written
        before the database kept count."""
        versions = f"{model_prefix(model)}/versions/"
        existing = [k for k in self.store.list(versions) if k.endswith("/version.json")]
        numbers = [names.version_sort_key(k[len(versions) :].split("/")[0])[0] for k in existing]
        floor = max([n for n in numbers if n < 1 << 62] or [0])
        with self.database.write() as conn:
            return f"v{self.database.allocate(conn, 'model_version', model.model, app=model.app, floor=floor)}"

    def get_model(self, name: str, field_name: str = "name") -> trainer_pb2.Model:
        model = names.parse_model(name, field_name)
        try:
            data = self.store.get_json(f"{model_prefix(model)}/model.json")
        except NotFound:
            raise NotFound(f"model {name} not found", reason="MODEL_NOT_FOUND") from None
        return json_format.ParseDict(data, trainer_pb2.Model(), ignore_unknown_fields=True)

    def list_models(self, app: str = schema.DEFAULT_APP) -> list[trainer_pb2.Model]:
        root = names.app_prefix(app) + "models/"
        keys = [k for k in self.store.list(root) if k.count("/", len(root)) == 1 and k.endswith("/model.json")]
        return [
            json_format.ParseDict(self.store.get_json(k), trainer_pb2.Model(), ignore_unknown_fields=True) for k in keys
        ]

    def delete_model(self, name: str) -> None:
        model = self.get_model(name)
        parsed = names.parse_model(model.name)
        active = [v.name for v in self.list_versions(model.name) if v.state not in FINAL]  # on any replica
        if active:
            raise FailedPrecondition(f"model {name} has runs in progress ({', '.join(active)}); cancel them first")
        for run_name, run in list(self.runs.items()):
            if run_name.startswith(model.name + "/"):
                with run.persist_lock:  # a write in progress ends first; none starts after (see _persist_events)
                    self.runs.pop(run_name, None)
        self.store.delete_prefix(model_prefix(parsed) + "/")
        self.stored.forget(parsed.app, str(parsed))

    # ---- versions ----
    def _load_version_key(self, key: str) -> trainer_pb2.ModelVersion:
        return json_format.ParseDict(self.store.get_json(key), trainer_pb2.ModelVersion(), ignore_unknown_fields=True)

    def save_version(self, version: trainer_pb2.ModelVersion) -> None:
        name = names.parse_model_version(version.name)
        self.store.put_json(f"{version_prefix(name)}/version.json", to_dict(version))

    def get_version(self, name: str, field_name: str = "name") -> trainer_pb2.ModelVersion:
        parsed = names.parse_model_version(name, field_name)
        run = self.runs.get(str(parsed))
        # A live run from memory; a finished one from the store (an evaluation on
        # another replica may have added to it), unless the store is behind.
        if run is not None and (not run.final or run.dirty):
            with run.cond:
                return trainer_pb2.ModelVersion().FromString(run.version.SerializeToString())
        try:
            return self._load_version_key(f"{version_prefix(parsed)}/version.json")
        except NotFound:
            raise NotFound(f"model version {name} not found", reason="MODEL_VERSION_NOT_FOUND") from None

    def list_versions(self, parent: str) -> list[trainer_pb2.ModelVersion]:
        model = self.get_model(parent, "parent")
        prefix = model.name + "/versions/"
        keys = [k for k in self.store.list(prefix) if k.endswith("/version.json") and k.count("/", len(prefix)) == 1]
        versions = [self.get_version(k[: -len("/version.json")]) for k in keys]
        return sorted(versions, key=lambda v: names.version_sort_key(v.name.rsplit("/", 1)[1]), reverse=True)

    def resolve_dataset(self, name: str, task: int) -> tuple[dataset_pb2.DatasetVersion, list[common_pb2.RowIssue]]:
        """Through DatasetService's public RPCs, like any client."""
        names.parse_dataset_version(name, "dataset_version")
        try:
            version = self.datasets.get_dataset_version(name)
            report = self.datasets.call(
                self.datasets.datasets.GetValidationReport,
                dataset_pb2.GetValidationReportRequest(name=name, page_size=200),
            )
        except NotFound:
            raise NotFound(f"dataset version {name} not found", reason="DATASET_NOT_FOUND", violations=[]) from None
        except Unauthenticated:
            raise Unavailable(
                "the trainer could not authenticate to the dataset service (check TEXTFT_SERVICE_KEY, or TEXTFT_API_KEYS: the first key must be the same on every service)"
            ) from None
        issues = [i for i in report.issues if i.severity == common_pb2.RowIssue.SEVERITY_ERROR][:20]
        if version.task != task:
            raise FailedPrecondition(
                f"dataset version {name} was validated for {common_pb2.Task.Name(version.task)}, "
                f"the model is {common_pb2.Task.Name(task)}",
                reason="TASK_MISMATCH",
            )
        require_rows(version.rows_manifest_object, version.name)
        return version, issues

    def create_version(self, request: trainer_pb2.CreateModelVersionRequest) -> trainer_pb2.ModelVersion:
        model = self.get_model(request.parent, "parent")
        template = get_template(names.parse_template(request.template, "template"))
        if template.task != model.task:
            raise InvalidArgument.for_field(
                "template",
                f"{template.name} is for {common_pb2.Task.Name(template.task)}, the model is {common_pb2.Task.Name(model.task)}",
            )
        tolerance = request.invalid_data_tolerance_percent
        if not 0.0 <= tolerance <= 100.0:
            raise InvalidArgument.for_field(
                "invalid_data_tolerance_percent", f"must be between 0 and 100, got {tolerance:g}"
            )
        overrides = {
            section: json_format.MessageToDict(getattr(request, section))
            for section in ("model_config", "peft_config", "tokenizer_config", "trainer_config")
            if request.HasField(section)
        }
        resolved = configs.validate(configs.merge(template.defaults(), overrides), self.settings.base_models_allowed)
        dataset, issues = self.resolve_dataset(request.dataset_version, model.task)

        parsed = names.parse_model(model.name)
        app = parsed.app
        with self.lock:
            self._admit(app)
            name = names.ModelVersionName(parsed.model, self._allocate_version(parsed), app)
            prefix = version_prefix(name)
            version = trainer_pb2.ModelVersion(
                name=str(name),
                task=model.task,
                dataset_version=request.dataset_version,
                template=template.name,
                model_config=_struct(resolved["model_config"]),
                peft_config=_struct(resolved["peft_config"]),
                tokenizer_config=_struct(resolved["tokenizer_config"]),
                trainer_config=_struct(resolved["trainer_config"]),
                invalid_data_tolerance_percent=tolerance,
                state=MV.STATE_QUEUED,
                label_names=list(dataset.label_names),
                create_time=now(),
                update_time=now(),
                description=request.description,
                lineage=trainer_pb2.Lineage(base_model=resolved["model_config"]["pretrained_model_name_or_path"]),
            )
            spec = job_pb2.TrainingJobSpec(
                model_version=str(name),
                task=model.task,  # type: ignore[arg-type]
                dataset_version=request.dataset_version,
                template=template.name,
                rows_manifest_object=dataset.rows_manifest_object,
                label_names=list(dataset.label_names),
                model_config=version.model_config,
                peft_config=version.peft_config,
                tokenizer_config=version.tokenizer_config,
                trainer_config=version.trainer_config,
                invalid_data_tolerance_percent=tolerance,
                dataset_row_count=dataset.stats.row_count,
                dataset_invalid_row_count=dataset.stats.invalid_row_count,
                dataset_issues=issues,
                store=self.store.describe(),
                output_prefix=prefix,
            )
            self.store.put_json(f"{prefix}/job.json", to_dict(spec))
            self.save_version(version)
            run = Run(version, app=app)
            self.runs[str(name)] = run
        self._event(run, kind=trainer_pb2.ModelVersionEvent.KIND_STATE, state=MV.STATE_QUEUED, message="queued")
        # Kept in memory until a replica claims it: this one runs it from
        # memory (the store may be away); another one drops it (heartbeat).
        self.jobs.enqueue(str(name), f"{prefix}/job.json", app)
        self._wakeup.set()
        return self.get_version(str(name))

    def _admit(self, app: str) -> None:
        """The queue's bound and the app's quota, counted in the database, under
        self.lock so two requests to this replica cannot both take the last place
        (two replicas can, by one)."""
        queued, mine = self.jobs.counts(app)  # every replica's jobs
        limit = self.settings.trainer_max_queued
        if limit > 0 and queued >= limit:
            raise ResourceExhausted(
                f"the training queue is full: {queued} versions wait to start (TEXTFT_TRAINER_MAX_QUEUED={limit}); "
                "retry later, or cancel queued versions",
                reason="TRAINER_QUEUE_FULL",
            )
        stored_quota = self.settings.quota_stored_bytes
        if stored_quota > 0:  # a run adds an adapter and checkpoints: none starts once the app is full
            stored = self.stored.used(app)
            if stored >= stored_quota:
                raise exceeded(app, stored_quota, stored)
        quota = self.settings.quota_jobs
        if quota > 0 and mine >= quota:
            raise ResourceExhausted(
                f"app {app} has {mine} queued or running training jobs; its quota (TEXTFT_QUOTA_JOBS) is {quota}",
                reason="QUOTA_JOBS",
            )

    def cancel(self, name: str) -> trainer_pb2.ModelVersion:
        version = self.get_version(name)
        if version.state in FINAL:
            raise self._not_cancellable(name, version.state)
        with self.lock:
            run = self.runs.get(version.name)
        if run is not None and run.claimed and not run.final:  # this replica runs it
            self._cancel_local(run)
            return self.get_version(name)
        outcome = self.jobs.request_cancel(version.name)
        if outcome == "queued":  # nobody runs it: record the cancel here
            self._cancel_unstarted(run if run is not None and not run.final else self._stored_run(version.name))
        elif outcome == "running":  # another replica runs it: a copy here is stale
            self._forget(version.name)
        else:
            raise self._not_cancellable(name, self.get_version(name).state)
        # "running": its owner's heartbeat stops the job and records CANCELLED
        return self.get_version(name)

    def _forget(self, name: str) -> None:
        with self.lock:
            run = self.runs.get(name)
            if run is not None and not run.claimed and not run.final:
                self.runs.pop(name)

    @staticmethod
    def _not_cancellable(name: str, state: int) -> FailedPrecondition:
        return FailedPrecondition(
            f"model version {name} is {MV.State.Name(state)}; only queued or running versions can be cancelled",
            reason="NOT_CANCELLABLE",
        )

    def _cancel_local(self, run: Run) -> None:
        with run.cond:
            run.cancel_requested = True
            handle = run.handle
        if handle is not None:
            handle.terminate()  # the worker thread records CANCELLED when the child exits
        else:
            self._cancel_unstarted(run)

    def _cancel_unstarted(self, run: Run) -> None:
        failure = common_pb2.Failure(reason="CANCELLED", message="cancelled before it started")
        self._finish(run, MV.STATE_CANCELLED, failure)

    def _stored_run(self, name: str) -> Run:
        """A queued version no replica holds, from its record and events in the store."""
        version = self._load_version_key(f"{name}/version.json")
        prefix = version_prefix(names.parse_model_version(name))
        run = Run(version, events=self._stored_events(prefix))
        with self.lock:
            self.runs[name] = run
        return run

    # ---- events ----
    def _append(self, run: Run, **fields: Any) -> trainer_pb2.ModelVersionEvent:
        """Adds an event to the run's history; the caller holds run.cond."""
        event = trainer_pb2.ModelVersionEvent(sequence=len(run.events), time=now(), **fields)
        run.events.append(event)
        return event

    def _publish(self, run: Run, event: trainer_pb2.ModelVersionEvent, persist: bool) -> None:
        """Persists the run (if asked), then lets watchers see the event."""
        if persist:
            self._persist_events(run)
        with run.cond:
            run.published = max(run.published, event.sequence + 1)
            run.cond.notify_all()

    def _event(self, run: Run, persist: bool = True, **fields: Any) -> None:
        with run.cond:
            event = self._append(run, **fields)
        self._publish(run, event, persist)

    def _persist_events(self, run: Run) -> bool:
        """Writes the run's record (and a pending latest_ready_version) to the
        store. Never raises: when the store is unavailable the run is marked
        dirty and the flusher tries again. True when the store is up to date."""
        with run.persist_lock:
            if self.runs.get(run.version.name) is not run:  # deleted meanwhile: nothing to write back
                return True
            if run.lease_lost:  # another replica owns the run now: its writes are the truth
                return True
            with run.cond:
                lines = [json.dumps(to_dict(e)) for e in run.events]
                version = trainer_pb2.ModelVersion().FromString(run.version.SerializeToString())
                latest_ready = run.latest_ready_pending
            prefix = version_prefix(names.parse_model_version(version.name))
            try:
                if latest_ready:
                    self._write_latest_ready(version.name)
                self.store.put_bytes(
                    f"{prefix}/events.jsonl", ("\n".join(lines) + "\n").encode(), "application/x-ndjson"
                )
                self.save_version(version)
            except (Unavailable, OSError) as exc:
                self._persist_failed(run, exc)
                return False
            with run.cond:
                if latest_ready:
                    run.latest_ready_pending = False
                was_dirty, failures = run.dirty, run.failed_writes
                run.dirty, run.failed_writes = False, 0
            if was_dirty:
                log.info("run %s: record written to the store again after %d failed writes", version.name, failures)
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
                "run %s (%s): could not write its record to the store (%s); kept in memory, retrying until the "
                "store takes it",
                run.version.name,
                state,
                detail,
            )
        self._flush_wakeup.set()

    def _flush_loop(self) -> None:
        """Writes dirty runs again, with capped exponential backoff, until the
        store takes them or the service stops."""
        delay = FLUSH_FIRST_DELAY
        while not self._stop.is_set():
            self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            while not self._stop.is_set():
                dirty = [r for r in list(self.runs.values()) if r.dirty]
                if not dirty:
                    delay = FLUSH_FIRST_DELAY
                    break
                if self._stop.wait(delay):  # the write that made it dirty has just failed
                    return
                results = [self._persist_events(r) for r in dirty]
                delay = FLUSH_FIRST_DELAY if all(results) else min(delay * 2, FLUSH_MAX_DELAY)

    def _set_state(self, run: Run, state: int, message: str = "") -> None:
        with run.cond:
            run.version.state = state
            run.version.update_time.CopyFrom(now())
            event = self._append(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_STATE,
                state=state,
                message=message or MV.State.Name(state),
            )
        self._publish(run, event, persist=True)

    def _finish(self, run: Run, state: int, failure: common_pb2.Failure | None = None) -> None:
        if state == MV.STATE_READY:
            # model.json first, before the run is final (the write is retried
            # with the run's record when the store is unavailable).
            with run.cond:
                run.latest_ready_pending = True
            self._flush_latest_ready(run)
        with run.cond:
            if run.final:
                return
            run.version.state = state
            run.version.update_time.CopyFrom(now())
            if failure is not None:
                run.version.failure.CopyFrom(failure)
            # State and event together: a watcher never sees a final run without its final event.
            event = self._append(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_STATE,
                state=state,
                failure=failure,
                message=failure.message if failure is not None else MV.State.Name(state),
            )
        self._publish(run, event, persist=True)
        app = names.parse_model_version(run.version.name).app
        self.stored.measure_quietly(self.store, app, run.version.name)  # its adapter and checkpoints
        try:
            self.jobs.finish(run.version.name)
        except Exception:  # the record says final; a claim of the row finds that and drops it
            log.exception("run %s: could not mark its job done in the database", run.version.name)

    def _flush_latest_ready(self, run: Run) -> None:
        with run.persist_lock:
            try:
                self._write_latest_ready(run.version.name)
            except (Unavailable, OSError) as exc:
                self._persist_failed(run, exc)
                return
            with run.cond:
                run.latest_ready_pending = False

    def _write_latest_ready(self, version_name: str) -> None:
        """Sets the model's latest_ready_version; raises when the store is unavailable."""
        model_name = version_name.rsplit("/versions/", 1)[0]
        with self.lock:
            try:
                model = self.get_model(model_name)
            except NotFound:
                return
            model.latest_ready_version = version_name
            self.store.put_json(f"{model_name}/model.json", to_dict(model))

    def watch(
        self, name: str, from_sequence: int, is_active: Callable[[], bool]
    ) -> Iterator[trainer_pb2.ModelVersionEvent]:
        """History first, then live events until the run is final or the client
        leaves: from memory while this replica owns the run, else from the
        store, where the owner persists them."""
        version = self.get_version(name)
        index = max(0, from_sequence)
        prefix = version_prefix(names.parse_model_version(version.name))
        while True:
            with self.lock:
                run = self.runs.get(version.name)
            if run is not None:
                index = yield from self._watch_run(run, index, is_active)
                if index < 0:
                    return
                continue  # the run left this replica's memory: follow it in the store
            events = self._stored_events(prefix)
            yield from events[index:]
            index = max(index, len(events))
            if self.get_version(version.name).state in FINAL:
                final = self._stored_events(prefix)  # the final event is written before the final record
                yield from final[index:]
                return
            if not is_active() or self._stop.wait(WATCH_POLL_SECONDS):
                return

    def _watch_run(
        self, run: Run, index: int, is_active: Callable[[], bool]
    ) -> Generator[trainer_pb2.ModelVersionEvent, None, int]:
        """Events from memory; returns -1 when done, or the next index when the
        run has left this replica's memory (another replica took it)."""
        while True:
            with run.cond:
                # The run is over for watchers once its final event is published.
                while (
                    index >= run.published
                    and not (run.final and run.published >= len(run.events))
                    and is_active()
                    and self.runs.get(run.version.name) is run
                ):
                    run.cond.wait(timeout=1.0)  # wakes to notice a departed client or a departed run
                batch = run.events[index : run.published]
                done = run.final and run.published >= len(run.events)
            yield from batch
            index += len(batch)
            if (done and index >= len(run.events)) or not is_active():
                return -1
            if self.runs.get(run.version.name) is not run:
                return index

    # ---- the queue ----
    def _worker_loop(self) -> None:
        while not self.stopping:
            try:
                claim = self.jobs.claim()
            except Exception:
                log.exception("could not claim a job from the database; retrying")
                claim = None
                self._stop.wait(5.0)
            if claim is None:
                if self._wakeup.wait(CLAIM_POLL_SECONDS):
                    self._wakeup.clear()
                continue
            if self.stopping:
                self.jobs.release(claim.target)
                return
            run = None
            try:
                run = self._take_up(claim)
                if run is not None and not run.final:
                    self._run_job(run)
            except Exception as exc:
                log.exception("run %s failed in the trainer service", claim.target)
                if run is not None:
                    message = exc.message if isinstance(exc, TextftError) else "internal error in the trainer service"
                    failure = common_pb2.Failure(reason="MODEL_TRAINING_CRASHED", message=message)
                    self._finish(run, MV.STATE_FAILED, failure)

    def _heartbeat_loop(self) -> None:
        """Renews the leases of the runs this replica holds; acts on cancels
        asked for on other replicas, and stops a job whose lease another
        replica has taken over (it was presumed dead)."""
        interval = max(0.2, self.settings.trainer_lease_seconds / 3)
        while not self._stop.wait(interval):
            with self.lock:
                live = [r for r in self.runs.values() if not r.final and not r.lease_lost]
            for run in live:
                if not run.claimed:  # queued here: once another replica claims it, the copy here is stale
                    try:
                        if self.jobs.state(run.version.name) != "QUEUED" and not run.claimed:
                            self._forget(run.version.name)
                    except Exception:
                        log.debug("could not read the job of %s", run.version.name, exc_info=True)
            for run in [r for r in live if r.claimed]:
                name = run.version.name
                try:
                    lease = self.jobs.renew(name)
                except Exception:
                    log.warning("run %s: could not renew its lease (database unavailable?)", name, exc_info=True)
                    continue
                if not lease.held:
                    with self.lock:
                        if run.final or self.runs.get(name) is not run:
                            continue
                    log.warning("run %s: its lease was taken over by another replica; stopping its job here", name)
                    with run.cond:
                        run.lease_lost = True
                        handle = run.handle
                    if handle is not None:
                        handle.terminate()
                elif lease.cancel_requested and not run.cancel_requested:
                    log.info("run %s: cancel requested on another replica", name)
                    self._cancel_local(run)

    def _time_limit(self, run: Run) -> None:
        with run.cond:
            if run.final or run.handle is None:
                return
            run.time_limited = True
            handle = run.handle
        log.warning("run %s: past TEXTFT_TRAINER_JOB_MAX_SECONDS, stopping its job", run.version.name)
        handle.terminate()

    def _run_job(self, run: Run) -> None:
        name = names.parse_model_version(run.version.name)
        prefix = version_prefix(name)
        workdir = self.settings.trainer_workdir / names.app_prefix(name.app) / name.model / name.version
        env = self.settings.job_environment(dict(os.environ))
        with run.cond:
            if run.cancel_requested or run.final or self.stopping:
                return
            run.handle = self.launcher.start(f"{prefix}/job.json", workdir, env)
        if run.handle.describe():
            self._event(
                run, kind=trainer_pb2.ModelVersionEvent.KIND_LOG, message=f"job started: {run.handle.describe()}"
            )
        started = time.monotonic()
        failure: common_pb2.Failure | None = None
        result: job_pb2.JobResult | None = None
        last_persist = 0.0
        limit = self.settings.trainer_job_max_seconds
        timer = threading.Timer(limit, self._time_limit, args=(run,)) if limit > 0 else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        for event in parse_events(run.handle.lines()):
            kind = event.WhichOneof("event")
            if kind == "state":
                self._set_state(run, event.state)
            elif kind == "progress":
                progress = event.progress.progress
                with run.cond:
                    run.version.progress.CopyFrom(progress)
                tick = time.monotonic()
                persist = tick - last_persist > 5.0
                last_persist = tick if persist else last_persist
                self._event(
                    run,
                    persist=persist,
                    kind=trainer_pb2.ModelVersionEvent.KIND_PROGRESS,
                    progress=progress,
                    loss=event.progress.loss,
                    learning_rate=event.progress.learning_rate,
                    samples_per_second=event.progress.samples_per_second,
                )
            elif kind == "log":
                self._event(run, persist=False, kind=trainer_pb2.ModelVersionEvent.KIND_LOG, message=event.log)
            elif kind == "data":
                with run.cond:
                    run.version.train_row_count = event.data.train_rows
                    run.version.eval_row_count = event.data.eval_rows
                    run.version.skipped_row_count = event.data.skipped_rows
            elif kind == "evaluation":
                evaluation = event.evaluation
                with run.cond:
                    run.version.evaluation.CopyFrom(evaluation)
                self._event(
                    run, kind=trainer_pb2.ModelVersionEvent.KIND_EVALUATION, eval_metrics=dict(evaluation.metrics)
                )
            elif kind == "result":
                result = event.result
            elif kind == "failure":
                failure = event.failure
        code = run.handle.wait()
        if timer is not None:
            timer.cancel()
        log.info("run %s: job exited with %s after %.1fs", run.version.name, code, time.monotonic() - started)
        if run.lease_lost:  # another replica runs it now; what it writes is the truth
            with self.lock:
                if self.runs.get(run.version.name) is run:
                    self.runs.pop(run.version.name)
            return
        if self.stopping and not run.cancel_requested:
            # Not the job's fault: the version stays as it is in the store and
            # the next replica to claim it resumes it from its last checkpoint.
            self._event(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_LOG,
                message="interrupted by a trainer shutdown; resumes from its last checkpoint on another start",
            )
            self.jobs.release(run.version.name)
            return
        if run.cancel_requested:
            self._finish(
                run, MV.STATE_CANCELLED, common_pb2.Failure(reason="CANCELLED", message="cancelled by request")
            )
        elif run.time_limited and not (code == 0 and result is not None):
            message = (
                f"stopped after {time.monotonic() - started:.0f} s: a job may run "
                f"{self.settings.trainer_job_max_seconds:g} s (TEXTFT_TRAINER_JOB_MAX_SECONDS); "
                "lower max_steps or num_train_epochs, or ask for a longer limit"
            )
            self._finish(run, MV.STATE_FAILED, common_pb2.Failure(reason="MODEL_TRAINING_TIME_LIMIT", message=message))
        elif code == 0 and result is not None:
            with run.cond:
                run.version.adapter_uri = result.adapter_uri
                run.version.lineage.CopyFrom(result.lineage)
                run.version.world_size = result.world_size or 1
                run.version.progress.percent_completed = 100.0
                run.version.progress.ClearField("time_remaining")
            self._finish(run, MV.STATE_READY)
        else:
            if failure is None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                hint = " (out of memory?)" if code in (-9, 137) else ""
                failure = common_pb2.Failure(
                    reason="MODEL_TRAINING_CRASHED", message=f"the training process {how}{hint}"
                )
            self._finish(run, MV.STATE_FAILED, failure)
