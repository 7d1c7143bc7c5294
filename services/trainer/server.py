"""Trainer service process: thin gRPC handlers over TrainerCore's parts (service.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import grpc

from textft.v1 import trainer_pb2, trainer_pb2_grpc

from ..common.access import caller_app
from ..common.bootstrap import run_service
from ..common.config import Settings
from ..common.names import paginate, parse_parent_app
from ..common.store import open_store
from . import configs
from .launcher import Launcher, LocalProcessLauncher
from .service import TrainerCore


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """RPCs not overridden here answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, core: TrainerCore) -> None:
        self.core = core

    def ListTemplates(
        self, request: trainer_pb2.ListTemplatesRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListTemplatesResponse:
        page, token = paginate(self.core.catalog.list_templates(request.task), request.page_size, request.page_token)
        return trainer_pb2.ListTemplatesResponse(templates=page, next_page_token=token)

    def GetTemplate(
        self, request: trainer_pb2.GetTemplateRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetTemplateResponse:
        from ..common.names import parse_template

        return trainer_pb2.GetTemplateResponse(
            template=self.core.catalog.template_pb(parse_template(request.name, "name"))
        )

    def CreateModel(
        self, request: trainer_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CreateModelResponse:
        return trainer_pb2.CreateModelResponse(model=self.core.catalog.create_model(request))

    def GetModel(
        self, request: trainer_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetModelResponse:
        return trainer_pb2.GetModelResponse(model=self.core.records.get_model(request.name))

    def ListModels(
        self, request: trainer_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListModelsResponse:
        app = parse_parent_app(request.parent, caller_app())
        page, token = paginate(self.core.records.list_models(app), request.page_size, request.page_token)
        return trainer_pb2.ListModelsResponse(models=page, next_page_token=token)

    def DeleteModel(
        self, request: trainer_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.DeleteModelResponse:
        self.core.catalog.delete_model(request.name)
        return trainer_pb2.DeleteModelResponse()

    def CreateModelVersion(
        self, request: trainer_pb2.CreateModelVersionRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CreateModelVersionResponse:
        return trainer_pb2.CreateModelVersionResponse(model_version=self.core.catalog.create_version(request))

    def GetModelVersion(
        self, request: trainer_pb2.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetModelVersionResponse:
        return trainer_pb2.GetModelVersionResponse(model_version=self.core.records.get_version(request.name))

    def ListModelVersions(
        self, request: trainer_pb2.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListModelVersionsResponse:
        page, token = paginate(self.core.records.list_versions(request.parent), request.page_size, request.page_token)
        return trainer_pb2.ListModelVersionsResponse(model_versions=page, next_page_token=token)

    def WatchModelVersion(
        self, request: trainer_pb2.WatchModelVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.WatchModelVersionResponse]:
        for event in self.core.runlog.watch(request.name, request.from_sequence, context.is_active):
            yield trainer_pb2.WatchModelVersionResponse(event=event)

    def CancelModelVersion(
        self, request: trainer_pb2.CancelModelVersionRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelModelVersionResponse:
        return trainer_pb2.CancelModelVersionResponse(model_version=self.core.scheduler.cancel(request.name))

    def EvaluateModelVersion(
        self, request: trainer_pb2.EvaluateModelVersionRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.EvaluateModelVersionResponse:
        evaluation = self.core.evaluations.start(request.name, request.dataset_version)
        return trainer_pb2.EvaluateModelVersionResponse(model_evaluation=evaluation)

    def GetModelEvaluation(
        self, request: trainer_pb2.GetModelEvaluationRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetModelEvaluationResponse:
        return trainer_pb2.GetModelEvaluationResponse(model_evaluation=self.core.evaluations.get(request.name))

    def WatchModelEvaluation(
        self, request: trainer_pb2.WatchModelEvaluationRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.WatchModelEvaluationResponse]:
        for evaluation in self.core.evaluations.watch(request.name, context.is_active):
            yield trainer_pb2.WatchModelEvaluationResponse(model_evaluation=evaluation)


def make_launcher(settings: Settings) -> Launcher:
    """The launcher TEXTFT_LAUNCHER names: local child processes, or Ray tasks."""
    if settings.trainer_launcher == "ray":
        try:
            from .ray_launcher import RayLauncher  # Ray is an optional extra: imported only when chosen
        except ImportError as exc:
            raise ValueError(str(exc)) from None  # a configuration error, reported as one

        return RayLauncher(
            settings.ray_address,
            num_gpus=settings.ray_num_gpus,
            num_cpus=settings.ray_num_cpus,
            max_retries=settings.ray_max_retries,
            nproc=settings.trainer_nproc,
        )
    return LocalProcessLauncher(settings.trainer_nproc)


def build(settings: Settings) -> tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]:
    launcher = make_launcher(settings)
    core = TrainerCore(settings, open_store(settings.store), launcher)
    core.start()
    threading.Thread(target=configs.warm_up, name="warm-up", daemon=True).start()
    servicer = TrainerServicer(core)

    def register(server: grpc.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
        return [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name]

    def shutdown() -> None:
        core.shutdown()
        launcher.close()

    return register, shutdown


def main(argv: Sequence[str] | None = None) -> None:
    run_service("trainer", 50052, build, argv)


if __name__ == "__main__":
    main()
