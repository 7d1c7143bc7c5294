"""Prometheus metrics without a dependency: counters, gauges and histograms with
labels, rendered in the text exposition format (version 0.0.4) and served at
/metrics by a stdlib HTTP server in a daemon thread (TEXTFT_METRICS_PORT; 0 = off).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("textft.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.label_names), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = (*sorted(buckets), math.inf)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_num(count)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_num(series[-1])}")
        return out


class InferenceMetrics:
    """Every metric the inference service exports; names are the API (documented in the README)."""

    def __init__(self) -> None:
        p = "textft_inference_"
        self.requests = Counter(p + "requests_total", "RPCs by method and final status code.", ["method", "code"])
        self.latency = Histogram(p + "request_seconds", "RPC latency by method.", LATENCY_BUCKETS, ["method"])
        self.batch_rows = Histogram(p + "batch_rows", "Texts per forward pass (generate call).", BATCH_BUCKETS)
        self.batch_requests = Histogram(p + "batch_requests", "Requests per forward pass.", BATCH_BUCKETS)
        self.batch_adapters = Histogram(p + "batch_adapters", "Distinct adapters per forward pass.", BATCH_BUCKETS)
        self.mixed_batches = Counter(p + "mixed_batches_total", "Forward passes that mixed several adapters.")
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a forward pass.")
        self.rejected = Counter(p + "rejected_total", "Requests refused before queueing.", ["reason"])
        self.dropped = Counter(p + "dropped_total", "Queued requests dropped before they ran.", ["reason"])
        self.cache_hits = Counter(p + "cache_hits_total", "Requests whose adapter was already loaded.")
        self.cache_misses = Counter(p + "cache_misses_total", "Requests that had to load their adapter.")
        self.evictions = Counter(p + "cache_evictions_total", "Adapters evicted or unloaded.", ["reason"])
        self.load_seconds = Histogram(p + "adapter_load_seconds", "Cold load time of an adapter.", LOAD_BUCKETS)
        self.base_load_seconds = Histogram(
            p + "base_model_load_seconds", "Cold load time of a base model.", LOAD_BUCKETS
        )
        self.loaded_adapters = Gauge(p + "loaded_adapters", "Adapters in the cache.")
        self.loaded_bases = Gauge(p + "loaded_base_models", "Base models in memory.")
        self.adapter_bytes = Gauge(p + "adapter_bytes", "Adapter weight bytes in the cache.")
        self.generated_tokens = Counter(p + "generated_tokens_total", "Tokens generated (Predict and PredictStream).")
        self.running_rows = Gauge(p + "running_rows", "Rows in the continuous running batch.", ["base"])
        self.tokens_in_flight = Gauge(
            p + "tokens_in_flight", "Prompt + max_new_tokens of the running batch's rows.", ["base"]
        )
        self.decode_steps = Counter(p + "decode_steps_total", "Decoding steps of continuous batches.")
        self.prefill_tokens = Counter(p + "prefill_tokens_total", "Prompt tokens prefilled into running batches.")
        self.streams = Counter(p + "streams_total", "PredictStream generations by how they ended.", ["outcome"])
        self.all: list[_Metric] = [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all:
            lines += metric.header() + metric.render()
        return "\n".join(lines) + "\n"


def serve(metrics: InferenceMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serves GET /metrics in a daemon thread; returns the server (port in server_address)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics at http://%s:%d/metrics", host, server.server_address[1])
    return server


def parse(text: str) -> dict[str, float]:
    """Parses exposition text into {'name{labels}': value} (for tests and the bench)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
