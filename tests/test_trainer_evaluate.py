"""EvaluateModelVersion through the real RPCs: a READY version evaluated on
another dataset version in a child process, for both tasks; the result is on
the version and in metrics.json; refusals carry the right codes."""

from __future__ import annotations

import json
import random

import grpc
import pytest
from support import BASE, MV

from textft import Client
from textft.errors import TextftError
from textft.v1 import trainer_pb2

pytestmark = pytest.mark.integration

WORDS = {"pos": ["great", "superb", "loved"], "neg": ["awful", "dull", "hated"]}


def _csv(n: int, seed: int, extra: list[str] = ()) -> bytes:  # type: ignore[assignment]
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        lines.append(f"the play was {rng.choice(WORDS[label])},{label}")
    return ("\n".join([*lines, *extra]) + "\n").encode()


def evaluate(client: Client, name: str, dataset_version: str) -> trainer_pb2.Evaluation:
    return client.evaluate(name, dataset_version, timeout=300)


@pytest.fixture(scope="module")
def classifier(stack) -> tuple[str, str]:
    """A READY classifier and a second dataset version to evaluate it on."""
    with stack.client() as client:
        client.create_dataset("eval-train")
        train = client.upload_dataset("eval-train", _csv(120, 3), task="classification", format="csv")
        client.create_dataset("eval-holdout")
        # One row with a label the model never saw: skipped, and counted.
        holdout = client.upload_dataset(
            "eval-holdout", _csv(30, 4, ["the play was fine,meh"]), task="classification", format="csv"
        )
        client.create_model("evaluated", task="classification")
        run = client.train(
            "evaluated",
            train.name,
            "templates/gpt-neo-125m-lora-text-classification",
            model_config=BASE,
            trainer_config={"max_steps": 60, "learning_rate": 5e-3, "logging_steps": 20},
        )
        done = client.wait(run.name, timeout=300)
        assert done.state == MV.STATE_READY, done.failure.message
        return done.name, holdout.name


def test_evaluate_classification_on_another_dataset(stack, client: Client, classifier: tuple[str, str]) -> None:
    name, holdout = classifier
    evaluation = evaluate(client, name, holdout)
    assert evaluation.dataset_version == holdout
    assert evaluation.example_count == 30 and evaluation.skipped_row_count == 1
    assert {"accuracy", "macro_f1", "loss", "roc_auc"} <= set(evaluation.metrics)
    assert evaluation.metrics["accuracy"] >= 0.9
    assert list(evaluation.label_names) == ["neg", "pos"]
    assert len(evaluation.confusion_matrix) == 4 and sum(evaluation.confusion_matrix) == 30
    assert set(evaluation.roc_auc_per_label) == {"neg", "pos"}
    assert {c.label for c in evaluation.roc_curves} == {"neg", "pos"}

    # Kept on the version (latest per dataset version) and in metrics.json.
    version = client.get_model_version(name)
    assert [e.dataset_version for e in version.evaluations] == [holdout]
    metrics = json.loads(stack.store.get_bytes(f"{name}/metrics.json"))
    assert "accuracy" in metrics["metrics"]  # the end-of-training evaluation stays
    assert metrics["evaluations"][holdout]["metrics"]["accuracy"] == pytest.approx(evaluation.metrics["accuracy"])


def test_evaluate_generation_reports_rouge_l(client: Client) -> None:
    rows = [f'{{"text": "echo: {w}", "target": "{w}"}}' for w in ["alpha", "beta", "gamma", "delta"] * 6]
    client.create_dataset("eval-gen")
    version = client.upload_dataset("eval-gen", ("\n".join(rows) + "\n").encode(), task="generation", format="jsonl")
    client.create_model("eval-gen", task="generation")
    run = client.train(
        "eval-gen",
        version.name,
        "templates/gpt-neo-125m-lora-text-generation",
        model_config=BASE,
        trainer_config={"max_steps": 6, "logging_steps": 3},
    )
    done = client.wait(run.name, timeout=300)
    assert done.state == MV.STATE_READY, done.failure.message
    assert "rouge_l" in done.evaluation.metrics  # also at the end of training

    evaluation = evaluate(client, run.name, version.name)
    assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(evaluation.metrics)
    assert evaluation.example_count == 24
    assert 0.0 <= evaluation.metrics["exact_match"] <= evaluation.metrics["rouge_l"] <= 1.0
    assert evaluation.metrics["perplexity"] > 1.0


def test_evaluate_refusals(client: Client, classifier: tuple[str, str]) -> None:
    name, holdout = classifier
    cases = [
        (name, "", grpc.StatusCode.INVALID_ARGUMENT),
        (name, "datasets/eval-holdout/versions/v99", grpc.StatusCode.NOT_FOUND),
        (name, "not a name", grpc.StatusCode.INVALID_ARGUMENT),
        ("models/evaluated/versions/v404", holdout, grpc.StatusCode.NOT_FOUND),
    ]
    for model_version, dataset_version, code in cases:
        with pytest.raises(TextftError) as info:
            evaluate(client, model_version, dataset_version)
        assert info.value.code == code, (model_version, dataset_version, info.value)
    with pytest.raises(TextftError) as info:
        evaluate(client, name, "")
    assert [v.field for v in info.value.violations] == ["dataset_version"]

    # A version that is not READY cannot be evaluated.
    client.create_model("never-ready", task="classification")
    queued = client.train(
        "never-ready",
        holdout,
        "templates/gpt-neo-125m-lora-text-classification",
        model_config=BASE,
        trainer_config={"max_steps": 1},
    )
    client.cancel(queued.name)
    with pytest.raises(TextftError) as info:
        evaluate(client, queued.name, holdout)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "MODEL_VERSION_NOT_READY"
