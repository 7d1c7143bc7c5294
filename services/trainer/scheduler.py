"""Running the queue: claiming jobs, holding their leases, following each
job's events into its run, cancelling, and taking runs up after a restart.

Replicas and restarts: the queue lives in the metadata database
(jobqueue.py), shared by every trainer replica on it. A replica claims a job,
holds a lease it renews while the job runs, and keeps the run in memory only
while it owns it; the others serve the run from the database (GetModelVersion,
and WatchModelVersion by polling its events). When a replica dies its leases
expire and another one takes the runs up: QUEUED or PREPARING_DATA ones start
afresh (nothing was trained), later ones resume from their newest checkpoint,
or FAIL with MODEL_TRAINING_INTERRUPTED when they have none. Cancel sets a
flag on the job that the owner's heartbeat acts on, so any replica takes it.
"""

from __future__ import annotations

import logging
import threading
import time

from textft.errors import FailedPrecondition, NotFound, TextftError
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, trainer_pb2

from ..common import names
from ..common.config import Settings
from . import checkpoints
from .events import parse_events
from .jobqueue import Claim, JobQueue
from .launcher import Launcher
from .records import FINAL, MV, Records, Run, version_prefix
from .runlog import RunLog

log = logging.getLogger("textft.trainer")
CLAIM_POLL_SECONDS = 1.0  # how often an idle worker asks the database for a job (sooner when woken)
PROGRESS_PERSIST_SECONDS = 5.0  # progress events are written to the database at most this often


class Scheduler:
    def __init__(
        self, settings: Settings, records: Records, runlog: RunLog, jobs: JobQueue, launcher: Launcher
    ) -> None:
        self.settings = settings
        self.records = records
        self.runlog = runlog
        self.jobs = jobs
        self.launcher = launcher
        self.stopping = False
        self._stopped = threading.Event()
        self._wakeup = threading.Event()  # a job was queued here: idle workers claim now
        self.threads = [
            threading.Thread(target=self._worker_loop, name=f"train-{i}", daemon=True)
            for i in range(max(1, settings.trainer_concurrency))
        ]
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="lease-heartbeat", daemon=True)

    # ---- lifecycle ----
    def start(self) -> None:
        self._adopt()
        released = self.jobs.release_dead_local_owners()
        if released:
            log.info("released %d leases of trainer processes on this host that are gone", released)
        log.info("trainer replica %s: lease %.0fs", self.jobs.owner, self.settings.trainer_lease_seconds)
        self._heartbeat.start()
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stops running jobs (their versions stay as they are in the database,
        for the next start to resume or fail them) and claims no more."""
        self.stopping = True
        for run in list(self.records.runs.values()):
            if run.handle is not None and not run.final:
                run.handle.terminate()
        self._wakeup.set()

    def join(self, deadline: float) -> None:
        """Waits (until the monotonic deadline) for the workers to end, then stops the heartbeat."""
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        self._stopped.set()

    def enqueue(self, run: Run, job_key: str, max_queued: int = 0, app_quota: int = 0) -> None:
        """Queues a new run's job (QueueFull past the bounds). The run stays in
        memory until a replica claims it: this one runs it from memory; another
        one drops it (heartbeat)."""
        self.jobs.enqueue(run.version.name, job_key, run.app, max_queued, app_quota)
        self._wakeup.set()

    def _adopt(self) -> None:
        """Records and job rows for unfinished versions a store holds from
        before the database held them (an upgrade); a no-op afterwards."""
        pending = self.records.import_store()
        added = self.jobs.adopt([(v.name, f"{v.name}/job.json") for v in pending])
        if added:
            log.info("queued %d unfinished versions imported from the store", added)

    def _take_up(self, claim: Claim) -> Run | None:
        """The run of a job this replica has just claimed: the one in memory
        when it was queued here, else its record from the database, resumed from
        its newest checkpoint when an earlier attempt had started training."""
        with self.records.lock:
            run = self.records.runs.get(claim.target)
        if run is not None and not run.final and not run.claimed and claim.previous_owner is None:
            run.claimed = True
            return run
        try:
            version = self.records.load_version(claim.target)
        except NotFound:
            log.warning("job %s has no model version in the database (deleted?); dropping it", claim.target)
            self.jobs.finish(claim.target)
            return None
        if version.state in FINAL:
            self.jobs.finish(claim.target)
            return None
        prefix = version_prefix(names.parse_model_version(version.name))
        run = Run(version, events=self.records.stored_events(version.name), app=claim.app, claimed=True)
        with self.records.lock:
            self.records.runs[version.name] = run
        if claim.previous_owner is None and version.state == MV.STATE_QUEUED:
            return run  # queued on another replica (or before a restart): a fresh start
        step = checkpoints.latest_step(self.records.store, checkpoints.checkpoints_prefix(prefix))
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
            self.runlog.finish(
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
        self.runlog.set_state(run, MV.STATE_QUEUED, message)
        return run

    # ---- cancel ----
    def cancel(self, name: str) -> trainer_pb2.ModelVersion:
        version = self.records.get_version(name)
        if version.state in FINAL:
            raise _not_cancellable(name, version.state)
        with self.records.lock:
            run = self.records.runs.get(version.name)
        if run is not None and run.claimed and not run.final:  # this replica runs it
            self._cancel_local(run)
            return self.records.get_version(name)
        outcome = self.jobs.request_cancel(version.name)
        if outcome == "queued":  # nobody runs it: record the cancel here
            self._cancel_unstarted(run if run is not None and not run.final else self.records.stored_run(version.name))
        elif outcome == "running":  # another replica runs it: a copy here is stale
            self.records.forget(version.name)
        else:
            raise _not_cancellable(name, self.records.get_version(name).state)
        # "running": its owner's heartbeat stops the job and records CANCELLED
        return self.records.get_version(name)

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
        self.runlog.finish(run, MV.STATE_CANCELLED, failure)

    # ---- the queue ----
    def _worker_loop(self) -> None:
        while not self.stopping:
            try:
                claim = self.jobs.claim()
            except Exception:
                log.exception("could not claim a job from the database; retrying")
                claim = None
                self._stopped.wait(5.0)
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
                    self.runlog.finish(run, MV.STATE_FAILED, failure)

    def _heartbeat_loop(self) -> None:
        """Renews the leases of the runs this replica holds; acts on cancels
        asked for on other replicas, and stops a job whose lease another
        replica has taken over (it was presumed dead)."""
        interval = max(0.2, self.settings.trainer_lease_seconds / 3)
        while not self._stopped.wait(interval):
            with self.records.lock:
                live = [r for r in self.records.runs.values() if not r.final and not r.lease_lost]
            for run in live:
                if not run.claimed:  # queued here: once another replica claims it, the copy here is stale
                    try:
                        if self.jobs.state(run.version.name) != "QUEUED" and not run.claimed:
                            self.records.forget(run.version.name)
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
                    with self.records.lock:
                        if run.final or self.records.runs.get(name) is not run:
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

    # ---- one job ----
    def _run_job(self, run: Run) -> None:
        """Starts the run's job, follows its events into the run, and records how it ended."""
        name = names.parse_model_version(run.version.name)
        prefix = version_prefix(name)
        workdir = self.settings.trainer_workdir / names.app_prefix(name.app) / name.model / name.version
        env = self.settings.job_environment()
        with run.cond:
            if run.cancel_requested or run.final or self.stopping:
                return
            run.handle = self.launcher.start(f"{prefix}/job.json", workdir, env)
        if run.handle.describe():
            self.runlog.event(
                run, kind=trainer_pb2.ModelVersionEvent.KIND_LOG, message=f"job started: {run.handle.describe()}"
            )
        started = time.monotonic()
        limit = self.settings.trainer_job_max_seconds
        timer = threading.Timer(limit, self._time_limit, args=(run,)) if limit > 0 else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        result, failure = self._follow(run)
        code = run.handle.wait()
        if timer is not None:
            timer.cancel()
        log.info("run %s: job exited with %s after %.1fs", run.version.name, code, time.monotonic() - started)
        self._ended(run, code, result, failure, time.monotonic() - started)

    def _follow(self, run: Run) -> tuple[job_pb2.JobResult | None, common_pb2.Failure | None]:
        """Turns the job's events into the run's record and events, until the job's output ends."""
        failure: common_pb2.Failure | None = None
        result: job_pb2.JobResult | None = None
        last_persist = 0.0
        for event in parse_events(run.handle.lines()):
            kind = event.WhichOneof("event")
            if kind == "state":
                self.runlog.set_state(run, event.state)
            elif kind == "progress":
                progress = event.progress.progress
                with run.cond:
                    run.version.progress.CopyFrom(progress)
                tick = time.monotonic()
                persist = tick - last_persist > PROGRESS_PERSIST_SECONDS
                last_persist = tick if persist else last_persist
                self.runlog.event(
                    run,
                    persist=persist,
                    kind=trainer_pb2.ModelVersionEvent.KIND_PROGRESS,
                    progress=progress,
                    loss=event.progress.loss,
                    learning_rate=event.progress.learning_rate,
                    samples_per_second=event.progress.samples_per_second,
                )
            elif kind == "log":
                self.runlog.event(run, persist=False, kind=trainer_pb2.ModelVersionEvent.KIND_LOG, message=event.log)
            elif kind == "data":
                with run.cond:
                    run.version.train_row_count = event.data.train_rows
                    run.version.eval_row_count = event.data.eval_rows
                    run.version.skipped_row_count = event.data.skipped_rows
            elif kind == "evaluation":
                evaluation = event.evaluation
                with run.cond:
                    run.version.evaluation.CopyFrom(evaluation)
                self.runlog.event(
                    run, kind=trainer_pb2.ModelVersionEvent.KIND_EVALUATION, eval_metrics=dict(evaluation.metrics)
                )
            elif kind == "result":
                result = event.result
            elif kind == "failure":
                failure = event.failure
        return result, failure

    def _ended(
        self,
        run: Run,
        code: int,
        result: job_pb2.JobResult | None,
        failure: common_pb2.Failure | None,
        elapsed: float,
    ) -> None:
        if run.lease_lost:  # another replica runs it now; what it writes is the truth
            with self.records.lock:
                if self.records.runs.get(run.version.name) is run:
                    self.records.runs.pop(run.version.name)
            return
        if self.stopping and not run.cancel_requested:
            # Not the job's fault: the version stays as it is in the database and
            # the next replica to claim it resumes it from its last checkpoint.
            self.runlog.event(
                run,
                kind=trainer_pb2.ModelVersionEvent.KIND_LOG,
                message="interrupted by a trainer shutdown; resumes from its last checkpoint on another start",
            )
            self.jobs.release(run.version.name)
            return
        if run.cancel_requested:
            self.runlog.finish(
                run, MV.STATE_CANCELLED, common_pb2.Failure(reason="CANCELLED", message="cancelled by request")
            )
        elif run.time_limited and not (code == 0 and result is not None):
            message = (
                f"stopped after {elapsed:.0f} s: a job may run "
                f"{self.settings.trainer_job_max_seconds:g} s (TEXTFT_TRAINER_JOB_MAX_SECONDS); "
                "lower max_steps or num_train_epochs, or ask for a longer limit"
            )
            failure = common_pb2.Failure(reason="MODEL_TRAINING_TIME_LIMIT", message=message)
            self.runlog.finish(run, MV.STATE_FAILED, failure)
        elif code == 0 and result is not None:
            with run.cond:
                run.version.adapter_uri = result.adapter_uri
                run.version.lineage.CopyFrom(result.lineage)
                run.version.world_size = result.world_size or 1
                run.version.progress.percent_completed = 100.0
                run.version.progress.ClearField("time_remaining")
            self.runlog.finish(run, MV.STATE_READY)
        else:
            if failure is None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                hint = " (out of memory?)" if code in (-9, 137) else ""
                failure = common_pb2.Failure(
                    reason="MODEL_TRAINING_CRASHED", message=f"the training process {how}{hint}"
                )
            self.runlog.finish(run, MV.STATE_FAILED, failure)


def _not_cancellable(name: str, state: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"model version {name} is {MV.State.Name(state)}; only queued or running versions can be cancelled",
        reason="NOT_CANCELLABLE",
    )
