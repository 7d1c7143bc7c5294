"""Inference service process: thin gRPC handlers over the domain code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from textft.v1 import inference_pb2, inference_pb2_grpc

from ..common.bootstrap import run_service
from ..common.config import Settings


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """RPCs not overridden here answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def build(settings: Settings) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    servicer = InferenceServicer(settings)

    def register(server: grpc.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return [inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name]

    return register, lambda: None


def main(argv: Sequence[str] | None = None) -> None:
    run_service("inference", 50053, build, argv)


if __name__ == "__main__":
    main()
