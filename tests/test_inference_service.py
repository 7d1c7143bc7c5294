"""InferenceService through real RPCs, with real PEFT adapters trained in the
test through the real stack (tiny GPT-Neo): mixed-adapter micro-batches equal
one-by-one calls, LRU eviction, streaming and cancel, overload, deadlines,
status codes, and the Prometheus endpoint.

Two inference processes: the stack's own (default settings, continuous
batching for generation: one-by-one references, status codes, streams running
alongside short requests) and a dedicated one started here with static batching
for generation, whose gathering window never closes on its own (an hour), 8 texts per batch, 6 waiting requests
at most, 2 adapters cached and metrics on. A batch there runs when it is full
and only then, so tests decide what shares a forward pass without timing
anything (requests that must not run are cancelled or expire); the metrics
endpoint tells what happened.
"""

from __future__ import annotations

import itertools
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import RunningStack
from support import CLS_TEMPLATE, GEN_TEMPLATE, MV, TINY_BASE_URI, assert_numerically_close, wait_for

from textft import Client
from textft.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TextftError,
)
from textft.v1 import inference_pb2
from textft_services.inference.metrics import parse
from textft_services.stack import ServiceProcess, _free_port, start_service

pytestmark = pytest.mark.integration

Gen = inference_pb2.Generation
SHORT = {"max_steps": 10, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 5}
WORDS = ["great", "awful", "superb", "boring", "loved", "dull", "wonderful", "dreadful"]
GOOD = {"great", "superb", "loved", "wonderful"}
TEXTS = [f"the film was {w} from start to end" for w in WORDS]
BATCH = 8  # TEXTFT_INFERENCE_MAX_BATCH_SIZE of the dedicated process


@dataclass
class Versions:
    cls: list[str]  # two classification adapters of one base (opposite labelling)
    gen: list[str]  # two generation adapters of one base


@pytest.fixture(scope="module")
def versions(stack: RunningStack) -> Versions:
    """Four adapters trained briefly through the real trainer."""
    with stack.client() as c:
        c.create_dataset("inf-sentiment")
        c.create_dataset("inf-sentiment-flipped")
        c.create_dataset("inf-shout")
        c.create_dataset("inf-whisper")
        rows = [(t, "pos" if w in GOOD else "neg") for w, t in zip(WORDS, TEXTS, strict=True)] * 6
        normal = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows)
        flipped = "text,label\n" + "".join(f"{t},{'neg' if lab == 'pos' else 'pos'}\n" for t, lab in rows)
        shout = "".join(f'{{"text": "upper: {w}", "target": "{w.upper()}"}}\n' for w in WORDS) * 6
        whisper = "".join(f'{{"text": "echo: {w}", "target": "{w} {w}"}}\n' for w in WORDS) * 6
        datasets = [
            c.upload_dataset("inf-sentiment", normal.encode(), task="classification", format="csv").name,
            c.upload_dataset("inf-sentiment-flipped", flipped.encode(), task="classification", format="csv").name,
            c.upload_dataset("inf-shout", shout.encode(), task="generation", format="jsonl").name,
            c.upload_dataset("inf-whisper", whisper.encode(), task="generation", format="jsonl").name,
        ]
        runs = []
        for i, dataset in enumerate(datasets):
            task, template = ("classification", CLS_TEMPLATE) if i < 2 else ("generation", GEN_TEMPLATE)
            model = f"inf-{i}"
            c.create_model(model, task=task)
            overrides = {"model_config": {"pretrained_model_name_or_path": TINY_BASE_URI}, "trainer_config": SHORT}
            runs.append(c.train(model, dataset, template, **overrides).name)  # type: ignore[arg-type]
        for run in runs:
            done = c.wait(run, timeout=600)
            assert done.state == MV.STATE_READY, done.failure.message
    return Versions(runs[:2], runs[2:])


@dataclass
class Dedicated:
    service: ServiceProcess
    metrics_url: str
    client: Client

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return parse(response.read().decode())


@pytest.fixture(scope="module")
def dedicated(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dedicated]:
    port = _free_port()
    home = tmp_path_factory.mktemp("inference-dedicated")
    env = {
        **stack.env,
        "TEXTFT_HOME": str(home),
        "TEXTFT_INFERENCE_MAX_ADAPTERS": "2",
        "TEXTFT_INFERENCE_GENERATION_BATCHING": "static",
        "TEXTFT_INFERENCE_BATCH_WAIT_MS": str(3_600_000),  # batches close when full
        "TEXTFT_INFERENCE_MAX_BATCH_SIZE": str(BATCH),
        "TEXTFT_INFERENCE_QUEUE_SIZE": "6",
        "TEXTFT_METRICS_PORT": str(port),
    }
    with open(home / "inference.log", "w") as log:
        service = start_service("inference", env, log=log)
        a = stack.stack.addresses
        client = Client(a["dataset"], a["trainer"], service.address, api_key=stack.api_key, timeout=120)
        try:
            yield Dedicated(service, f"http://127.0.0.1:{port}/metrics", client)
        finally:
            client.close()
            service.stop()


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs calls concurrently, released by one barrier; returns results or exceptions."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(30)
        try:
            return call()
        except TextftError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def scores(p: inference_pb2.Prediction) -> dict[str, float]:
    return {s.label: s.score for s in p.classification.scores}


# ---- micro-batching across adapters ----
def test_mixed_classification_batch_equals_one_by_one(client: Client, dedicated: Dedicated, versions: Versions) -> None:
    one_by_one = {(v, t): client.predict(v, [t]).predictions[0] for v in versions.cls for t in TEXTS}
    # The two adapters disagree (opposite labels), so a row routed to the wrong
    # adapter or the wrong classification head would show.
    assert any(
        one_by_one[(versions.cls[0], t)].classification.scores[0].label
        != one_by_one[(versions.cls[1], t)].classification.scores[0].label
        for t in TEXTS
    )
    for v in versions.cls:
        dedicated.client.load_model_version(v)
    before = dedicated.metrics()
    # Four requests, alternating adapters, two texts each: exactly one full batch.
    plan = [(versions.cls[i % 2], TEXTS[2 * i : 2 * i + 2]) for i in range(4)]
    results = together([lambda v=v, ts=ts: dedicated.client.predict(v, ts) for v, ts in plan])
    after = dedicated.metrics()
    for (version, texts), response in zip(plan, results, strict=True):
        assert not isinstance(response, Exception), response
        assert response.model_version == version
        for text, got in zip(texts, response.predictions, strict=True):
            want = one_by_one[(version, text)]
            assert got.classification.scores[0].label == want.classification.scores[0].label
            assert_numerically_close(list(scores(got).values()), [scores(want)[k] for k in scores(got)])
    assert delta(before, after, "textft_inference_batch_rows_count") == 1  # one forward pass
    assert delta(before, after, "textft_inference_batch_rows_sum") == BATCH
    assert delta(before, after, "textft_inference_batch_adapters_sum") == 2
    assert delta(before, after, "textft_inference_mixed_batches_total") == 1


def test_mixed_generation_batch_equals_one_by_one(client: Client, dedicated: Dedicated, versions: Versions) -> None:
    prompts = [f"upper: {w}" for w in WORDS[:4]] + [f"echo: {w}" for w in WORDS[4:]]
    kw: dict[str, Any] = {"max_new_tokens": 6}
    one_by_one = {(v, p): client.predict(v, [p], **kw).predictions[0].generation for v in versions.gen for p in prompts}
    for v in versions.gen:
        dedicated.client.load_model_version(v)
    before = dedicated.metrics()
    plan = [(versions.gen[i % 2], prompts[2 * i : 2 * i + 2]) for i in range(4)]
    results = together([lambda v=v, ps=ps: dedicated.client.predict(v, ps, **kw) for v, ps in plan])
    after = dedicated.metrics()
    for (version, batch_prompts), response in zip(plan, results, strict=True):
        assert not isinstance(response, Exception), response
        for prompt, got in zip(batch_prompts, response.predictions, strict=True):
            want = one_by_one[(version, prompt)]
            assert (got.generation.text, got.generation.generated_tokens, got.generation.finish_reason) == (
                want.text,
                want.generated_tokens,
                want.finish_reason,
            )
    assert delta(before, after, "textft_inference_batch_rows_count") == 1
    assert delta(before, after, "textft_inference_mixed_batches_total") == 1


# ---- cache ----
def test_lru_eviction_load_unload_list(dedicated: Dedicated, versions: Versions) -> None:
    c = dedicated.client
    before = dedicated.metrics()
    c.load_model_version(versions.cls[0])
    c.load_model_version(versions.cls[1])
    assert {v.model_version for v in c.list_loaded_model_versions()} == set(versions.cls)
    # Using cls[0] makes cls[1] the least recently used: loading a third adapter evicts it.
    assert len(c.predict(versions.cls[0], TEXTS).predictions) == BATCH  # a full batch runs at once
    loaded = c.load_model_version(versions.gen[0])
    assert loaded.load_seconds > 0 and loaded.adapter_bytes > 0 and loaded.base_model == TINY_BASE_URI
    assert {v.model_version for v in c.list_loaded_model_versions()} == {versions.cls[0], versions.gen[0]}
    c.unload_model_version(versions.gen[0])
    assert [v.model_version for v in c.list_loaded_model_versions()] == [versions.cls[0]]
    with pytest.raises(NotFound):
        c.unload_model_version(versions.gen[0])
    # An evicted version reloads on demand.
    assert len(c.predict(versions.cls[1], TEXTS).predictions) == BATCH
    after = dedicated.metrics()
    assert delta(before, after, 'textft_inference_cache_evictions_total{reason="lru"}') >= 1
    assert delta(before, after, 'textft_inference_cache_evictions_total{reason="unload"}') == 1
    assert delta(before, after, "textft_inference_cache_misses_total") >= 2  # gen[0], cls[1] again
    assert delta(before, after, "textft_inference_adapter_load_seconds_count") >= 2
    assert after["textft_inference_loaded_adapters"] == 2
    assert after["textft_inference_adapter_load_seconds_sum"] > 0


# ---- backpressure and deadlines ----
def test_overload_gives_resource_exhausted(dedicated: Dedicated, versions: Versions) -> None:
    c = dedicated.client
    c.load_model_version(versions.cls[0])
    before = dedicated.metrics()
    # 6 one-text requests wait for company (the batch never fills): the queue is full.
    waiting = [
        c.inference.Predict.future(
            inference_pb2.PredictRequest(model_version=versions.cls[0], texts=[t]), metadata=c.metadata
        )
        for t in TEXTS[:6]
    ]
    wait_for(lambda: dedicated.metrics()["textft_inference_queue_depth"] == 6, 60, "6 waiting requests")
    with pytest.raises(ResourceExhausted) as refused:
        c.predict(versions.cls[0], [TEXTS[6]])
    assert refused.value.reason == "INFERENCE_QUEUE_FULL" and refused.value.retryable
    # Callers that give up leave the queue before any compute is spent on them.
    for future in waiting:
        future.cancel()
    wait_for(lambda: dedicated.metrics()["textft_inference_queue_depth"] == 0, 60, "the queue to empty")
    after = dedicated.metrics()
    assert delta(before, after, 'textft_inference_rejected_total{reason="queue_full"}') == 1
    assert delta(before, after, 'textft_inference_requests_total{method="Predict",code="RESOURCE_EXHAUSTED"}') == 1
    assert delta(before, after, 'textft_inference_dropped_total{reason="cancelled"}') == 6
    assert delta(before, after, "textft_inference_batch_rows_sum") == 0


def test_expired_request_is_dropped_before_it_runs(dedicated: Dedicated, versions: Versions) -> None:
    c = dedicated.client
    c.load_model_version(versions.cls[0])
    before = dedicated.metrics()
    with pytest.raises(DeadlineExceeded):
        c.predict(versions.cls[0], ["too late"], timeout=0.3)  # alone, it waits for company and expires queued
    # A full batch behind it: it returns only after the lane got past the expired request.
    assert len(c.predict(versions.cls[0], TEXTS).predictions) == BATCH
    after = dedicated.metrics()
    assert delta(before, after, 'textft_inference_dropped_total{reason="deadline"}') == 1
    assert delta(before, after, "textft_inference_batch_rows_sum") == BATCH  # the expired text never ran
    assert delta(before, after, "textft_inference_batch_rows_count") == 1


# ---- streaming ----
def test_stream_matches_predict(client: Client, versions: Versions) -> None:
    prompt = "upper: great"
    want = client.predict(versions.gen[0], [prompt], max_new_tokens=8).predictions[0].generation
    messages = list(client.predict_stream(versions.gen[0], prompt, max_new_tokens=8))
    assert "".join(m.text for m in messages) == want.text
    assert messages[-1].finish_reason == want.finish_reason
    assert messages[-1].generated_tokens == want.generated_tokens
    assert all(m.finish_reason == Gen.FINISH_REASON_UNSPECIFIED for m in messages[:-1])


def test_stream_stops_generating_when_the_client_cancels(dedicated: Dedicated, versions: Versions) -> None:
    c = dedicated.client
    c.load_model_version(versions.gen[0])
    before = dedicated.metrics()
    limit = 200
    stream = c.predict_stream(versions.gen[0], "upper: great", max_new_tokens=limit, ignore_eos=True)
    first = next(stream)  # generation is under way
    assert first.text or first.generated_tokens == 0
    stream.close()  # cancels the RPC
    # The stream holds its base model's lane while it generates: this full batch
    # (one token per text) returns only after the generation thread has ended.
    sync = c.predict(versions.gen[0], TEXTS, max_new_tokens=1, ignore_eos=True)
    assert all(p.generation.generated_tokens == 1 for p in sync.predictions)
    after = dedicated.metrics()
    assert delta(before, after, 'textft_inference_streams_total{outcome="cancelled"}') == 1
    streamed = delta(before, after, "textft_inference_generated_tokens_total") - BATCH
    assert 1 <= streamed < limit, streamed  # stopped early: the cancel reached the generation loop
    assert delta(before, after, 'textft_inference_requests_total{method="PredictStream",code="CANCELLED"}') == 1


def test_short_predict_finishes_while_a_long_stream_goes_on(client: Client, versions: Versions) -> None:
    """Continuous batching: the Predict joins the stream's running batch and
    leaves it done; the stream's last message comes after the Predict's answer
    (with static batching the Predict waits for the whole stream)."""
    order = itertools.count()  # one sequence for both threads' events
    arrivals: list[tuple[int, inference_pb2.PredictStreamResponse]] = []
    first = threading.Event()
    stream = client.predict_stream(versions.gen[0], "upper: great", max_new_tokens=2048, ignore_eos=True)

    def read() -> None:
        for message in stream:
            arrivals.append((next(order), message))
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert first.wait(60)  # the stream is generating
        short = client.predict(versions.gen[0], ["upper: dull"], max_new_tokens=4, ignore_eos=True)
        answered = next(order)
        assert short.predictions[0].generation.generated_tokens == 4
    finally:
        reader.join(120)
    assert not reader.is_alive()
    last_at, last = arrivals[-1]
    assert last.finish_reason == Gen.FINISH_REASON_LENGTH and last.generated_tokens > 100  # to the model's context
    assert last_at > answered  # the stream went on after the short request was answered


def test_stream_stop_sequence(client: Client, versions: Versions) -> None:
    # ignore_eos: a briefly trained adapter may end at once; the test needs text to cut.
    stream = client.predict_stream(versions.gen[1], "echo: great", max_new_tokens=10, ignore_eos=True)
    full = "".join(m.text for m in stream)
    assert len(full) >= 2
    stop = full[1:3]
    messages = list(
        client.predict_stream(versions.gen[1], "echo: great", max_new_tokens=10, stop=[stop], ignore_eos=True)
    )
    text = "".join(m.text for m in messages)
    assert text == full[: full.find(stop)]
    assert messages[-1].finish_reason == Gen.FINISH_REASON_STOP


# ---- errors ----
def test_status_codes(stack: RunningStack, client: Client, versions: Versions) -> None:
    with pytest.raises(NotFound):
        client.predict("models/inf-0/versions/v999", ["x"])
    with pytest.raises(NotFound):
        client.predict("models/no-such-model", ["x"])
    with pytest.raises(InvalidArgument) as info:
        client.predict("not a name", ["x"])
    assert info.value.violations[0].field == "model_version"
    # A version that is not READY: queue a run and cancel it.
    version = client.get_model_version(versions.cls[0])
    tiny = {"pretrained_model_name_or_path": TINY_BASE_URI}
    run = client.train(
        "inf-0", version.dataset_version, CLS_TEMPLATE, model_config=tiny, trainer_config={"max_steps": 1}
    )
    client.cancel(run.name)
    with pytest.raises(FailedPrecondition) as not_ready:
        client.predict(run.name, ["x"])
    assert not_ready.value.reason == "MODEL_VERSION_NOT_READY"

    limits = {
        "texts": lambda: client.predict(versions.cls[0], []),
        "texts[1]": lambda: client.predict(versions.cls[0], ["ok", "x" * 20_001]),
        "generation.max_new_tokens": lambda: client.predict(versions.gen[0], ["x"], max_new_tokens=5000),
        "generation.top_p": lambda: client.predict(versions.gen[0], ["x"], temperature=1.0, top_p=2.0),
        "model_version": lambda: list(client.predict_stream(versions.cls[0], "a classifier cannot stream")),
        "text": lambda: list(client.predict_stream(versions.gen[0], "x" * 20_001)),
    }
    for field, call in limits.items():
        with pytest.raises(InvalidArgument) as bad:
            call()
        assert [v.field for v in bad.value.violations] == [field], bad.value


def test_metrics_endpoint(dedicated: Dedicated, versions: Versions) -> None:
    # Its own traffic, whatever ran before: a load (the process's first is a
    # miss), then a full batch (a hit).
    dedicated.client.load_model_version(versions.cls[0])
    assert len(dedicated.client.predict(versions.cls[0], TEXTS).predictions) == BATCH
    values = dedicated.metrics()
    assert values['textft_inference_requests_total{method="Predict",code="OK"}'] >= 1
    assert values['textft_inference_request_seconds_count{method="Predict"}'] >= 1
    assert values['textft_inference_request_seconds_bucket{method="Predict",le="+Inf"}'] >= 1
    assert values["textft_inference_cache_hits_total"] >= 1
    assert values["textft_inference_cache_misses_total"] >= 1
    assert values["textft_inference_adapter_load_seconds_count"] >= 1
    assert values["textft_inference_base_model_load_seconds_count"] >= 1
    assert "textft_inference_queue_depth" in values
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(dedicated.metrics_url.replace("/metrics", "/nope"), timeout=30)
    assert info.value.code == 404
