"""Inference service process: thin gRPC handlers over the Engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from textft.v1 import inference_pb2, inference_pb2_grpc

from ..common.bootstrap import run_service
from ..common.config import Settings
from ..common.store import open_store
from .engine import Engine


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """RPCs not overridden here answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        return self.engine.predict(request.model_version, list(request.texts), request.generation)

    def LoadModelVersion(
        self, request: inference_pb2.LoadModelVersionRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LoadModelVersionResponse:
        adapter = self.engine.load(request.model_version)
        loaded = next(item for item in self.engine.loaded() if item.model_version == adapter.version)
        return inference_pb2.LoadModelVersionResponse(loaded=loaded)

    def UnloadModelVersion(
        self, request: inference_pb2.UnloadModelVersionRequest, context: grpc.ServicerContext
    ) -> inference_pb2.UnloadModelVersionResponse:
        self.engine.unload(request.model_version)
        return inference_pb2.UnloadModelVersionResponse()

    def ListLoadedModelVersions(
        self, request: inference_pb2.ListLoadedModelVersionsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ListLoadedModelVersionsResponse:
        return inference_pb2.ListLoadedModelVersionsResponse(model_versions=self.engine.loaded())


def build(settings: Settings) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    servicer = InferenceServicer(Engine(settings, open_store(settings.store)))

    def register(server: grpc.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return [inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name]

    return register, lambda: None


def main(argv: Sequence[str] | None = None) -> None:
    run_service("inference", 50053, build, argv)


if __name__ == "__main__":
    main()
