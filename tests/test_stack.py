"""The three services as real processes (the `stack` fixture): health,
auth and UNIMPLEMENTED behave the same on each."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from textft import Client
from textft.errors import Unauthenticated
from textft.v1 import dataset_pb2, dataset_pb2_grpc, inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc

pytestmark = pytest.mark.integration

SERVICE_NAMES = {
    "dataset": "textft.v1.DatasetService",
    "trainer": "textft.v1.TrainerService",
    "inference": "textft.v1.InferenceService",
}
# One RPC per service that needs auth; the request is deliberately useless:
# an unauthenticated call must be refused before the handler looks at it.
GUARDED = {
    "dataset": lambda ch, md: dataset_pb2_grpc.DatasetServiceStub(ch).GetDataset(
        dataset_pb2.GetDatasetRequest(name="datasets/x"), metadata=md, timeout=30
    ),
    "trainer": lambda ch, md: trainer_pb2_grpc.TrainerServiceStub(ch).ListTemplates(
        trainer_pb2.ListTemplatesRequest(), metadata=md, timeout=30
    ),
    "inference": lambda ch, md: inference_pb2_grpc.InferenceServiceStub(ch).ListLoadedModelVersions(
        inference_pb2.ListLoadedModelVersionsRequest(), metadata=md, timeout=30
    ),
}


@pytest.mark.parametrize("service", list(SERVICE_NAMES))
@pytest.mark.parametrize("name", ["full", "overall"])
def test_health_serving(stack, service: str, name: str) -> None:
    with grpc.insecure_channel(stack.stack.addresses[service]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAMES[service] if name == "full" else "")
        assert health.Check(request, timeout=30).status == health_pb2.HealthCheckResponse.SERVING
        # Another service's name is not served here.
        other = next(n for s, n in SERVICE_NAMES.items() if s != service)
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service=other), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", list(SERVICE_NAMES))
@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer not-the-key"),), (("authorization", "Basic {key}"),)],
    ids=["no-key", "wrong-key", "basic-scheme"],
)
def test_unauthenticated(stack, service: str, metadata) -> None:
    metadata = tuple((k, v.format(key=stack.api_key)) for k, v in metadata)
    with grpc.insecure_channel(stack.stack.addresses[service]) as channel, pytest.raises(grpc.RpcError) as info:
        GUARDED[service](channel, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stack.api_key not in (info.value.details() or "")


def test_unauthenticated_through_the_sdk(stack) -> None:
    with stack.client(api_key="tft_wrong") as client, pytest.raises(Unauthenticated):
        client.call(client.datasets.GetDataset, dataset_pb2.GetDatasetRequest(name="datasets/x"))


@pytest.mark.parametrize("service", list(SERVICE_NAMES))
def test_unimplemented_rpc(stack, service: str) -> None:
    """A method the server does not have answers UNIMPLEMENTED, with or without a key."""
    with grpc.insecure_channel(stack.stack.addresses[service]) as channel:
        method = channel.unary_unary(f"/{SERVICE_NAMES[service]}/NoSuchMethod")
        for metadata in ([("authorization", f"Bearer {stack.api_key}")], []):
            with pytest.raises(grpc.RpcError) as info:
                method(b"", metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_authenticated_client_reaches_every_service(client: Client) -> None:
    """With the key, calls get past auth: whatever they answer, it is not UNAUTHENTICATED."""
    calls = [
        (client.datasets.ListDatasets, dataset_pb2.ListDatasetsRequest()),
        (client.trainer.ListTemplates, trainer_pb2.ListTemplatesRequest()),
        (client.inference.ListLoadedModelVersions, inference_pb2.ListLoadedModelVersionsRequest()),
    ]
    for method, request in calls:
        try:
            method(request, metadata=client.metadata, timeout=30)
        except grpc.RpcError as err:
            assert err.code() not in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}, err
