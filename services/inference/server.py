"""Inference service process: thin gRPC handlers over the Engine, the Open
Inference Protocol façade (oip.py) on the same server, plus the Prometheus
endpoint (TEXTFT_METRICS_PORT)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health

from textft.errors import TextftError
from textft.v1 import inference_pb2, inference_pb2_grpc

from ..common import names
from ..common.access import caller_app
from ..common.bootstrap import blocking_health_servicer, run_service
from ..common.config import Settings
from ..common.store import open_store
from . import metrics as metrics_mod
from . import oip
from .engine import Engine

F = TypeVar("F", bound=Callable[..., Any])
NO_DEADLINE = 1e8  # grpc reports a far-future time_remaining() when the client set none


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The RPC's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return None
    return time.monotonic() + remaining


def _code(exc: BaseException, context: grpc.ServicerContext) -> str:
    if isinstance(exc, TextftError):
        return exc.code.name
    return "CANCELLED" if not context.is_active() else "INTERNAL"


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """RPCs not overridden here answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.metrics = engine.metrics

    @staticmethod
    def _observed(method: F) -> F:
        """Counts requests by final status and records latency."""
        name = method.__name__

        @functools.wraps(method)
        def unary(self: InferenceServicer, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            code = "OK"
            try:
                return method(self, request, context)
            except BaseException as exc:
                code = _code(exc, context)
                raise
            finally:
                self.metrics.requests.inc(method=name, code=code)
                self.metrics.latency.observe(time.monotonic() - started, method=name)

        return unary  # type: ignore[return-value]

    @_observed
    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        return self.engine.predict(
            request.model_version, list(request.texts), request.generation, deadline_of(context), context.add_callback
        )

    def PredictStream(
        self, request: inference_pb2.PredictStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.PredictStreamResponse]:
        started = time.monotonic()
        code = "OK"
        try:
            for message in self.engine.predict_stream(
                request.model_version, request.text, request.generation, deadline_of(context), context.add_callback
            ):
                if not context.is_active():
                    code = "CANCELLED"
                    return
                yield message
        except BaseException as exc:
            code = _code(exc, context)
            raise
        finally:
            self.metrics.requests.inc(method="PredictStream", code=code)
            self.metrics.latency.observe(time.monotonic() - started, method="PredictStream")

    @_observed
    def LoadModelVersion(
        self, request: inference_pb2.LoadModelVersionRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LoadModelVersionResponse:
        adapter = self.engine.load(request.model_version)
        loaded = next(item for item in self.engine.loaded() if item.model_version == adapter.version)
        return inference_pb2.LoadModelVersionResponse(loaded=loaded)

    @_observed
    def UnloadModelVersion(
        self, request: inference_pb2.UnloadModelVersionRequest, context: grpc.ServicerContext
    ) -> inference_pb2.UnloadModelVersionResponse:
        self.engine.unload(request.model_version)
        return inference_pb2.UnloadModelVersionResponse()

    @_observed
    def ListLoadedModelVersions(
        self, request: inference_pb2.ListLoadedModelVersionsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ListLoadedModelVersionsResponse:
        app = names.parse_parent_app(request.parent, caller_app())
        loaded = [v for v in self.engine.loaded() if names.app_of(v.model_version) == app]
        return inference_pb2.ListLoadedModelVersionsResponse(model_versions=loaded)


def build(
    settings: Settings, health_servicer: health.HealthServicer
) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    engine = Engine(settings, open_store(settings.store))
    servicer = InferenceServicer(engine)
    oip_servicer = oip.OipServicer(engine, health_servicer)
    http = metrics_mod.serve(engine.metrics, settings.host, settings.metrics_port) if settings.metrics_port else None

    def register(server: grpc.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        oip.add_to_server(oip_servicer, server)
        return [inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name, oip.SERVICE]

    def shutdown() -> None:
        engine.close()
        if http is not None:
            http.shutdown()

    return register, shutdown


def main(argv: Sequence[str] | None = None) -> None:
    # One health servicer for the health service and OIP's ServerReady.
    probe = blocking_health_servicer()
    run_service(
        "inference",
        50053,
        functools.partial(build, health_servicer=probe),
        argv,
        probe,
        lambda settings: [settings.inference_oip_port] if settings.inference_oip_port else [],
    )


if __name__ == "__main__":
    main()
