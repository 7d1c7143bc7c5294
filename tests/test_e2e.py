"""End to end through the three real services: upload -> train (tiny GPT-Neo,
real HF Trainer + PEFT in a child process) -> watch -> predict, for
classification and generation; the trained adapter loads outside textft with
plain transformers + PEFT (the snippet of its model card) and scores as the
service does; plus refusals that must happen before queueing. Each test asks
for what it needs through fixtures, so any order works."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support import (
    CLS_TEMPLATE,
    EV,
    GEN_TEMPLATE,
    MV,
    NEGATIVE,
    POSITIVE,
    TINY_BASE_KEY,
    TINY_BASE_URI,
    assert_numerically_close,
    sentiment_csv,
    states,
)

from textft import Client
from textft.errors import FailedPrecondition, InvalidArgument, NotFound, TextftError
from textft.v1 import common_pb2, trainer_pb2

pytestmark = pytest.mark.integration

FAST = {"num_train_epochs": 6, "learning_rate": 5e-3, "logging_steps": 5, "per_device_train_batch_size": 8}
UNSEEN = ["the film was wonderful from start to end", "the film was dreadful from start to end"]


@pytest.fixture(scope="module")
def cls_version(stack) -> str:
    with stack.client() as client:
        client.create_dataset("reviews")
        return client.upload_dataset("reviews", sentiment_csv(), task="classification", format="csv").name


@dataclass
class Trained:
    run: MV  # as created (QUEUED)
    events: list[EV]  # watched from the start to the end


@pytest.fixture(scope="module")
def trained_classifier(stack, cls_version: str) -> Trained:
    with stack.client() as client:
        run = _train(client, "sentiment", "classification", cls_version, CLS_TEMPLATE)
        return Trained(run, list(client.watch(run.name, timeout=600)))


def _train(client: Client, model: str, task: str, dataset_version: str, template: str, **kw: object) -> MV:
    try:
        client.create_model(model, task=task)
    except TextftError as e:
        if e.code != grpc.StatusCode.ALREADY_EXISTS:
            raise
    overrides = {"model_config": {"pretrained_model_name_or_path": TINY_BASE_URI}, "trainer_config": FAST}
    overrides.update(kw)  # type: ignore[arg-type]
    return client.train(model, dataset_version, template, **overrides)  # type: ignore[arg-type]


def test_classification_upload_train_predict(client: Client, cls_version: str, trained_classifier: Trained) -> None:
    version = client.get_dataset_version(cls_version)
    assert version.stats.valid_row_count == 160
    assert list(version.label_names) == ["neg", "pos"]

    run, events = trained_classifier.run, trained_classifier.events
    assert run.state == MV.STATE_QUEUED
    assert states(events) == ["QUEUED", "PREPARING_DATA", "TRAINING", "EVALUATING", "UPLOADING", "READY"]
    losses = [e.loss for e in events if e.kind == EV.KIND_PROGRESS and e.loss > 0]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert [e.sequence for e in events] == list(range(len(events)))

    done = client.get_model_version(run.name)
    assert done.state == MV.STATE_READY
    assert done.evaluation.metrics["accuracy"] >= 0.9
    assert set(done.evaluation.roc_auc_per_label) == {"neg", "pos"}
    assert done.adapter_uri.endswith("/adapter")
    assert done.lineage.base_model == TINY_BASE_URI
    assert done.train_row_count + done.eval_row_count == 160
    assert done.world_size == 1

    # A late watcher gets the whole history, and the stream ends.
    replay = list(client.watch(run.name, timeout=60))
    assert [e.sequence for e in replay] == [e.sequence for e in events]

    response = client.predict(run.name, UNSEEN)
    assert response.model_version == run.name
    top = [p.classification.scores[0].label for p in response.predictions]
    assert top == ["pos", "neg"]
    for p in response.predictions:
        scores = [s.score for s in p.classification.scores]
        assert scores == sorted(scores, reverse=True)
        assert_numerically_close(sum(scores), 1.0)
    # models/{m} resolves to the latest READY version.
    assert client.predict("models/sentiment", ["superb"]).model_version == run.name


def test_adapter_loads_with_plain_peft_and_scores_as_the_service(
    stack, client: Client, trained_classifier: Trained, tmp_path: Path
) -> None:
    """What a user does without textft: download the adapter, follow its
    model card (README.md), get the service's scores and label names."""
    done = client.get_model_version(trained_classifier.run.name)
    adapter = tmp_path / "adapter"
    stack.store.download_dir(done.adapter_uri, adapter)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in adapter.iterdir()}
    card = (adapter / "README.md").read_text()
    assert "library_name: peft" in card and done.name in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S)
    assert snippet, "the model card has a Python snippet"
    code = snippet.group(1)
    base = tmp_path / "base"  # a store:// base is downloaded first, as the card says
    stack.store.download_dir(TINY_BASE_KEY, base)
    for name, value in (("ADAPTER", str(adapter)), ("BASE", str(base)), ("TEXTS", UNSEEN)):
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, count=1, flags=re.M)
        assert count == 1, f"the snippet sets {name}"
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the card's own code, as a user runs it

    labels = namespace["LABELS"]
    assert labels == list(done.label_names)  # not LABEL_0, LABEL_1
    assert namespace["model"].config.id2label == dict(enumerate(labels))
    local = namespace["scores"].tolist()
    served = client.predict(done.name, UNSEEN).predictions
    for row, prediction in zip(local, served, strict=True):
        by_label = {s.label: s.score for s in prediction.classification.scores}
        assert_numerically_close(row, [by_label[label] for label in labels])


def test_generation_upload_train_predict(client: Client) -> None:
    rows = [f'{{"text": "upper: {w}", "target": "{w.upper()}"}}' for w in POSITIVE + NEGATIVE] * 8
    client.create_dataset("shout")
    version = client.upload_dataset("shout", ("\n".join(rows) + "\n").encode(), task="generation", format="jsonl")
    assert version.task == common_pb2.TASK_TEXT_GENERATION
    run = _train(client, "shouter", "generation", version.name, GEN_TEMPLATE)
    done = client.wait(run.name, timeout=600)
    assert done.state == MV.STATE_READY, done.failure.message
    assert {"loss", "perplexity", "exact_match"} <= set(done.evaluation.metrics)
    response = client.predict(run.name, ["upper: great", "upper: dull"], max_new_tokens=5, stop=["\n"])
    assert len(response.predictions) == 2
    for p in response.predictions:
        assert p.WhichOneof("result") == "generation"
        assert 0 < p.generation.generated_tokens <= 5


def test_refused_configs_never_queue(client: Client, cls_version: str) -> None:
    client.create_model("refusals", task="classification")
    cases = {
        "model_config.trust_remote_code": {"model_config": {"trust_remote_code": True}},
        "trainer_config.output_dir": {"trainer_config": {"output_dir": "/tmp/x"}},
        "trainer_config.learning_rate": {"trainer_config": {"learning_rate": "fast"}},
        "peft_config.rank": {"peft_config": {"rank": 8}},
        "trainer_config.push_to_hub": {"trainer_config": {"push_to_hub": True}},
    }
    for field, overrides in cases.items():
        with pytest.raises(InvalidArgument) as info:
            client.train("refusals", cls_version, CLS_TEMPLATE, **overrides)  # type: ignore[arg-type]
        assert field in [v.field for v in info.value.violations], (field, info.value)
    with pytest.raises(InvalidArgument) as info:
        client.train("refusals", cls_version, CLS_TEMPLATE, invalid_data_tolerance_percent=150)
    assert info.value.violations[0].field == "invalid_data_tolerance_percent"
    listed = client.trainer.ListModelVersions(
        trainer_pb2.ListModelVersionsRequest(parent="models/refusals"), metadata=client.metadata
    )
    assert list(listed.model_versions) == []


def test_unknown_dataset_version_is_not_found(client: Client) -> None:
    client.create_model("orphan", task="classification")
    with pytest.raises(NotFound):
        client.train("orphan", "datasets/nope/versions/v1", CLS_TEMPLATE)
    with pytest.raises(NotFound):
        client.get_dataset_version("datasets/nope/versions/v9")


def test_task_mismatch_and_not_ready(client: Client, cls_version: str) -> None:
    client.create_model("gen-model", task="generation")
    with pytest.raises(InvalidArgument):
        client.train("gen-model", cls_version, CLS_TEMPLATE)
    with pytest.raises(FailedPrecondition):
        client.train("gen-model", cls_version, GEN_TEMPLATE)
    with pytest.raises(NotFound):
        client.predict("models/gen-model/versions/v7", ["x"])


def test_tolerance_exceeded_fails_with_rows(client: Client) -> None:
    client.create_dataset("dirty")
    version = client.upload_dataset("dirty", sentiment_csv(40, bad_rows=10), task="classification", format="csv")
    assert version.stats.invalid_row_count == 10
    run = _train(client, "dirty-model", "classification", version.name, CLS_TEMPLATE, invalid_data_tolerance_percent=5)
    done = client.wait(run.name, timeout=300)
    assert done.state == MV.STATE_FAILED
    assert done.failure.reason == "MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED"
    assert done.failure.field == "invalid_data_tolerance_percent"
    assert list(done.failure.rows)[:3] == [41, 42, 43]
    # Above the share of invalid rows, the same data trains (invalid rows skipped).
    ok = _train(client, "dirty-model", "classification", version.name, CLS_TEMPLATE, invalid_data_tolerance_percent=25)
    finished = client.wait(ok.name, timeout=600)
    assert finished.state == MV.STATE_READY, finished.failure.message
    assert finished.skipped_row_count == 10
