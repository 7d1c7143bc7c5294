"""EvaluateModelVersion through the real RPCs: a long-running evaluation of a
READY version on another dataset version in a child process, for both tasks,
polled and watched; the result is on the evaluation, the version and in
metrics.json; refusals and failures carry the right codes."""

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

ME = trainer_pb2.ModelEvaluation

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


def test_evaluation_is_a_resource_that_can_be_polled_and_watched(client: Client, classifier: tuple[str, str]) -> None:
    name, holdout = classifier
    started = client.start_evaluation(name, holdout)
    assert started.state == ME.STATE_RUNNING  # the call returned before the job ended
    assert started.name.startswith(f"{name}/evaluations/") and started.dataset_version == holdout
    assert client.get_evaluation(started.name).state in (ME.STATE_RUNNING, ME.STATE_SUCCEEDED)
    seen = list(client.watch_evaluation(started.name, timeout=300))
    assert seen[-1].state == ME.STATE_SUCCEEDED and all(e.state == ME.STATE_RUNNING for e in seen[:-1])
    assert seen[-1].progress.percent_completed == 100.0
    done = client.get_evaluation(started.name)
    assert done == seen[-1]
    assert done.result.dataset_version == holdout and done.result.example_count == 30
    # A watch that starts after the end gets the final evaluation and ends.
    assert list(client.watch_evaluation(started.name, timeout=60)) == [done]

    for bad, code in [
        (f"{name}/evaluations/e404", grpc.StatusCode.NOT_FOUND),
        (f"{name}/evaluations/../x", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(TextftError) as info:
            client.get_evaluation(bad)
        assert info.value.code == code


def test_an_evaluation_that_cannot_score_any_row_fails_with_its_reason(
    client: Client, classifier: tuple[str, str]
) -> None:
    name, _ = classifier
    client.create_dataset("eval-unknown")
    unknown = client.upload_dataset(
        "eval-unknown", b"text,label\nthe play was fine,meh\nso so,meh\n", task="classification", format="csv"
    )
    with pytest.raises(TextftError) as info:
        evaluate(client, name, unknown.name)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "EVALUATION_NO_USABLE_ROWS"
    started = client.start_evaluation(name, unknown.name)
    final = list(client.watch_evaluation(started.name, timeout=300))[-1]
    assert final.state == ME.STATE_FAILED and final.failure.reason == "EVALUATION_NO_USABLE_ROWS"
    assert final.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


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
