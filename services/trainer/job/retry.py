"""Store outages: every store read and write of the job goes through
StoreRetry, which retries while the store is unavailable (capped exponential
backoff, for TEXTFT_STORE_RETRY_SECONDS per operation) and reports each retry
as a log event; past that budget the job FAILS with
MODEL_TRAINING_STORE_UNAVAILABLE. Every retried operation is idempotent (an
upload starts over from scratch)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from textft.errors import Unavailable

from ...modeling.data import JobFailure
from ..events import Emitter

STORE_UNAVAILABLE = "MODEL_TRAINING_STORE_UNAVAILABLE"
log = logging.getLogger("textft.worker")
T = TypeVar("T")


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a store that went away raises: Unavailable from the store's own
    calls, and urllib3's errors from a response cut while it is being read."""
    try:
        from urllib3.exceptions import HTTPError
    except ImportError:  # no S3 client installed: only the local store
        return (Unavailable,)
    return (Unavailable, HTTPError)


class StoreRetry:
    """Runs one store operation of the job, again and again while the store is
    unavailable: capped exponential backoff, for at most `budget` seconds per
    operation, each retry reported as a log event (watchers see it). Past the
    budget: JobFailure MODEL_TRAINING_STORE_UNAVAILABLE. Operations passed in
    must be idempotent (they may run again after failing half way)."""

    def __init__(
        self,
        budget: float,
        emitter: Emitter,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = max(0.0, budget)
        self.emitter = emitter
        self.first_delay, self.max_delay = first_delay, max_delay
        self.sleep, self.clock = sleep, clock
        self.retries = 0  # over the job's lifetime
        self.transient = _transient_errors()

    def __call__(self, what: str, operation: Callable[[], T]) -> T:
        deadline = self.clock() + self.budget
        delay, attempt = self.first_delay, 0
        while True:
            try:
                result = operation()
            except self.transient as exc:
                attempt += 1
                detail = exc.message if isinstance(exc, Unavailable) else f"{type(exc).__name__}"
                left = deadline - self.clock()
                if left <= 0:
                    raise JobFailure(
                        STORE_UNAVAILABLE,
                        f"the object store was unavailable while {what} and did not come back within "
                        f"{self.budget:g}s ({attempt} attempts; last error: {detail}). Check that the store "
                        "(MINIO_ENDPOINT) is reachable, then create a new version to train again; "
                        "TEXTFT_STORE_RETRY_SECONDS sets how long a job waits for the store.",
                    ) from None
                wait = min(delay, left)
                self.retries += 1
                message = (
                    f"object store unavailable while {what}, retrying (attempt {attempt}) in {wait:.1f}s: {detail}"
                )
                log.warning("%s", message)
                self.emitter.log(message)
                self.sleep(wait)
                delay = min(delay * 2, self.max_delay)
                continue
            if attempt:
                self.emitter.log(f"object store available again: {what} succeeded after {attempt} retries")
            return result
