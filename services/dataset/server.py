"""Dataset service process: thin gRPC handlers over the domain code
(repository.py: store layout and versions; parsing.py: formats and validation)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import grpc

from textft.errors import Cancelled, InvalidArgument
from textft.v1 import access_pb2, access_pb2_grpc, dataset_pb2, dataset_pb2_grpc

from ..common.access import caller_app
from ..common.bootstrap import run_service, tune_malloc
from ..common.config import Settings
from ..common.db import open_database
from ..common.names import parse_dataset, parse_dataset_version, parse_parent_app
from ..common.store import ObjectStore, open_store
from .access import AccessServicer
from .inuse import TrainerUsage, UsageCheck
from .repository import DatasetCore, UploadSpec


def _spec(header: dataset_pb2.UploadHeader) -> UploadSpec:
    return UploadSpec(
        dataset=parse_dataset(header.parent, "header.parent"),
        format=header.format,
        task=header.task,
        column_mapping=dict(header.column_mapping),
        description=header.description,
        filename=header.filename,
    )


def _chunks(
    requests: Iterator[dataset_pb2.UploadDatasetVersionRequest], context: grpc.ServicerContext
) -> Iterator[bytes]:
    """The byte chunks after the header; a cut-off stream raises, never ends quietly."""
    try:
        for request in requests:
            if request.WhichOneof("payload") != "chunk":
                raise InvalidArgument.for_field("header", "only the first message of an upload may be a header")
            yield request.chunk
    except grpc.RpcError:
        raise Cancelled("the upload stream was cut off before it ended", reason="UPLOAD_CANCELLED") from None
    if not context.is_active():
        raise Cancelled("the upload was cancelled by the client", reason="UPLOAD_CANCELLED")


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    """Converts requests to domain calls and results back; errors are mapped by the interceptor."""

    def __init__(self, settings: Settings, store: ObjectStore | None = None, usage: UsageCheck | None = None) -> None:
        self.settings = settings
        self.usage = usage or TrainerUsage(settings)
        self.core = DatasetCore(store or open_store(settings.store), settings, self.usage)

    def CreateDataset(
        self, request: dataset_pb2.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.CreateDatasetResponse:
        app = parse_parent_app(request.parent, caller_app())
        dataset = self.core.create_dataset(request.dataset_id, request.description, dict(request.labels), app)
        return dataset_pb2.CreateDatasetResponse(dataset=dataset)

    def GetDataset(
        self, request: dataset_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.GetDatasetResponse:
        return dataset_pb2.GetDatasetResponse(dataset=self.core.get_dataset(parse_dataset(request.name)))

    def ListDatasets(
        self, request: dataset_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.ListDatasetsResponse:
        app = parse_parent_app(request.parent, caller_app())
        datasets, token = self.core.list_datasets(request.page_size, request.page_token, app)
        return dataset_pb2.ListDatasetsResponse(datasets=datasets, next_page_token=token)

    def DeleteDataset(
        self, request: dataset_pb2.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.DeleteDatasetResponse:
        self.core.delete_dataset(parse_dataset(request.name), force=request.force)
        return dataset_pb2.DeleteDatasetResponse()

    def UploadDatasetVersion(
        self, request_iterator: Iterator[dataset_pb2.UploadDatasetVersionRequest], context: grpc.ServicerContext
    ) -> dataset_pb2.UploadDatasetVersionResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument.for_field(
                "header", "the first message of an upload must be the header (parent, format, task, ...)"
            )
        version = self.core.upload(_spec(first.header), _chunks(request_iterator, context))
        return dataset_pb2.UploadDatasetVersionResponse(dataset_version=version)

    def ImportDatasetVersion(
        self, request: dataset_pb2.ImportDatasetVersionRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.ImportDatasetVersionResponse:
        version = self.core.import_object(_spec(request.header), request.source_object)
        return dataset_pb2.ImportDatasetVersionResponse(dataset_version=version)

    def GetDatasetVersion(
        self, request: dataset_pb2.GetDatasetVersionRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.GetDatasetVersionResponse:
        name = parse_dataset_version(request.name)
        return dataset_pb2.GetDatasetVersionResponse(dataset_version=self.core.get_version(name.parent, name.version))

    def ListDatasetVersions(
        self, request: dataset_pb2.ListDatasetVersionsRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.ListDatasetVersionsResponse:
        dataset = parse_dataset(request.parent, "parent")
        versions, token = self.core.list_versions(dataset, request.page_size, request.page_token)
        return dataset_pb2.ListDatasetVersionsResponse(dataset_versions=versions, next_page_token=token)

    def ReadRows(
        self, request: dataset_pb2.ReadRowsRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.ReadRowsResponse:
        name = parse_dataset_version(request.name)
        rows, token = self.core.read_rows(name.parent, name.version, request.page_size, request.page_token)
        return dataset_pb2.ReadRowsResponse(rows=rows, next_page_token=token)

    def GetValidationReport(
        self, request: dataset_pb2.GetValidationReportRequest, context: grpc.ServicerContext
    ) -> dataset_pb2.GetValidationReportResponse:
        name = parse_dataset_version(request.name)
        stats, issues, token = self.core.validation_report(
            name.parent, name.version, request.page_size, request.page_token
        )
        return dataset_pb2.GetValidationReportResponse(stats=stats, issues=issues, next_page_token=token)


def build(settings: Settings) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    servicer = DatasetServicer(settings)
    access = AccessServicer(open_database(settings), servicer.core.store)

    def register(server: grpc.Server) -> list[str]:
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server)
        access_pb2_grpc.add_AccessServiceServicer_to_server(access, server)
        return [
            dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
            access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
        ]

    return register, servicer.usage.close


# Two arenas and blocks of 1 MiB or more mapped: the peak of a 1 GiB upload
# fell by ~80 MB (bench/bench_upload.py); the threads mostly wait on the GIL anyway.
MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD = 2, 1 << 20


def main(argv: Sequence[str] | None = None) -> None:
    # An upload's validating thread is CPU-bound Python; the threads receiving
    # its chunks and sending them to the store need the GIL only briefly but
    # often. At the default 5 ms switch interval they wait behind it and the
    # store copy falls seconds behind (bench/bench_upload.py); 0.5 ms lets them in.
    sys.setswitchinterval(Settings.from_env().switch_interval)
    tune_malloc(MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD)
    # Arrow's buffers (a block of CSV cells, a part's columns) from the malloc
    # tuned above rather than from mimalloc (Arrow's default), which keeps
    # freed blocks of its own.
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    run_service("dataset", 50051, build, argv)


if __name__ == "__main__":
    main()
