"""Dataset service process: thin gRPC handlers over the domain code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from textft.v1 import dataset_pb2, dataset_pb2_grpc

from ..common.bootstrap import run_service
from ..common.config import Settings


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    """RPCs not overridden here answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def build(settings: Settings) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    servicer = DatasetServicer(settings)

    def register(server: grpc.Server) -> list[str]:
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server)
        return [dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name]

    return register, lambda: None


def main(argv: Sequence[str] | None = None) -> None:
    run_service("dataset", 50051, build, argv)


if __name__ == "__main__":
    main()
