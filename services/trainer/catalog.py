"""Templates, models and the creation of model versions: what a request asks
for is checked, resolved against its template and dataset version, admitted
(the queue's bound, the app's quota), recorded, and queued."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from textft import Client
from textft.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, dataset_pb2, trainer_pb2

from ..common import names
from ..common.access import caller_app
from ..common.config import Settings
from ..common.db import Database
from ..common.protojson import now, to_dict
from ..common.rows import require_rows
from ..common.usage import StoredBytes, exceeded
from . import configs
from .jobqueue import JobQueue, QueueFull
from .records import FINAL, MV, Records, Run, model_prefix, version_prefix
from .runlog import RunLog
from .scheduler import Scheduler
from .templates import TEMPLATES, get_template

TASK_NAMES = {
    common_pb2.TASK_TEXT_CLASSIFICATION: "TEXT_CLASSIFICATION",
    common_pb2.TASK_TEXT_GENERATION: "TEXT_GENERATION",
}


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


class Catalog:
    def __init__(
        self,
        settings: Settings,
        records: Records,
        database: Database,
        datasets: Client,
        jobs: JobQueue,
        runlog: RunLog,
        scheduler: Scheduler,
        stored: StoredBytes,
    ) -> None:
        self.settings = settings
        self.records = records
        self.database = database
        self.datasets = datasets
        self.jobs = jobs
        self.runlog = runlog
        self.scheduler = scheduler
        self.stored = stored

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
        model = trainer_pb2.Model(
            name=str(model_name),
            task=request.task,
            description=request.description,
            labels=dict(request.labels),
            create_time=now(),
        )
        self.records.create_model(model)  # ALREADY_EXISTS: the name is the row's key, on every replica
        return model

    def delete_model(self, name: str) -> None:
        model = self.records.get_model(name)
        parsed = names.parse_model(model.name)
        active = [v.name for v in self.records.list_versions(model.name) if v.state not in FINAL]  # on any replica
        if active:
            raise FailedPrecondition(f"model {name} has runs in progress ({', '.join(active)}); cancel them first")
        runs = self.records.runs
        for run_name, run in list(runs.items()):
            if run_name.startswith(model.name + "/"):
                with run.persist_lock:  # a write in progress ends first; none starts after (see RunLog.persist)
                    runs.pop(run_name, None)
        self.records.delete_model(model.name)  # rows first: the name is gone on every replica at once
        self.records.store.delete_prefix(model_prefix(parsed) + "/")
        self.stored.forget(parsed.app, str(parsed))

    def _allocate_version(self, model: names.ModelName) -> str:
        """The next version id, from the metadata database: never handed out
        twice, even after the model is deleted and created anew, so the
        inference cache and lineage, keyed by version name, never mistake a new
        v1 for an old one. The versions' rows are the floor, for versions
        imported from a store from before the database kept count."""
        floor = self.records.highest_number(str(model))
        with self.database.write() as conn:
            return f"v{self.database.allocate(conn, 'model_version', model.model, app=model.app, floor=floor)}"

    # ---- versions ----
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
        model = self.records.get_model(request.parent, "parent")
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
        store = self.records.store
        with self.records.lock:
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
                store=store.describe(),
                output_prefix=prefix,
            )
            store.put_json(f"{prefix}/job.json", to_dict(spec))
            self.records.save_version(version)
            run = Run(version, app=app)
            self.records.runs[str(name)] = run
            self.runlog.event(
                run, kind=trainer_pb2.ModelVersionEvent.KIND_STATE, state=MV.STATE_QUEUED, message="queued"
            )
            try:
                self.scheduler.enqueue(
                    run, f"{prefix}/job.json", self.settings.trainer_max_queued, self.settings.quota_jobs
                )
            except QueueFull as full:  # another replica took the last place: this version never was
                with run.persist_lock:  # a write behind in progress ends first; none starts after
                    self.records.runs.pop(str(name), None)
                self.records.delete_version(str(name))
                store.delete_prefix(prefix + "/")
                raise _queue_full(full, app) from None
        return self.records.get_version(str(name))

    def _admit(self, app: str) -> None:
        """Refuses early, before anything is written, when the queue's bound or
        an app quota is reached. The bound and the jobs quota are checked again
        exactly where the job is enqueued (JobQueue.enqueue), so replicas
        admitting at once never pass them."""
        queued, mine = self.jobs.counts(app)  # every replica's jobs
        if self.settings.trainer_max_queued > 0 and queued >= self.settings.trainer_max_queued:
            raise _queue_full(QueueFull("queue", queued, self.settings.trainer_max_queued), app)
        stored_quota = self.settings.quota_stored_bytes
        if stored_quota > 0:  # a run adds an adapter and checkpoints: none starts once the app is full
            stored = self.stored.used(app)
            if stored >= stored_quota:
                raise exceeded(app, stored_quota, stored)
        if self.settings.quota_jobs > 0 and mine >= self.settings.quota_jobs:
            raise _queue_full(QueueFull("app", mine, self.settings.quota_jobs), app)


def _queue_full(full: QueueFull, app: str) -> ResourceExhausted:
    if full.bound == "queue":
        return ResourceExhausted(
            f"the training queue is full: {full.count} versions wait to start "
            f"(TEXTFT_TRAINER_MAX_QUEUED={full.limit}); retry later, or cancel queued versions",
            reason="TRAINER_QUEUE_FULL",
        )
    return ResourceExhausted(
        f"app {app} has {full.count} queued or running training jobs; its quota (TEXTFT_QUOTA_JOBS) is {full.limit}",
        reason="QUOTA_JOBS",
    )
