"""The micro-batching lane on its own (no model): what is gathered into one
pass, the admission bound, and dropping cancelled or expired work before it
runs. A fake runner blocked on an Event keeps the lane busy on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from textft.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from textft_services.inference.batcher import CLASSIFY, STREAM, Admission, Lane, Work
from textft_services.inference.metrics import InferenceMetrics, parse

pytestmark = pytest.mark.unit

FOREVER = 3600_000  # a gathering window that never closes on its own: batches close when full


class Recorder:
    """A runner that records each batch; the first batch can be held at a gate."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[Work]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, works: list[Work]) -> None:
        self.batches.append(works)
        self.started.set()
        self.gate.wait(30)
        for w in works:
            w.succeed([f"{t}!" for t in w.texts])


def work(texts: list[str], key: object = CLASSIFY, deadline: float | None = None, kind: str = CLASSIFY) -> Work:
    return Work(adapter=None, kind=kind, texts=texts, params=None, key=key, deadline=deadline)


@pytest.fixture()
def metrics() -> InferenceMetrics:
    return InferenceMetrics()


@pytest.fixture()
def lanes(metrics: InferenceMetrics) -> Iterator[list[Lane]]:
    made: list[Lane] = []
    yield made
    for lane in made:
        lane.close()


def make_lane(
    lanes: list[Lane], metrics: InferenceMetrics, runner: Recorder, wait_ms: int, max_batch: int, queue: int = 64
) -> Lane:
    lane = Lane("test", runner, Admission(queue, metrics), metrics, wait_ms, max_batch)
    lanes.append(lane)
    return lane


def test_requests_gathered_until_the_batch_is_full(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder()
    lane = make_lane(lanes, metrics, runner, wait_ms=FOREVER, max_batch=4)
    items = [work(["a"]), work(["b", "c"]), work(["d"])]
    for w in items:
        lane.submit(w)
    assert [w.future.result(30) for w in items] == [["a!"], ["b!", "c!"], ["d!"]]
    assert len(runner.batches) == 1 and runner.batches[0] == items


def test_window_closes_a_partial_batch(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder()
    lane = make_lane(lanes, metrics, runner, wait_ms=20, max_batch=64)
    w = work(["only"])
    started = time.monotonic()
    lane.submit(w)
    assert w.future.result(30) == ["only!"]
    assert time.monotonic() - started >= 0.02  # it waited for company, then ran alone


def test_batches_respect_max_size_and_keys(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder(hold_first=True)
    lane = make_lane(lanes, metrics, runner, wait_ms=0, max_batch=3)
    first = work(["x"])
    lane.submit(first)
    assert runner.started.wait(30)  # the lane is busy: what follows queues up
    a, b, c = work(["a", "b"]), work(["c", "d"]), work(["e"], key="other-params")
    d = work(["f"])
    for w in (a, b, c, d):
        lane.submit(w)
    runner.gate.set()
    for w in (first, a, b, c, d):
        w.future.result(30)
    # a+d fill 3 rows (b would make 4); b runs next; c never shares a pass with other keys.
    assert [[w.texts for w in batch] for batch in runner.batches] == [
        [["x"]],
        [["a", "b"], ["f"]],
        [["c", "d"]],
        [["e"]],
    ]


def test_queue_bound_refuses_with_resource_exhausted(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder(hold_first=True)
    lane = make_lane(lanes, metrics, runner, wait_ms=0, max_batch=1, queue=2)
    lane.submit(work(["busy"]))
    assert runner.started.wait(30)  # taken: no longer counts as waiting
    lane.submit(work(["1"]))
    lane.submit(work(["2"]))
    with pytest.raises(ResourceExhausted) as info:
        lane.submit(work(["3"]))
    assert info.value.reason == "INFERENCE_QUEUE_FULL" and info.value.retryable
    assert parse(metrics.render())['textft_inference_rejected_total{reason="queue_full"}'] == 1
    runner.gate.set()


def test_abandoned_work_leaves_the_queue_and_frees_its_slot(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder(hold_first=True)
    lane = make_lane(lanes, metrics, runner, wait_ms=0, max_batch=8, queue=1)
    busy = work(["busy"])
    lane.submit(busy)
    assert runner.started.wait(30)
    gone = work(["gone"])
    lane.submit(gone)
    lane.abandon(gone)  # what the gRPC callback does when the client cancels
    with pytest.raises(Cancelled):
        gone.future.result(30)
    kept = work(["kept"])
    lane.submit(kept)  # the slot is free again
    runner.gate.set()
    assert kept.future.result(30) == ["kept!"]
    assert all(gone not in batch for batch in runner.batches)
    assert parse(metrics.render())['textft_inference_dropped_total{reason="cancelled"}'] == 1


def test_expired_work_is_dropped_before_it_runs(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder(hold_first=True)
    lane = make_lane(lanes, metrics, runner, wait_ms=0, max_batch=8)
    lane.submit(work(["busy"]))
    assert runner.started.wait(30)
    expiring = work(["late"], deadline=time.monotonic() + 60)
    lane.submit(expiring)
    fresh = work(["fresh"])
    lane.submit(fresh)
    expiring.deadline = time.monotonic() - 1  # its time runs out while the lane is busy
    runner.gate.set()
    with pytest.raises(DeadlineExceeded):
        expiring.future.result(30)
    assert fresh.future.result(30) == ["fresh!"]
    assert [w.texts for b in runner.batches for w in b] == [["busy"], ["fresh"]]
    with pytest.raises(DeadlineExceeded):  # already expired: refused at the door
        lane.submit(work(["dead"], deadline=time.monotonic() - 1))
    assert parse(metrics.render())['textft_inference_dropped_total{reason="deadline"}'] == 2


def test_streams_run_alone_and_at_once(lanes: list[Lane], metrics: InferenceMetrics) -> None:
    runner = Recorder()
    lane = make_lane(lanes, metrics, runner, wait_ms=FOREVER, max_batch=64)
    s = work(["stream"], key=object(), kind=STREAM)
    lane.submit(s)
    assert s.future.result(30) == ["stream!"]  # no gathering window for streams
    assert runner.batches == [[s]]


def test_metrics_exposition_format() -> None:
    m = InferenceMetrics()
    m.requests.inc(method="Predict", code="OK")
    m.batch_rows.observe(3)
    text = m.render()
    assert "# TYPE textft_inference_batch_rows histogram" in text
    values = parse(text)
    assert values['textft_inference_requests_total{method="Predict",code="OK"}'] == 1
    assert values['textft_inference_batch_rows_bucket{le="2"}'] == 0
    assert values['textft_inference_batch_rows_bucket{le="4"}'] == 1
    assert values['textft_inference_batch_rows_bucket{le="+Inf"}'] == 1
    assert values["textft_inference_batch_rows_sum"] == 3
