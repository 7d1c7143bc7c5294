"""Apps on the running stack: a caller of app B tries every RPC on app A's
existing resources and on missing ones, with each of B's roles; every attempt
is refused, and no answer tells an existing resource from a missing one.
Also: who may manage apps, the SDK's and CLI's default app, and isolation of
listings, store prefixes and cross-references."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from reliability import record
from support import BASE, CLS_TEMPLATE, MV, error_of, sentiment_csv, wait_for

# Triton's client stubs, not textft.oip: both define the proto package
# `inference`, one process can hold only one, and test_oip uses Triton's.
from tritonclient.grpc import service_pb2 as oip_pb2
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from textft import Client
from textft.errors import FailedPrecondition, NotFound, PermissionDenied, TextftError
from textft.v1 import access_pb2, dataset_pb2, inference_pb2, trainer_pb2
from textft_services.common import access

pytestmark = pytest.mark.reliability
RUN = uuid.uuid4().hex[:6]
A, B, NONE = f"a-{RUN}", f"b-{RUN}", f"none-{RUN}"  # NONE: an app that does not exist
ROLES = ("admin", "editor", "predictor")


@dataclass
class World:
    """App A's resources, and the keys of app B's three roles."""

    a_key: str
    a_other_key_id: str
    b_keys: dict[str, str]
    dataset: str
    version: str
    model: str
    model_version: str
    evaluation: str


def app_client(stack: Any, key: str, app: str) -> Client:
    a = stack.stack.addresses
    return Client(a["dataset"], a["trainer"], a["inference"], api_key=key, app=app, retries=0)


@pytest.fixture(scope="module")
def world(stack: Any) -> Iterator[World]:
    with stack.client() as platform:
        a = platform.create_app(A, "app A", admin_principal="a-admin")
        b = platform.create_app(B, "app B", admin_principal="b-admin")
    with app_client(stack, a.admin_secret, A) as a_admin, app_client(stack, b.admin_secret, B) as b_admin:
        b_keys = {"admin": b.admin_secret}
        for role in ("editor", "predictor"):
            b_keys[role] = b_admin.create_api_key(f"b-{role}", role)[1]
        other_key = a_admin.create_api_key("a-reader", "predictor")[0]
        a_admin.create_dataset("d0")
        version = a_admin.upload_dataset("d0", sentiment_csv(48), task="classification", format="csv")
        a_admin.create_model("m0", task="classification")
        run = a_admin.train(
            "m0", version.name, CLS_TEMPLATE, model_config=BASE, trainer_config={"max_steps": 2, "save_strategy": "no"}
        )
        done = a_admin.wait(run.name, timeout=600)
        assert done.state == MV.STATE_READY, done.failure
        evaluation = a_admin.start_evaluation(done.name, version.name)
        # B has resources of its own, to compare refusals with its own misses.
        b_admin.create_dataset("d0")
        b_admin.create_model("m0", task="classification")
        yield World(
            a_key=a.admin_secret,
            a_other_key_id=other_key.key_id,
            b_keys=b_keys,
            dataset=f"apps/{A}/datasets/d0",
            version=version.name,
            model=f"apps/{A}/models/m0",
            model_version=done.name,
            evaluation=evaluation.name,
        )


def _missing(value: str) -> str:
    """The same kind of name for something that does not exist."""
    return (
        value.replace(f"apps/{A}/datasets/d0", f"apps/{A}/datasets/dx")
        .replace(f"apps/{A}/models/m0", f"apps/{A}/models/mx")
        .replace(f"apps/{A}", f"apps/{NONE}")
        if "/" in value
        else value.replace(A, NONE)
    )


def _normalised(error: TextftError, real: dict[str, str]) -> tuple[Any, ...]:
    """An answer with the missing names put back to the real ones, everything compared."""

    def norm(text: str) -> str:
        for real_value, missing_value in real.items():
            text = text.replace(missing_value, real_value)
        return text

    return (
        type(error).__name__,
        error.code,
        error.reason,
        norm(error.message),
        sorted((k, norm(v)) for k, v in error.metadata.items()),
        [(v.field, norm(v.description)) for v in error.violations],
    )


def _attempts(w: World, b_model: str) -> dict[str, Callable[[Client, Callable[[str], str]], object]]:
    """One call per RPC that names an app or a resource; `n` maps each of A's
    names to the one the attempt uses (itself, or a missing counterpart)."""
    ds, dv, model, mv, ev = w.dataset, w.version, w.model, w.model_version, w.evaluation

    def stream(c: Client, method: Any, request: Any) -> object:
        return next(iter(c.stream(method, request, timeout=30)))

    def oip(c: Client) -> Any:
        return oip_grpc.GRPCInferenceServiceStub(c._channels[2])

    def upload(c: Client, n: Callable[[str], str]) -> object:
        return c.upload_dataset(n(ds), sentiment_csv(8), task="classification", format="csv")

    header = lambda n: dataset_pb2.UploadHeader(parent=n(ds), task=1)  # noqa: E731
    return {
        "/textft.v1.DatasetService/CreateDataset": lambda c, n: c.call(
            c.datasets.CreateDataset, dataset_pb2.CreateDatasetRequest(parent=n(f"apps/{A}"), dataset_id="new")
        ),
        "/textft.v1.DatasetService/GetDataset": lambda c, n: c.get_dataset(n(ds)),
        "/textft.v1.DatasetService/ListDatasets": lambda c, n: c.call(
            c.datasets.ListDatasets, dataset_pb2.ListDatasetsRequest(parent=n(f"apps/{A}"))
        ),
        "/textft.v1.DatasetService/DeleteDataset": lambda c, n: c.call(
            c.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name=n(ds), force=True)
        ),
        "/textft.v1.DatasetService/UploadDatasetVersion": upload,
        "/textft.v1.DatasetService/ImportDatasetVersion": lambda c, n: c.call(
            c.datasets.ImportDatasetVersion,
            dataset_pb2.ImportDatasetVersionRequest(header=header(n), source_object="imports/x.csv"),
        ),
        "/textft.v1.DatasetService/GetDatasetVersion": lambda c, n: c.get_dataset_version(n(dv)),
        "/textft.v1.DatasetService/ListDatasetVersions": lambda c, n: c.list_dataset_versions(n(ds)),
        "/textft.v1.DatasetService/ReadRows": lambda c, n: c.read_rows(n(dv)),
        "/textft.v1.DatasetService/GetValidationReport": lambda c, n: c.get_validation_report(n(dv)),
        "/textft.v1.TrainerService/CreateModel": lambda c, n: c.call(
            c.trainer.CreateModel, trainer_pb2.CreateModelRequest(parent=n(f"apps/{A}"), model_id="new", task=1)
        ),
        "/textft.v1.TrainerService/GetModel": lambda c, n: c.get_model(n(model)),
        "/textft.v1.TrainerService/ListModels": lambda c, n: c.call(
            c.trainer.ListModels, trainer_pb2.ListModelsRequest(parent=n(f"apps/{A}"))
        ),
        "/textft.v1.TrainerService/DeleteModel": lambda c, n: c.call(
            c.trainer.DeleteModel, trainer_pb2.DeleteModelRequest(name=n(model))
        ),
        "/textft.v1.TrainerService/CreateModelVersion": lambda c, n: c.train(n(model), n(dv), CLS_TEMPLATE),
        # A cross-reference: B's own model trained on A's dataset version.
        "/textft.v1.TrainerService/CreateModelVersion (B's model, A's data)": lambda c, n: c.train(
            b_model, n(dv), CLS_TEMPLATE
        ),
        "/textft.v1.TrainerService/GetModelVersion": lambda c, n: c.get_model_version(n(mv)),
        "/textft.v1.TrainerService/ListModelVersions": lambda c, n: c.list_model_versions(n(model)),
        "/textft.v1.TrainerService/WatchModelVersion": lambda c, n: stream(
            c, c.trainer.WatchModelVersion, trainer_pb2.WatchModelVersionRequest(name=n(mv))
        ),
        "/textft.v1.TrainerService/CancelModelVersion": lambda c, n: c.cancel(n(mv)),
        "/textft.v1.TrainerService/EvaluateModelVersion": lambda c, n: c.start_evaluation(n(mv), n(dv)),
        "/textft.v1.TrainerService/GetModelEvaluation": lambda c, n: c.get_evaluation(n(ev)),
        "/textft.v1.TrainerService/WatchModelEvaluation": lambda c, n: stream(
            c, c.trainer.WatchModelEvaluation, trainer_pb2.WatchModelEvaluationRequest(name=n(ev))
        ),
        "/textft.v1.InferenceService/Predict": lambda c, n: c.predict(n(mv), ["x"]),
        "/textft.v1.InferenceService/PredictStream": lambda c, n: stream(
            c, c.inference.PredictStream, inference_pb2.PredictStreamRequest(model_version=n(mv), text="x")
        ),
        "/textft.v1.InferenceService/LoadModelVersion": lambda c, n: c.load_model_version(n(mv)),
        "/textft.v1.InferenceService/UnloadModelVersion": lambda c, n: c.unload_model_version(n(mv)),
        "/textft.v1.InferenceService/ListLoadedModelVersions": lambda c, n: c.call(
            c.inference.ListLoadedModelVersions, inference_pb2.ListLoadedModelVersionsRequest(parent=n(f"apps/{A}"))
        ),
        "/inference.GRPCInferenceService/ModelReady": lambda c, n: c.call(
            oip(c).ModelReady, oip_pb2.ModelReadyRequest(name=n(model))
        ),
        "/inference.GRPCInferenceService/ModelMetadata": lambda c, n: c.call(
            oip(c).ModelMetadata, oip_pb2.ModelMetadataRequest(name=n(model))
        ),
        "/inference.GRPCInferenceService/ModelInfer": lambda c, n: c.call(
            oip(c).ModelInfer, oip_pb2.ModelInferRequest(model_name=n(model), model_version="1")
        ),
        "/textft.v1.AccessService/CreateApiKey": lambda c, n: c.call(
            c.access.CreateApiKey, access_pb2.CreateApiKeyRequest(app=n(A), principal="intruder", role=1)
        ),
        "/textft.v1.AccessService/ListApiKeys": lambda c, n: c.call(
            c.access.ListApiKeys, access_pb2.ListApiKeysRequest(app=n(A))
        ),
        "/textft.v1.AccessService/RevokeApiKey": lambda c, n: c.revoke_api_key(n(w.a_other_key_id)),
        "/textft.v1.AccessService/ListAuditEvents": lambda c, n: c.call(
            c.access.ListAuditEvents, access_pb2.ListAuditEventsRequest(app=n(A))
        ),
        "/textft.v1.AccessService/CreateApp": lambda c, n: c.create_app(n(A)),
        "/textft.v1.AccessService/GetApp": lambda c, n: c.get_app(n(A)),
        "/textft.v1.AccessService/DeleteApp": lambda c, n: c.delete_app(n(A)),
    }


def test_a_caller_of_another_app_is_refused_on_every_rpc_and_learns_nothing(stack, world: World) -> None:
    attempts = _attempts(world, f"apps/{B}/models/m0")
    # Every RPC whose request names an app or a resource (the fields the
    # policy reads) has an attempt here: a new one fails this test until added.
    named = {
        f"/{service.full_name}/{m.name}"
        for module in (access_pb2, dataset_pb2, trainer_pb2, inference_pb2, oip_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
        if access.reference_paths(m.input_type)
        and m.name != "GetTemplate"  # templates belong to no app
        and f"/{service.full_name}/{m.name}" in access.METHOD_PERMISSIONS  # served (Triton's stubs have more)
    }
    assert len(named) > 30
    assert named <= {key.split(" ")[0] for key in attempts}, named - set(attempts)
    missing_key_id = uuid.uuid4().hex[:12]
    real = {  # each of A's names -> its missing counterpart (n() below), for comparing the answers
        world.dataset: _missing(world.dataset),
        world.version: _missing(world.version),
        world.model: _missing(world.model),
        world.model_version: _missing(world.model_version),
        world.evaluation: _missing(world.evaluation),
        f"apps/{A}": f"apps/{NONE}",
        world.a_other_key_id: missing_key_id,
        A: NONE,
    }

    def missing(value: str) -> str:
        return real.get(value, _missing(value))

    refused = leaked = total = 0
    wrong = []
    for role in ROLES:
        with app_client(stack, world.b_keys[role], B) as caller:
            for method, attempt in attempts.items():
                total += 1
                on_real = error_of(lambda: attempt(caller, lambda v: v))  # noqa: B023
                on_missing = error_of(lambda: attempt(caller, missing))  # noqa: B023
                if isinstance(on_real, (NotFound, PermissionDenied)):
                    refused += 1
                else:
                    wrong.append(f"{role} {method}: {type(on_real).__name__} {on_real.message}")
                if _normalised(on_real, real) != _normalised(on_missing, real):
                    leaked += 1
                    wrong.append(f"{role} {method}: {_normalised(on_real, real)} != {_normalised(on_missing, real)}")
    record(
        "security",
        "Cross-app attempts on every RPC x each role (admin, editor, predictor)",
        f"refused {refused}/{total}, existence leaked {leaked}",
    )
    assert wrong == []
    assert total == 3 * len(attempts) and total > 100
    # Nothing of A's was touched: its resources and keys are as they were.
    with app_client(stack, world.a_key, A) as a_admin:
        assert a_admin.get_dataset("d0").name == world.dataset
        assert [m.name for m in a_admin.list_models().models] == [world.model]
        assert a_admin.get_model_version(world.model_version).state == MV.STATE_READY
        assert world.a_other_key_id in {k.key_id for k in a_admin.list_api_keys()}
        assert [d.name for d in a_admin.list_datasets().datasets] == [world.dataset]


def test_refusals_read_like_the_callers_own_missing_resources(stack, world: World) -> None:
    """B asking for A's dataset gets the answer B gets for a dataset B lacks."""
    with app_client(stack, world.b_keys["editor"], B) as b:
        pairs = [
            (lambda: b.get_dataset(world.dataset), lambda: b.get_dataset("nope")),
            (lambda: b.get_dataset_version(world.version), lambda: b.get_dataset_version("datasets/d0/versions/v9")),
            (lambda: b.get_model(world.model), lambda: b.get_model("nope")),
            (lambda: b.get_model_version(world.model_version), lambda: b.get_model_version("models/m0/versions/v9")),
        ]
        for theirs, own in pairs:
            refused, missing = error_of(theirs), error_of(own)
            assert isinstance(refused, NotFound) and isinstance(missing, NotFound)
            assert (refused.reason, refused.metadata) == (missing.reason, missing.metadata)
            assert refused.message.split(" apps/")[0] == missing.message.split(" apps/")[0]
            assert refused.message.endswith(" not found") and missing.message.endswith(" not found")


def test_listings_and_store_prefixes_stay_in_their_app(stack, world: World) -> None:
    with app_client(stack, world.b_keys["admin"], B) as b, app_client(stack, world.a_key, A) as a:
        assert [d.name for d in b.list_datasets().datasets] == [f"apps/{B}/datasets/d0"]
        assert [m.name for m in b.list_models().models] == [f"apps/{B}/models/m0"]
        # The same ids in two apps are two resources.
        assert a.get_dataset("d0").name != b.get_dataset("d0").name
        assert b.list_dataset_versions("d0").dataset_versions == []
        assert world.model_version not in {v.model_version for v in b.list_loaded_model_versions()}
    with stack.client() as platform:  # the default app sees none of the apps' resources
        assert not any(d.name.startswith("apps/") for d in platform.list_datasets(page_size=1000).datasets)
    keys = list(stack.store.list(f"apps/{A}/"))
    assert any(k.startswith(f"apps/{A}/datasets/d0/versions/v1/") for k in keys)
    assert any(k.startswith(f"apps/{A}/models/m0/versions/v1/adapter/") for k in keys)
    assert not list(stack.store.list("datasets/d0/"))  # nothing of A's landed in the default app's prefix


def test_only_platform_admins_manage_apps(stack, world: World) -> None:
    with app_client(stack, world.b_keys["admin"], B) as b_admin:
        assert b_admin.whoami().app == B
        assert b_admin.get_app().name == f"apps/{B}"  # its own app, any role
        for call in (lambda: b_admin.create_app(f"x-{RUN}"), b_admin.list_apps, lambda: b_admin.delete_app(B)):
            error = error_of(call)
            assert isinstance(error, PermissionDenied) and "platform" in error.message
    with stack.client() as platform:
        listed = {a.name for a in platform.list_apps()}
        assert {"apps/default", f"apps/{A}", f"apps/{B}"} <= listed
        assert platform.get_app(A).description == "app A"
        assert isinstance(error_of(lambda: platform.create_app(A)), TextftError)  # exists already
        refused = error_of(lambda: platform.delete_app(A))
        assert isinstance(refused, FailedPrecondition) and refused.reason == "APP_NOT_EMPTY"
        scratch = platform.create_app(f"s-{RUN}", admin_principal="s-admin")
        with app_client(stack, scratch.admin_secret, f"s-{RUN}") as s:
            assert s.whoami().role == access_pb2.ROLE_ADMIN
            s.create_dataset("empty")  # a row in the database, no object in the store
            refused = error_of(lambda: platform.delete_app(f"s-{RUN}"))
            assert isinstance(refused, FailedPrecondition) and refused.reason == "APP_NOT_EMPTY"
            s.call(s.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name=f"apps/s-{RUN}/datasets/empty"))
            s.create_model("empty", task="classification")  # a row too
            refused = error_of(lambda: platform.delete_app(f"s-{RUN}"))
            assert isinstance(refused, FailedPrecondition) and refused.reason == "APP_NOT_EMPTY"
            s.call(s.trainer.DeleteModel, trainer_pb2.DeleteModelRequest(name=f"apps/s-{RUN}/models/empty"))
            platform.delete_app(f"s-{RUN}")

            # Its keys are revoked with it (every service, within the key cache's seconds).
            def revoked() -> bool:
                try:
                    s.whoami()
                except TextftError:
                    return True
                return False

            wait_for(revoked, timeout=access.AUTH_CACHE_SECONDS + 10, what="the deleted app's key refused")
        assert f"apps/s-{RUN}" not in {a.name for a in platform.list_apps()}


def test_sdk_and_cli_take_the_app_from_textft_app(stack, world: World) -> None:
    env = {**os.environ, "TEXTFT_APP": A, "TEXTFT_API_KEY": world.a_key}
    a = stack.stack.addresses
    client = Client(a["dataset"], a["trainer"], a["inference"], env=env)
    with client:
        assert client.app == A
        assert client.get_dataset("d0").name == world.dataset  # short names are A's
        assert client.get_model("models/m0").name == world.model
    cli = [sys.executable, "-m", "textft"]
    addrs = ["--dataset-addr", a["dataset"], "--trainer-addr", a["trainer"], "--inference-addr", a["inference"]]

    def run(*args: str, app_env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *addrs, *args], env=app_env, capture_output=True, text=True, timeout=120)

    shown = run("datasets", "get", "d0")
    assert shown.returncode == 0, shown.stderr
    assert world.dataset in shown.stdout
    whoami = run("whoami")
    assert f"in app {A}" in whoami.stdout
    # --app overrides TEXTFT_APP: with A's key, B's names are NOT_FOUND.
    other = run("--app", B, "datasets", "get", "d0")
    assert other.returncode == 1 and "NOT_FOUND" in other.stderr
    platform = {**env, "TEXTFT_API_KEY": stack.api_key, "TEXTFT_APP": ""}
    listed = run("apps", "list", app_env=platform)
    assert listed.returncode == 0 and f"apps/{A}" in listed.stdout
    created = run("apps", "create", f"c-{RUN}", "--admin", "carol", "--description", "from the CLI", app_env=platform)
    assert created.returncode == 0, created.stderr
    secret = next(line for line in created.stdout.splitlines() if line.startswith("tft_"))
    own = {**env, "TEXTFT_API_KEY": secret, "TEXTFT_APP": f"c-{RUN}"}
    assert f"carol: admin in app c-{RUN}" in run("whoami", app_env=own).stdout
    shown = run("apps", "show", app_env=own)  # an app's own key reads its app
    assert f"apps/c-{RUN}" in shown.stdout and "from the CLI" in shown.stdout
    refused = run("apps", "delete", f"c-{RUN}", app_env=own)  # but only platform admins delete
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    assert run("apps", "delete", f"c-{RUN}", app_env=platform).returncode == 0
    assert f"apps/c-{RUN}" not in run("apps", "list", app_env=platform).stdout


def test_grpc_codes_of_a_cross_app_refusal_match_a_missing_resource_on_the_wire(stack, world: World) -> None:
    """Status code, details and trailing metadata, raw, as a non-SDK client sees them."""
    channel = grpc.insecure_channel(stack.stack.addresses["dataset"])
    metadata = [("authorization", f"Bearer {world.b_keys['predictor']}")]
    get = channel.unary_unary(
        "/textft.v1.DatasetService/GetDataset",
        request_serializer=dataset_pb2.GetDatasetRequest.SerializeToString,
        response_deserializer=dataset_pb2.GetDatasetResponse.FromString,
    )
    answers = []
    for name in (world.dataset, _missing(world.dataset)):
        with pytest.raises(grpc.RpcError) as info:
            get(dataset_pb2.GetDatasetRequest(name=name), metadata=metadata, timeout=10)
        err = info.value
        trailing = sorted(
            (k, v if isinstance(v, str) else "<binary>") for k, v in err.trailing_metadata() or () if k != "date"
        )
        answers.append((err.code(), err.details().replace(name, "NAME"), trailing))
    channel.close()
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.NOT_FOUND
