"""The job's entry point: its command line, its spec, and how it ends (exit
code and failure event)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from google.protobuf import json_format

from textft.errors import InvalidArgument
from textft.internal.v1 import job_pb2

from ...common.config import Settings
from ...common.logs import setup_logging
from ...common.store import ObjectStore, open_store
from ...modeling.data import JobFailure
from ..events import Emitter
from .evaluation import evaluate_version
from .retry import StoreRetry
from .run import run_job

EXIT_FAILED = 3
EXIT_ORPHANED = 4  # the launcher went away (its lifeline pipe closed)
log = logging.getLogger("textft.worker")


def _lifeline() -> None:
    """Exits when stdin reaches EOF: the launcher holds the pipe's other end, so
    a launcher that dies (even SIGKILLed) takes its jobs with it instead of
    leaving orphans that keep training and uploading beside a resumed run."""
    fd = sys.stdin.fileno()

    def watch() -> None:
        # os.read on the raw descriptor: a daemon thread blocked inside
        # sys.stdin's buffered reader aborts the interpreter at exit.
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def read_spec(store: ObjectStore, key: str) -> job_pb2.TrainingJobSpec:
    """The spec at key, for this store: a spec written for another store (the
    job's environment names a different one) is refused."""
    spec = json_format.ParseDict(store.get_json(key), job_pb2.TrainingJobSpec(), ignore_unknown_fields=True)
    if spec.store and spec.store != store.describe():
        raise JobFailure(
            "MODEL_TRAINING_STORE_MISMATCH",
            f"the job was written for the store {spec.store}, but its environment opens {store.describe()}; "
            "start it with the trainer service's store settings",
        )
    return spec


def parser() -> argparse.ArgumentParser:
    """The job's command line (what every launcher passes)."""
    parser = argparse.ArgumentParser(prog="textft-train-job", description="Run one textft training job.")
    parser.add_argument("--job", required=True, help="store key of the job's TrainingJobSpec (job.json)")
    parser.add_argument("--workdir", required=True, help="scratch directory of this job")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the local launcher keeps it open for the job's lifetime)",
    )
    return parser


def main(argv: list[str] | None = None, events: TextIO | None = None) -> int:
    """Runs the job; its events go to `events` (stdout by default: the local
    launcher's pipe; a Ray Train worker passes its mailbox)."""
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging("train-job", settings.log_level, settings.log_format, settings.secrets())
    if args.exit_on_stdin_eof:
        _lifeline()
    emitter = Emitter(events, enabled=settings.rank == 0)
    workdir = Path(args.workdir)  # shared by the ranks of one node: only rank 0 writes outside out/
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # relative paths a library might write land in the job's directory
    try:
        retry = StoreRetry(settings.store_retry_seconds, emitter)
        store = retry("connecting to the store", lambda: open_store(settings.store))
        spec = retry("reading the job", lambda: read_spec(store, args.job))
        if spec.HasField("evaluation"):
            emitter.emit(job_pb2.JobEvent(evaluation=evaluate_version(spec, store, settings, workdir, emitter)))
            return 0
        result = run_job(spec, store, settings, workdir, emitter)
        if result is not None:
            emitter.emit(job_pb2.JobEvent(result=result))
        return 0
    except JobFailure as failure:
        emitter.failure(failure.reason, scrub(failure.message, settings), failure.field, failure.rows)
        return EXIT_FAILED
    except InvalidArgument as exc:  # a check at load time, e.g. a subfolder that leaves the base model
        field = exc.violations[0].field if exc.violations else ""
        emitter.failure("MODEL_TRAINING_INVALID_PARAMS", scrub(exc.message, settings)[:1000], field)
        return EXIT_FAILED
    except Exception as exc:
        # Through the logger, not traceback.print_exc(): its SecretFilter
        # scrubs API keys, store credentials and HF tokens from the traceback
        # before it reaches job.log.
        log.exception("the training job crashed")
        message = scrub(f"{type(exc).__name__}: {exc}", settings)
        reason = "MODEL_TRAINING_OUT_OF_MEMORY" if "out of memory" in message.lower() else "MODEL_TRAINING_CRASHED"
        emitter.failure(reason, message[:1000])
        return EXIT_FAILED


def scrub(message: str, settings: Settings) -> str:
    """message without the secrets of settings (what the log filter does for records)."""
    for secret in settings.secrets():
        message = message.replace(secret, "***")
    return message
