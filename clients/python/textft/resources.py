"""Resource-style access on top of Client's flat methods:

    client.datasets.create("reviews")
    version = client.datasets.upload("reviews", "reviews.csv", task="classification")
    client.models.create("sentiment", task="classification")
    run = client.versions.train("sentiment", version.name, "gpt-neo-125m-lora-text-classification")
    run.wait(on_event=print)
    run.predict(["what a film!"])

Each namespace is also its service's raw gRPC stub (unknown attributes go to
the stub), so `client.datasets.UploadDatasetVersion(...)` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .v1 import dataset_pb2, inference_pb2, trainer_pb2

if TYPE_CHECKING:
    from .client import Client


class _Resource:
    def __init__(self, client: Client, stub: Any) -> None:
        self._client = client
        self._stub = stub

    def __getattr__(self, name: str) -> Any:  # the raw RPCs
        return getattr(self._stub, name)


class Datasets(_Resource):
    def create(
        self, dataset_id: str, description: str = "", labels: dict[str, str] | None = None
    ) -> dataset_pb2.Dataset:
        return self._client.create_dataset(dataset_id, description, labels)

    def get(self, name: str) -> dataset_pb2.Dataset:
        return self._client.get_dataset(name)

    def list(self, page_size: int = 0, page_token: str = "") -> dataset_pb2.ListDatasetsResponse:
        return self._client.list_datasets(page_size, page_token)

    def upload(self, dataset: str, source: Any, **options: Any) -> dataset_pb2.DatasetVersion:
        """See Client.upload_dataset: task, format, column_mapping, description, on_progress."""
        return self._client.upload_dataset(dataset, source, **options)

    def version(self, name: str) -> dataset_pb2.DatasetVersion:
        return self._client.get_dataset_version(name)

    def versions(
        self, dataset: str, page_size: int = 0, page_token: str = ""
    ) -> dataset_pb2.ListDatasetVersionsResponse:
        return self._client.list_dataset_versions(dataset, page_size, page_token)

    def report(self, name: str, page_size: int = 0, page_token: str = "") -> dataset_pb2.GetValidationReportResponse:
        return self._client.get_validation_report(name, page_size, page_token)

    def rows(self, name: str, page_size: int = 0, page_token: str = "") -> dataset_pb2.ReadRowsResponse:
        return self._client.read_rows(name, page_size, page_token)


class Models(_Resource):
    def create(self, model_id: str, task: str | int, description: str = "") -> trainer_pb2.Model:
        return self._client.create_model(model_id, task, description)

    def get(self, name: str) -> trainer_pb2.Model:
        return self._client.get_model(name)

    def list(self, page_size: int = 0, page_token: str = "") -> trainer_pb2.ListModelsResponse:
        return self._client.list_models(page_size, page_token)

    def templates(self, task: str | int = 0) -> list[trainer_pb2.Template]:
        return self._client.list_templates(task)


class Run:
    """A training run (model version): the ModelVersion message's fields, plus
    what can be done with it. `run.proto` is the message as last fetched."""

    def __init__(self, client: Client, message: trainer_pb2.ModelVersion) -> None:
        self._client = client
        self.proto = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proto, name)

    def __repr__(self) -> str:
        return f"Run({self.proto.name}, {trainer_pb2.ModelVersion.State.Name(self.proto.state)})"

    def refresh(self) -> Run:
        self.proto = self._client.get_model_version(self.proto.name)
        return self

    def watch(self, from_sequence: int = 0, timeout: float | None = None) -> Iterator[trainer_pb2.ModelVersionEvent]:
        """Events, history first; ends when the run is READY, FAILED or CANCELLED."""
        return self._client.watch(self.proto.name, from_sequence, timeout)

    def wait(self, timeout: float | None = None, on_event: Callable[[Any], None] | None = None) -> Run:
        self.proto = self._client.wait(self.proto.name, timeout, on_event)
        return self

    def cancel(self) -> Run:
        self.proto = self._client.cancel(self.proto.name)
        return self

    def evaluate(self, dataset_version: str, timeout: float = 3600) -> trainer_pb2.Evaluation:
        return self._client.evaluate(self.proto.name, dataset_version, timeout)

    def predict(self, texts: list[str], **generation: Any) -> inference_pb2.PredictResponse:
        return self._client.predict(self.proto.name, texts, **generation)


class Versions(_Resource):
    def train(self, model: str, dataset_version: str, template: str, **options: Any) -> Run:
        """See Client.train: the four configs, invalid_data_tolerance_percent, description."""
        return Run(self._client, self._client.train(model, dataset_version, template, **options))

    def get(self, name: str) -> Run:
        return Run(self._client, self._client.get_model_version(name))

    def list(self, model: str, page_size: int = 0, page_token: str = "") -> list[Run]:
        response = self._client.list_model_versions(model, page_size, page_token)
        return [Run(self._client, v) for v in response.model_versions]
