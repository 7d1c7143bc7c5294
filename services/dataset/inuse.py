"""Which unfinished model versions use a dataset, asked of the trainer through
its public RPCs (ListModels, ListModelVersions), only when a dataset is about
to be deleted. The trainer depends on the dataset service, never the other way
round at start-up: no channel is opened until the first delete.

The check is a guard, not a lock: a model version created after the check
still starts, and with no trainer reachable nothing can be training, so the
delete proceeds (a queued job of a stopped trainer then fails when it reads
its rows). See DeleteDataset in dataset.proto.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from textft import Client
from textft.errors import NotFound, TextftError
from textft.v1 import trainer_pb2

from ..common.config import Settings
from ..common.names import DatasetName

log = logging.getLogger("textft.dataset")
MV = trainer_pb2.ModelVersion
UNFINISHED = {
    MV.STATE_UNSPECIFIED,
    MV.STATE_QUEUED,
    MV.STATE_PREPARING_DATA,
    MV.STATE_TRAINING,
    MV.STATE_EVALUATING,
    MV.STATE_UPLOADING,
}
CHECK_SECONDS = 10.0


class UsageCheck(Protocol):
    def in_use(self, dataset: DatasetName) -> list[str] | None:
        """Unfinished model versions using the dataset; None when nobody could be asked."""


class TrainerUsage:
    """Asks the trainer at settings.trainer_addr."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._guard = threading.Lock()

    def _trainer(self) -> Client:
        with self._guard:
            if self._client is None:
                # No retries: an absent trainer must not slow every delete down.
                self._client = Client(
                    trainer_target=self.settings.trainer_addr, api_key=self.settings.service_key, retries=0
                )
            return self._client

    def in_use(self, dataset: DatasetName) -> list[str] | None:
        prefix = f"{dataset}/versions/"
        app = f"apps/{dataset.app}"  # the dataset's app: a model version never uses another app's datasets
        deadline = time.monotonic() + CHECK_SECONDS
        try:
            client = self._trainer()
            users: list[str] = []
            for model in list(self._pages(client, "", deadline, app)):
                try:
                    versions = list(self._pages(client, model, deadline, app))
                except NotFound:  # deleted since the listing
                    continue
                users += [v.name for v in versions if v.dataset_version.startswith(prefix) and v.state in UNFINISHED]
            return users
        except TextftError as e:
            log.warning(
                "could not ask the trainer at %s whether %s is in use (%s: %s); deleting without the check",
                self.settings.trainer_addr,
                dataset,
                e.code.name,
                e.message,
            )
            return None

    @staticmethod
    def _pages(client: Client, model: str, deadline: float, app: str):  # type: ignore[no-untyped-def]
        """Every model (model == "") or every version of one model, page by page."""
        token = ""
        while True:
            left = max(0.1, deadline - time.monotonic())
            if model:
                request = trainer_pb2.ListModelVersionsRequest(parent=model, page_size=1000, page_token=token)
                page = client.call(client.trainer.ListModelVersions, request, timeout=left)
                yield from page.model_versions
            else:
                models = trainer_pb2.ListModelsRequest(parent=app, page_size=1000, page_token=token)
                listing = client.call(client.trainer.ListModels, models, timeout=left)
                yield from (m.name for m in listing.models)
                page = listing
            token = page.next_page_token
            if not token:
                return

    def close(self) -> None:
        with self._guard:
            if self._client is not None:
                self._client.close()
                self._client = None
