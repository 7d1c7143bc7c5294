"""Evaluations of READY model versions on any dataset version of their task: a
long-running operation. EvaluateModelVersion returns at once with the
evaluation RUNNING; a thread follows the evaluation job (the same entry point
as training, with the spec's evaluation target) and records how it ended;
GetModelEvaluation polls it and WatchModelEvaluation follows it. Evaluations
run on the replica that was asked (they are not queued in the database); at
most TEXTFT_TRAINER_MAX_EVALUATIONS at once.

Store layout: models/{model}/versions/{version}/evaluations/{id}/evaluation.json,
and the latest evaluation per dataset version on the ModelVersion and in its
metrics.json.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from textft.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, dataset_pb2, trainer_pb2

from ..common import names
from ..common.config import Settings
from ..common.protojson import now, to_dict
from .events import parse_events
from .launcher import Launcher
from .records import MV, Records, version_prefix

log = logging.getLogger("textft.trainer")
ME = trainer_pb2.ModelEvaluation


@dataclass
class EvaluationRun:
    """A live evaluation: its record, the job's handle, and watchers' condition."""

    evaluation: trainer_pb2.ModelEvaluation
    prefix: str  # models/{model}/versions/{version}/evaluations/{evaluation}
    cond: threading.Condition = field(default_factory=threading.Condition)
    handle: Any = None
    changes: int = 0  # bumped on every update, so watchers notice each one

    def update(self, **fields: Any) -> None:
        with self.cond:
            for key, value in fields.items():
                if isinstance(value, (common_pb2.Progress, common_pb2.Failure, trainer_pb2.Evaluation)):
                    getattr(self.evaluation, key).CopyFrom(value)
                else:
                    setattr(self.evaluation, key, value)
            if fields.get("state") == ME.STATE_SUCCEEDED:
                self.evaluation.progress.percent_completed = 100.0
                self.evaluation.progress.ClearField("time_remaining")
            self.evaluation.update_time.CopyFrom(now())
            self.changes += 1
            self.cond.notify_all()

    def snapshot(self) -> trainer_pb2.ModelEvaluation:
        with self.cond:
            return trainer_pb2.ModelEvaluation().FromString(self.evaluation.SerializeToString())


def _parse_evaluation(name: str) -> tuple[names.ModelVersionName, str]:
    """models/{model}/versions/{version}/evaluations/{evaluation}, checked."""
    version, sep, evaluation_id = name.rpartition("/evaluations/")
    if not sep or not re.fullmatch(r"e[0-9]{1,24}", evaluation_id):
        raise InvalidArgument.for_field(
            "name",
            f"{name[:200]!r} is not an evaluation name: models/{{model}}/versions/{{version}}/evaluations/{{id}}",
        )
    return names.parse_model_version(version, "name"), evaluation_id


class Evaluations:
    """The evaluations this replica runs, and the ones in the store."""

    def __init__(
        self,
        settings: Settings,
        records: Records,
        launcher: Launcher,
        resolve_dataset: Callable[[str, int], tuple[dataset_pb2.DatasetVersion, list[common_pb2.RowIssue]]],
        is_stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.records = records
        self.launcher = launcher
        self.resolve_dataset = resolve_dataset
        self.is_stopping = is_stopping
        self.runs: dict[str, EvaluationRun] = {}

    def stop(self) -> None:
        """Stops running evaluation jobs (a shutdown); their evaluations end FAILED, interrupted."""
        for run in list(self.runs.values()):
            with run.cond:
                if run.handle is not None:
                    run.handle.terminate()

    def start(self, name: str, dataset_version: str) -> trainer_pb2.ModelEvaluation:
        """Starts the evaluation job of a READY version on a dataset version
        and returns the evaluation, RUNNING; a thread follows the job (see
        _run)."""
        version = self.records.get_version(name)
        if version.state != MV.STATE_READY:
            raise FailedPrecondition(
                f"model version {version.name} is {MV.State.Name(version.state)}; only READY versions can be evaluated",
                reason="MODEL_VERSION_NOT_READY",
            )
        if not dataset_version:
            raise InvalidArgument.for_field("dataset_version", "required: datasets/{dataset}/versions/{version}")
        dataset, _ = self.resolve_dataset(dataset_version, version.task)
        parsed = names.parse_model_version(version.name)
        prefix = version_prefix(parsed)
        evaluation_id = f"e{time.time_ns()}"
        spec = json_format.ParseDict(
            self.records.store.get_json(f"{prefix}/job.json"), job_pb2.TrainingJobSpec(), ignore_unknown_fields=True
        )
        spec.evaluation.CopyFrom(
            job_pb2.EvaluationTarget(
                dataset_version=dataset.name or dataset_version, rows_manifest_object=dataset.rows_manifest_object
            )
        )
        evaluation = trainer_pb2.ModelEvaluation(
            name=f"{version.name}/evaluations/{evaluation_id}",
            dataset_version=dataset.name or dataset_version,
            state=ME.STATE_RUNNING,
            create_time=now(),
            update_time=now(),
        )
        run = EvaluationRun(evaluation, f"{prefix}/evaluations/{evaluation_id}")
        with self.records.lock:
            running = sum(1 for r in self.runs.values() if r.evaluation.state == ME.STATE_RUNNING)
            limit = self.settings.trainer_max_evaluations
            if limit > 0 and running >= limit:
                raise ResourceExhausted(
                    f"{running} evaluations are running, the most at once (TEXTFT_TRAINER_MAX_EVALUATIONS={limit}); "
                    "retry when one ends",
                    reason="EVALUATIONS_BUSY",
                )
            self.runs[evaluation.name] = run
        try:
            self.records.store.put_json(f"{run.prefix}/job.json", to_dict(spec))
            self.records.store.put_json(f"{run.prefix}/evaluation.json", to_dict(evaluation))
        except BaseException:
            with self.records.lock:
                self.runs.pop(evaluation.name, None)
            raise
        workdir = (
            self.settings.trainer_workdir / names.app_prefix(parsed.app) / parsed.model / parsed.version
        ) / evaluation_id
        thread = threading.Thread(
            target=self._run, args=(run, version.name, prefix, workdir), name="evaluation", daemon=True
        )
        thread.start()
        return run.snapshot()

    def _run(self, run: EvaluationRun, version_name: str, prefix: str, workdir: Any) -> None:
        """Runs the evaluation job to its end and records how it ended."""
        evaluation: trainer_pb2.Evaluation | None = None
        failure = common_pb2.Failure()
        code: int | None = None
        try:
            with run.cond:
                if self.is_stopping():
                    raise RuntimeError("the trainer is shutting down")
                env = self.settings.job_environment()
                run.handle = self.launcher.start(f"{run.prefix}/job.json", workdir, env, distributed=False)
            for event in parse_events(run.handle.lines()):
                if event.HasField("progress"):
                    run.update(progress=event.progress.progress)
                elif event.HasField("evaluation"):
                    evaluation = event.evaluation
                elif event.HasField("failure"):
                    failure = event.failure
            code = run.handle.wait()
            if evaluation is not None and code == 0:
                self._store_result(version_name, prefix, evaluation)
        except Exception:
            log.exception("evaluation %s failed in the trainer service", run.evaluation.name)
            code = None
        if evaluation is not None and code == 0:
            run.update(state=ME.STATE_SUCCEEDED, result=evaluation)
        elif failure.reason == "EVALUATION_NO_USABLE_ROWS":
            run.update(state=ME.STATE_FAILED, failure=failure, error_code=grpc.StatusCode.FAILED_PRECONDITION.value[0])
        elif self.is_stopping():
            interrupted = common_pb2.Failure(
                reason="EVALUATION_INTERRUPTED", message="the trainer shut down during the evaluation; start it again"
            )
            run.update(state=ME.STATE_FAILED, failure=interrupted, error_code=grpc.StatusCode.ABORTED.value[0])
        else:
            log.error("evaluation %s ended with exit code %s: %s", run.evaluation.name, code, failure.message)
            broken = common_pb2.Failure(
                reason="EVALUATION_FAILED", message="the evaluation process failed; see the trainer's log"
            )
            run.update(state=ME.STATE_FAILED, failure=broken, error_code=grpc.StatusCode.INTERNAL.value[0])
        try:
            self.records.store.put_json(f"{run.prefix}/evaluation.json", to_dict(run.snapshot()))
            self.records.store.delete(f"{run.prefix}/job.json")
        except Exception:
            log.exception("could not store evaluation %s; it is kept in memory", run.evaluation.name)

    def get(self, name: str) -> trainer_pb2.ModelEvaluation:
        parsed = _parse_evaluation(name)
        with self.records.lock:
            run = self.runs.get(name)
        if run is not None:
            return run.snapshot()
        prefix = version_prefix(parsed[0])
        try:
            data = self.records.store.get_json(f"{prefix}/evaluations/{parsed[1]}/evaluation.json")
        except NotFound:
            raise NotFound(f"evaluation {name} not found", reason="EVALUATION_NOT_FOUND") from None
        evaluation = json_format.ParseDict(data, trainer_pb2.ModelEvaluation(), ignore_unknown_fields=True)
        if evaluation.state == ME.STATE_RUNNING:  # its trainer stopped before it ended
            evaluation.state = ME.STATE_FAILED
            evaluation.failure.CopyFrom(
                common_pb2.Failure(
                    reason="EVALUATION_INTERRUPTED",
                    message="the trainer restarted during the evaluation; start it again",
                )
            )
            evaluation.error_code = grpc.StatusCode.ABORTED.value[0]
        return evaluation

    def watch(self, name: str, is_active: Callable[[], bool]) -> Iterator[trainer_pb2.ModelEvaluation]:
        """The evaluation now, then after each change, until it is done or the client leaves."""
        _parse_evaluation(name)
        with self.records.lock:
            run = self.runs.get(name)
        if run is None:  # not of this process: as stored, already final
            yield self.get(name)
            return
        with run.cond:
            seen = run.changes
            snapshot = trainer_pb2.ModelEvaluation().FromString(run.evaluation.SerializeToString())
        yield snapshot
        while snapshot.state == ME.STATE_RUNNING and is_active():
            with run.cond:
                if run.changes == seen:
                    run.cond.wait(timeout=1.0)  # wakes to notice a departed client
                    continue
                seen = run.changes
                snapshot = trainer_pb2.ModelEvaluation().FromString(run.evaluation.SerializeToString())
            yield snapshot

    def _store_result(self, name: str, prefix: str, evaluation: trainer_pb2.Evaluation) -> None:
        """Latest evaluation per dataset version, on the version and in metrics.json."""
        with self.records.lock:
            run = self.records.runs.get(name)
            version = run.version if run is not None else self.records.get_version(name)
            cond = run.cond if run is not None else threading.Condition()
            with cond:
                kept = [e for e in version.evaluations if e.dataset_version != evaluation.dataset_version]
                del version.evaluations[:]
                version.evaluations.extend([*kept, evaluation])
                snapshot = trainer_pb2.ModelVersion().FromString(version.SerializeToString())
            self.records.save_version(snapshot)
            try:
                metrics = self.records.store.get_json(f"{prefix}/metrics.json")
            except NotFound:
                metrics = {}
            metrics.setdefault("evaluations", {})[evaluation.dataset_version] = to_dict(evaluation)
            self.records.store.put_json(f"{prefix}/metrics.json", metrics)
