"""The resource-style SDK (client.datasets / client.models / client.versions and
Run objects) against the real stack, and that the namespaces still expose the
raw RPCs."""

from __future__ import annotations

import pytest
from support import TINY_BASE_URI

from textft import Client
from textft.errors import NotFound
from textft.resources import Run
from textft.v1 import dataset_pb2, trainer_pb2

pytestmark = pytest.mark.integration

ROWS = "text,label\n" + "".join(
    f"the show was {'lovely' if i % 2 else 'awful'} tonight,{'pos' if i % 2 else 'neg'}\n" for i in range(60)
)


def test_resource_style_flow(client: Client) -> None:
    client.datasets.create("res-reviews")
    version = client.datasets.upload("res-reviews", ROWS.encode(), task="classification", format="csv")
    assert client.datasets.version(version.name).stats.valid_row_count == 60
    assert [v.name for v in client.datasets.versions("res-reviews").dataset_versions] == [version.name]
    assert len(client.datasets.rows(version.name, page_size=5).rows) == 5

    client.models.create("res-sentiment", task="classification")
    assert any(
        t.name.endswith("gpt-neo-125m-lora-text-classification") for t in client.models.templates("classification")
    )
    run = client.versions.train(
        "res-sentiment",
        version.name,
        "gpt-neo-125m-lora-text-classification",
        model_config={"pretrained_model_name_or_path": TINY_BASE_URI},
        trainer_config={"max_steps": 12, "learning_rate": 5e-3, "logging_steps": 3},
    )
    assert isinstance(run, Run) and run.state == trainer_pb2.ModelVersion.STATE_QUEUED
    seen: list[int] = []
    assert run.wait(timeout=300, on_event=lambda e: seen.append(e.sequence)) is run
    assert run.state == trainer_pb2.ModelVersion.STATE_READY, run.failure.message
    assert seen == list(range(len(seen))) and len(seen) > 5
    assert [e.sequence for e in run.watch(timeout=60)] == seen
    scores = run.predict(["the show was lovely tonight"]).predictions[0].classification.scores
    assert {s.label for s in scores} == {"pos", "neg"}
    assert [r.name for r in client.versions.list("res-sentiment")] == [run.name]
    assert client.versions.get(run.name).refresh().adapter_uri == run.adapter_uri


def test_namespaces_keep_the_raw_rpcs(client: Client) -> None:
    response = client.datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1), metadata=client.metadata)
    assert isinstance(response, dataset_pb2.ListDatasetsResponse)
    with pytest.raises(NotFound):
        client.versions.get("models/nope/versions/v1")
