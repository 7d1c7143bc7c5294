"""The textft Python SDK: one Client reaching the three services.

    from textft import Client
    client = Client()                      # targets, key and TLS from TEXTFT_* env
    client.create_dataset("reviews")
    version = client.upload_dataset("reviews", "reviews.csv", task="classification")
    client.create_model("sentiment", task="classification")
    run = client.train("sentiment", version.name, template="templates/gpt-neo-125m-lora-text-classification")
    for event in client.watch(run.name): print(event.kind, event.loss)
    print(client.predict(run.name, ["great film"]))

Every failed call raises a textft.errors.TextftError subclass.

TLS: `Client(tls_ca="ca.pem")` (or TEXTFT_TLS_CA) verifies the servers against
that root; `Client(tls=True)` (or TEXTFT_TLS=on) uses the system roots; mutual
TLS adds `tls_cert`/`tls_key` (TEXTFT_TLS_CLIENT_CERT, TEXTFT_TLS_CLIENT_KEY).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from .errors import DeadlineExceeded, TextftError, Unavailable, from_rpc_error, from_status_code
from .resources import Datasets, Models, Versions
from .uploads import RowCounter, UploadProgress
from .v1 import (
    access_pb2,
    access_pb2_grpc,
    common_pb2,
    dataset_pb2,
    dataset_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

T = TypeVar("T")
CHUNK_BYTES = 1024 * 1024
DEFAULT_TIMEOUT = 60.0
DEFAULT_APP = "default"  # the app whose resources have short names (datasets/x)
_FINAL_STATES = {
    trainer_pb2.ModelVersion.STATE_READY,
    trainer_pb2.ModelVersion.STATE_FAILED,
    trainer_pb2.ModelVersion.STATE_CANCELLED,
}
TASKS = {
    "classification": common_pb2.TASK_TEXT_CLASSIFICATION,
    "text_classification": common_pb2.TASK_TEXT_CLASSIFICATION,
    "generation": common_pb2.TASK_TEXT_GENERATION,
    "text_generation": common_pb2.TASK_TEXT_GENERATION,
}
FORMATS = {
    ".csv": dataset_pb2.DATASET_FORMAT_CSV,
    ".tsv": dataset_pb2.DATASET_FORMAT_TSV,
    ".jsonl": dataset_pb2.DATASET_FORMAT_JSONL,
    ".ndjson": dataset_pb2.DATASET_FORMAT_JSONL,
}


def default_api_key(env: Mapping[str, str] | None = None) -> str:
    """TEXTFT_API_KEY, else the key `textft up` wrote to $TEXTFT_HOME/api_key."""
    env = os.environ if env is None else env
    key = env.get("TEXTFT_API_KEY", "")
    if key:
        return key
    path = Path(env.get("TEXTFT_HOME", ".textft")).expanduser() / "api_key"
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"environment variable {name} must be on/off, true/false, yes/no or 1/0, got {raw!r}")


def _read_file(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the {what} {os.fspath(path)!r}: {err.strerror}") from None


def channel_credentials(
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials for a channel: servers verified against `tls_ca` (PEM
    file; None means the system roots), and a client certificate for mutual
    TLS when `tls_cert` and `tls_key` are given."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(tls_ca, "TLS root certificate"),
        private_key=_read_file(tls_key, "TLS client key"),
        certificate_chain=_read_file(tls_cert, "TLS client certificate"),
    )


def open_channel(
    target: str,
    options: list[tuple[str, Any]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
) -> grpc.Channel:
    """A plaintext channel, or a TLS one when credentials are given (with the
    name to check the server's certificate against, when not the target's host)."""
    options = list(options or [])
    if credentials is None:
        return grpc.insecure_channel(target, options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, credentials, options)


def task_of(task: str | int) -> int:
    if isinstance(task, int):
        return task
    try:
        return TASKS[task.lower()]
    except KeyError:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}") from None


def to_struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def _backoff(attempt: int) -> None:
    """Sleeps before retry number `attempt`: exponential from 0.1 s, capped at 2 s, jittered."""
    time.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)) * (0.5 + random.random()))


class Client:
    """Typed access to the dataset, trainer and inference services.

    Whatever is not given is read from the environment (`env`, default
    os.environ): TEXTFT_{DATASET,TRAINER,INFERENCE}_ADDR, TEXTFT_API_KEY (else
    $TEXTFT_HOME/api_key), TEXTFT_TLS_CA / TEXTFT_TLS (TLS), TEXTFT_TLS_CLIENT_CERT
    and TEXTFT_TLS_CLIENT_KEY (mutual TLS), TEXTFT_TLS_SERVER_NAME. `tls=False`
    forces plaintext whatever the environment says.

    `app` (else TEXTFT_APP, else "default") is the app short names are in:
    with app="team-a", `get_dataset("reviews")` asks for
    apps/team-a/datasets/reviews, and creating and listing work in team-a.
    Full names (`apps/...`, and what the server returns) are used as given.
    """

    def __init__(
        self,
        dataset_target: str | None = None,
        trainer_target: str | None = None,
        inference_target: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = 16 * 1024 * 1024,
        retries: int = 6,  # ~6 s of jittered backoff: rides out a service restart
        *,
        tls: bool | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        env: Mapping[str, str] | None = None,
        app: str | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.api_key = default_api_key(env) if api_key is None else api_key
        self.app = app or env.get("TEXTFT_APP", "").strip() or DEFAULT_APP
        self.timeout = timeout
        self.retries = retries
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls is not False:
            tls_ca = tls_ca or env.get("TEXTFT_TLS_CA") or None
            tls_cert = tls_cert or env.get("TEXTFT_TLS_CLIENT_CERT") or None
            tls_key = tls_key or env.get("TEXTFT_TLS_CLIENT_KEY") or None
        self.tls = bool(tls) if tls is not None else bool(tls_ca or tls_cert) or _env_flag(env, "TEXTFT_TLS")
        credentials = channel_credentials(tls_ca, tls_cert, tls_key) if self.tls else None
        server_name = tls_server_name if tls_server_name is not None else env.get("TEXTFT_TLS_SERVER_NAME", "")
        self.targets = {
            "dataset": dataset_target or env.get("TEXTFT_DATASET_ADDR", "127.0.0.1:50051"),
            "trainer": trainer_target or env.get("TEXTFT_TRAINER_ADDR", "127.0.0.1:50052"),
            "inference": inference_target or env.get("TEXTFT_INFERENCE_ADDR", "127.0.0.1:50053"),
        }
        self._channels = [open_channel(target, options, credentials, server_name) for target in self.targets.values()]
        trainer_stub = trainer_pb2_grpc.TrainerServiceStub(self._channels[1])
        # Resource-style namespaces; each is also its service's raw stub (textft.resources).
        self.datasets = Datasets(self, dataset_pb2_grpc.DatasetServiceStub(self._channels[0]))
        self.models = Models(self, trainer_stub)
        self.versions = Versions(self, trainer_stub)
        self.trainer = trainer_stub
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._channels[2])
        self.access = access_pb2_grpc.AccessServiceStub(self._channels[0])  # served by the dataset service

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Client:
        """A client configured only from TEXTFT_* variables of `env` (default
        os.environ), with keyword overrides: `Client.from_env(timeout=10)`."""
        return cls(env=env, **overrides)

    # ---- plumbing ----
    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def parent(self) -> str:
        """What Create and List requests name as their parent: this client's app
        ("" for the default app, which is also what the server assumes)."""
        return "" if self.app == DEFAULT_APP else f"apps/{self.app}"

    def _full(self, name: str) -> str:
        """A name in this client's app: datasets/reviews -> apps/{app}/datasets/reviews
        outside the default app; names starting with apps/ as they are."""
        return f"{self.parent}/{name}" if self.parent and name and not name.startswith("apps/") else name

    def _named(self, collection: str, value: str) -> str:
        """'reviews' or 'datasets/reviews' -> the dataset's full name in this client's app."""
        name = value if value.startswith(("apps/", collection + "/")) else f"{collection}/{value}"
        return name if collection == "templates" else self._full(name)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.api_key}")] if self.api_key else []

    def call(
        self, method: Callable[..., T], request: Any, *, idempotent: bool = True, timeout: float | None = None
    ) -> T:
        """Calls a unary RPC with auth, a deadline, and retries with jittered
        backoff on UNAVAILABLE for idempotent calls. Raises TextftError.

        CANCELLED is retried too: this call blocks, so its caller cannot have
        cancelled it; the server (stopping, its queued calls dropped) or a proxy did."""
        attempt = 0
        while True:
            try:
                return method(request, metadata=self.metadata, timeout=timeout or self.timeout)
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                transient = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                retry = idempotent and transient and attempt < self.retries
                if not retry:
                    raise error from None
                attempt += 1
                _backoff(attempt)

    def stream(self, method: Callable[..., Iterable[T]], request: Any, timeout: float | None = None) -> Iterator[T]:
        try:
            yield from method(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    # ---- datasets ----
    def create_dataset(
        self, dataset_id: str, description: str = "", labels: dict[str, str] | None = None
    ) -> dataset_pb2.Dataset:
        request = dataset_pb2.CreateDatasetRequest(
            dataset_id=dataset_id, description=description, labels=labels or {}, parent=self.parent
        )
        return self.call(self.datasets.CreateDataset, request, idempotent=False).dataset

    def get_dataset(self, name: str) -> dataset_pb2.Dataset:
        return self.call(
            self.datasets.GetDataset, dataset_pb2.GetDatasetRequest(name=self._named("datasets", name))
        ).dataset

    def list_datasets(self, page_size: int = 0, page_token: str = "") -> dataset_pb2.ListDatasetsResponse:
        return self.call(
            self.datasets.ListDatasets,
            dataset_pb2.ListDatasetsRequest(page_size=page_size, page_token=page_token, parent=self.parent),
        )

    def upload_dataset(
        self,
        dataset: str,
        source: str | os.PathLike[str] | BinaryIO | bytes,
        task: str | int = common_pb2.TASK_UNSPECIFIED,
        format: str | int | None = None,
        column_mapping: dict[str, str] | None = None,
        description: str = "",
        on_progress: Callable[[UploadProgress], None] | None = None,
        timeout: float | None = None,
    ) -> dataset_pb2.DatasetVersion:
        """Streams a CSV/TSV/JSONL file (path, open binary file or bytes) as a
        new version. on_progress gets an UploadProgress (bytes and rows sent)
        after each chunk; the version's stats are the validated numbers."""
        filename = ""
        total = 0
        if isinstance(source, bytes):
            import io

            stream: BinaryIO = io.BytesIO(source)
            total = len(source)
        elif isinstance(source, (str, os.PathLike)):
            filename = os.fspath(source)
            stream = open(filename, "rb")  # noqa: SIM115 - closed in the generator below
            total = os.fstat(stream.fileno()).st_size
        else:
            stream = source
        if format is None:
            fmt = FORMATS.get(Path(filename).suffix.lower(), dataset_pb2.DATASET_FORMAT_UNSPECIFIED)
        elif isinstance(format, str):
            fmt = FORMATS.get("." + format.lower().lstrip("."), dataset_pb2.DATASET_FORMAT_UNSPECIFIED)
        else:
            fmt = format
        header = dataset_pb2.UploadHeader(
            parent=self._named("datasets", dataset),
            format=fmt,
            task=task_of(task),
            column_mapping=column_mapping or {},
            description=description,
            filename=os.path.basename(filename),
        )

        counter = RowCounter(fmt != dataset_pb2.DATASET_FORMAT_JSONL)

        def requests() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
            sent = 0
            try:
                yield dataset_pb2.UploadDatasetVersionRequest(header=header)
                while chunk := stream.read(CHUNK_BYTES):
                    sent += len(chunk)
                    yield dataset_pb2.UploadDatasetVersionRequest(chunk=chunk)
                    if on_progress:
                        counter.feed(chunk)
                        on_progress(UploadProgress(sent, max(total, sent), counter.rows))
            finally:
                if filename:
                    stream.close()

        try:
            response = self.datasets.UploadDatasetVersion(requests(), metadata=self.metadata, timeout=timeout or 3600)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return response.dataset_version

    def get_dataset_version(self, name: str) -> dataset_pb2.DatasetVersion:
        request = dataset_pb2.GetDatasetVersionRequest(name=self._full(name))
        return self.call(self.datasets.GetDatasetVersion, request).dataset_version

    def list_dataset_versions(
        self, dataset: str, page_size: int = 0, page_token: str = ""
    ) -> dataset_pb2.ListDatasetVersionsResponse:
        """Versions of one dataset, newest first, one page."""
        request = dataset_pb2.ListDatasetVersionsRequest(
            parent=self._named("datasets", dataset), page_size=page_size, page_token=page_token
        )
        return self.call(self.datasets.ListDatasetVersions, request)

    def read_rows(self, name: str, page_size: int = 0, page_token: str = "") -> dataset_pb2.ReadRowsResponse:
        """One page of a version's normalised (valid) rows."""
        request = dataset_pb2.ReadRowsRequest(name=self._full(name), page_size=page_size, page_token=page_token)
        return self.call(self.datasets.ReadRows, request)

    def get_validation_report(
        self, name: str, page_size: int = 0, page_token: str = ""
    ) -> dataset_pb2.GetValidationReportResponse:
        """A version's stats and one page of its row-level validation issues."""
        request = dataset_pb2.GetValidationReportRequest(
            name=self._full(name), page_size=page_size, page_token=page_token
        )
        return self.call(self.datasets.GetValidationReport, request)

    # ---- templates, models, training ----
    def list_templates(self, task: str | int = common_pb2.TASK_UNSPECIFIED) -> list[trainer_pb2.Template]:
        request = trainer_pb2.ListTemplatesRequest(task=task_of(task), page_size=1000)
        return list(self.call(self.trainer.ListTemplates, request).templates)

    def create_model(self, model_id: str, task: str | int, description: str = "") -> trainer_pb2.Model:
        request = trainer_pb2.CreateModelRequest(
            model_id=model_id, task=task_of(task), description=description, parent=self.parent
        )
        return self.call(self.trainer.CreateModel, request, idempotent=False).model

    def get_model(self, name: str) -> trainer_pb2.Model:
        return self.call(self.trainer.GetModel, trainer_pb2.GetModelRequest(name=self._named("models", name))).model

    def list_models(self, page_size: int = 0, page_token: str = "") -> trainer_pb2.ListModelsResponse:
        request = trainer_pb2.ListModelsRequest(page_size=page_size, page_token=page_token, parent=self.parent)
        return self.call(self.trainer.ListModels, request)

    def list_model_versions(
        self, model: str, page_size: int = 0, page_token: str = ""
    ) -> trainer_pb2.ListModelVersionsResponse:
        """Training runs of one model, one page."""
        request = trainer_pb2.ListModelVersionsRequest(
            parent=self._named("models", model), page_size=page_size, page_token=page_token
        )
        return self.call(self.trainer.ListModelVersions, request)

    def get_template(self, name: str) -> trainer_pb2.Template:
        request = trainer_pb2.GetTemplateRequest(name=self._named("templates", name))
        return self.call(self.trainer.GetTemplate, request).template

    def train(
        self,
        model: str,
        dataset_version: str,
        template: str,
        model_config: dict[str, Any] | None = None,
        peft_config: dict[str, Any] | None = None,
        tokenizer_config: dict[str, Any] | None = None,
        trainer_config: dict[str, Any] | None = None,
        invalid_data_tolerance_percent: float = 0.0,
        description: str = "",
    ) -> trainer_pb2.ModelVersion:
        """Creates a model version (a training run); returns it QUEUED."""
        request = trainer_pb2.CreateModelVersionRequest(
            parent=self._named("models", model),
            dataset_version=self._full(dataset_version),
            template=self._named("templates", template),
            model_config=to_struct(model_config),
            peft_config=to_struct(peft_config),
            tokenizer_config=to_struct(tokenizer_config),
            trainer_config=to_struct(trainer_config),
            invalid_data_tolerance_percent=invalid_data_tolerance_percent,
            description=description,
        )
        return self.call(self.trainer.CreateModelVersion, request, idempotent=False).model_version

    def get_model_version(self, name: str) -> trainer_pb2.ModelVersion:
        return self.call(
            self.trainer.GetModelVersion, trainer_pb2.GetModelVersionRequest(name=self._full(name))
        ).model_version

    def watch(
        self, name: str, from_sequence: int = 0, timeout: float | None = None
    ) -> Iterator[trainer_pb2.ModelVersionEvent]:
        """Events of a run, history first; ends when the run reaches a final state."""
        request = trainer_pb2.WatchModelVersionRequest(name=self._full(name), from_sequence=from_sequence)
        for response in self.stream(self.trainer.WatchModelVersion, request, timeout=timeout):
            yield response.event

    def wait(
        self, name: str, timeout: float | None = None, on_event: Callable[[Any], None] | None = None
    ) -> trainer_pb2.ModelVersion:
        """Blocks until the run is READY, FAILED or CANCELLED, and returns it.
        A watch that ends or breaks before then (a trainer restart) is resumed
        after the last event seen, so on_event sees every event once; timeout
        bounds the whole wait (DeadlineExceeded)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_sequence = 0
        attempt = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"{name} did not finish within {timeout:g}s", reason="WAIT_TIMEOUT")
            try:
                for event in self.watch(name, from_sequence=next_sequence, timeout=remaining):
                    next_sequence = event.sequence + 1
                    attempt = 0
                    if on_event:
                        on_event(event)
            except Unavailable:
                pass  # the trainer is restarting: look again below
            version = self.get_model_version(name)  # retries UNAVAILABLE itself
            if version.state in _FINAL_STATES:
                return version
            attempt += 1
            _backoff(attempt)

    def cancel(self, name: str) -> trainer_pb2.ModelVersion:
        request = trainer_pb2.CancelModelVersionRequest(name=self._full(name))
        return self.call(self.trainer.CancelModelVersion, request).model_version

    def start_evaluation(self, name: str, dataset_version: str) -> trainer_pb2.ModelEvaluation:
        """Starts evaluating a READY version on a dataset version of its task;
        returns the evaluation RUNNING (follow it with watch_evaluation)."""
        request = trainer_pb2.EvaluateModelVersionRequest(
            name=self._full(name), dataset_version=self._full(dataset_version)
        )
        return self.call(self.trainer.EvaluateModelVersion, request, idempotent=False).model_evaluation

    def get_evaluation(self, name: str) -> trainer_pb2.ModelEvaluation:
        request = trainer_pb2.GetModelEvaluationRequest(name=self._full(name))
        return self.call(self.trainer.GetModelEvaluation, request).model_evaluation

    def watch_evaluation(self, name: str, timeout: float | None = None) -> Iterator[trainer_pb2.ModelEvaluation]:
        """The evaluation now, then after each change; ends once it is done."""
        request = trainer_pb2.WatchModelEvaluationRequest(name=self._full(name))
        for response in self.stream(self.trainer.WatchModelEvaluation, request, timeout=timeout):
            yield response.model_evaluation

    def evaluate(
        self,
        name: str,
        dataset_version: str,
        timeout: float = 3600,
        on_progress: Callable[[trainer_pb2.ModelEvaluation], None] | None = None,
    ) -> trainer_pb2.Evaluation:
        """Evaluates a READY version on any dataset version of its task and
        waits (up to timeout seconds) for the result; raises the TextftError
        the evaluation failed with."""
        evaluation = self.start_evaluation(name, dataset_version)
        deadline = time.monotonic() + timeout
        while evaluation.state == trainer_pb2.ModelEvaluation.STATE_RUNNING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise from_status_code(
                    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                    f"{evaluation.name} is still running after {timeout:g}s; follow it with watch_evaluation",
                )
            for update in self.watch_evaluation(evaluation.name, timeout=left):
                evaluation = update
                if on_progress is not None:
                    on_progress(update)
            if evaluation.state == trainer_pb2.ModelEvaluation.STATE_RUNNING:  # the stream ended early
                evaluation = self.get_evaluation(evaluation.name)
        if evaluation.state != trainer_pb2.ModelEvaluation.STATE_SUCCEEDED:
            raise from_status_code(evaluation.error_code, evaluation.failure.message, evaluation.failure.reason)
        return evaluation.result

    # ---- inference ----
    def predict(
        self,
        model_version: str,
        texts: list[str],
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        ignore_eos: bool = False,
    ) -> inference_pb2.PredictResponse:
        params = _generation(max_new_tokens, temperature, top_p, top_k, stop, seed, ignore_eos)
        request = inference_pb2.PredictRequest(model_version=self._full(model_version), texts=texts, generation=params)
        return self.call(self.inference.Predict, request, timeout=timeout)

    def predict_stream(
        self,
        model_version: str,
        text: str,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[inference_pb2.PredictStreamResponse]:
        """Generation, streamed: text deltas as tokens are produced; the last
        message carries the finish reason. Closing the iterator early (break,
        or .close()) cancels the RPC, and the server stops generating."""
        params = _generation(max_new_tokens, temperature, top_p, top_k, stop, seed, ignore_eos)
        request = inference_pb2.PredictStreamRequest(
            model_version=self._full(model_version), text=text, generation=params
        )
        call = self.inference.PredictStream(request, metadata=self.metadata, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()  # no-op once the stream has ended

    def load_model_version(self, model_version: str) -> inference_pb2.LoadedModelVersion:
        """Warms the inference cache (base model and adapter) ahead of traffic."""
        request = inference_pb2.LoadModelVersionRequest(model_version=self._full(model_version))
        return self.call(self.inference.LoadModelVersion, request).loaded

    def unload_model_version(self, model_version: str) -> None:
        request = inference_pb2.UnloadModelVersionRequest(model_version=self._full(model_version))
        self.call(self.inference.UnloadModelVersion, request)

    def list_loaded_model_versions(self) -> list[inference_pb2.LoadedModelVersion]:
        request = inference_pb2.ListLoadedModelVersionsRequest(parent=self.parent)
        return list(self.call(self.inference.ListLoadedModelVersions, request).model_versions)

    # ---- access: keys, roles, audit ----
    def whoami(self) -> access_pb2.GetCallerResponse:
        """The principal, app and role of this client's key."""
        return self.call(self.access.GetCaller, access_pb2.GetCallerRequest())

    def create_api_key(self, principal: str, role: str | int, description: str = "") -> tuple[access_pb2.ApiKey, str]:
        """A new key (role admin, editor or predictor) in the caller's app; the
        secret is returned this once."""
        request = access_pb2.CreateApiKeyRequest(principal=principal, role=_role(role), description=description)
        response = self.call(self.access.CreateApiKey, request, idempotent=False)
        return response.api_key, response.secret

    def list_api_keys(self, include_revoked: bool = False) -> list[access_pb2.ApiKey]:
        request = access_pb2.ListApiKeysRequest(include_revoked=include_revoked)
        return list(self.call(self.access.ListApiKeys, request).api_keys)

    def revoke_api_key(self, key_id: str) -> access_pb2.ApiKey:
        return self.call(self.access.RevokeApiKey, access_pb2.RevokeApiKeyRequest(key_id=key_id)).api_key

    # ---- apps (platform admins: admin keys of the default app) ----
    def create_app(self, app_id: str, description: str = "", admin_principal: str = "") -> access_pb2.CreateAppResponse:
        """A new app; with admin_principal, also its first admin key (the secret is in the response, once)."""
        request = access_pb2.CreateAppRequest(app_id=app_id, description=description, admin_principal=admin_principal)
        return self.call(self.access.CreateApp, request, idempotent=False)

    def get_app(self, app: str = "") -> access_pb2.App:
        """An app (default: this client's); any key of the app may read it."""
        request = access_pb2.GetAppRequest(name=_app_name(app or self.app))
        return self.call(self.access.GetApp, request).app

    def list_apps(self) -> list[access_pb2.App]:
        return list(self.call(self.access.ListApps, access_pb2.ListAppsRequest()).apps)

    def delete_app(self, app: str) -> None:
        """Deletes an app without datasets or models, and revokes its keys."""
        self.call(self.access.DeleteApp, access_pb2.DeleteAppRequest(name=_app_name(app)), idempotent=False)

    def audit_events(self, page_size: int = 0, page_token: str = "") -> access_pb2.ListAuditEventsResponse:
        request = access_pb2.ListAuditEventsRequest(page_size=page_size, page_token=page_token)
        return self.call(self.access.ListAuditEvents, request)


ROLES = {
    "admin": access_pb2.ROLE_ADMIN,
    "editor": access_pb2.ROLE_EDITOR,
    "predictor": access_pb2.ROLE_PREDICTOR,
}


def _role(role: str | int) -> int:
    if isinstance(role, int):
        return role
    try:
        return ROLES[role.lower()]
    except KeyError:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}") from None


def _generation(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop: list[str] | None,
    seed: int | None,
    ignore_eos: bool,
) -> inference_pb2.GenerationParameters:
    params = inference_pb2.GenerationParameters(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop or [],
        ignore_eos=ignore_eos,
    )
    if seed is not None:
        params.seed = seed
    return params


def _app_name(app: str) -> str:
    return app if app.startswith("apps/") else f"apps/{app}"


__all__ = [
    "Client",
    "TextftError",
    "channel_credentials",
    "default_api_key",
    "open_channel",
    "struct_to_dict",
    "task_of",
    "to_struct",
]
