"""How a training run is shown: its events as they come (RunRenderer), a version
in full (print_version), and following a run to its end (follow)."""

from __future__ import annotations

import sys
from typing import IO

from google.protobuf import json_format

from ..client import Client
from ..v1 import common_pb2, trainer_pb2
from .output import duration, format_time, metrics_text, print_json, show, state_name, task_name

ModelVersion = trainer_pb2.ModelVersion
ModelVersionEvent = trainer_pb2.ModelVersionEvent


class RunRenderer:
    """Shows a run's events: a live progress line (in place when the stream is a
    terminal, one line per update otherwise), state changes, logs, metrics."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self.state = "QUEUED"
        self.step = self.total = 0
        self.epoch = 0.0
        self.percent = 0.0
        self.loss = self.lr = self.sps = 0.0
        self.eta: float | None = None
        self._live = False

    def _clear(self) -> None:
        if self._live:
            self.out.write("\r\033[K")
            self._live = False

    def line(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def progress_line(self) -> str:
        parts = [f"{self.state:<14}", f"step {self.step}/{self.total or '?'}", f"{self.percent:5.1f}%"]
        parts.append(f"epoch {self.epoch:.2f}")
        if self.loss:
            parts.append(f"loss {self.loss:.4f}")
        if self.lr:
            parts.append(f"lr {self.lr:.2e}")
        if self.sps:
            parts.append(f"{self.sps:.1f} samples/s")
        if self.eta is not None:
            parts.append(f"ETA {duration(self.eta)}")
        return "  ".join(parts)

    def event(self, event: trainer_pb2.ModelVersionEvent) -> None:
        if event.HasField("progress"):
            p = event.progress
            self.step, self.total, self.epoch = p.step or self.step, p.total_steps or self.total, p.epoch or self.epoch
            self.percent = p.percent_completed or self.percent
            if p.HasField("time_remaining"):
                self.eta = p.time_remaining.ToTimedelta().total_seconds()
        if event.kind == ModelVersionEvent.KIND_STATE:
            self.state = state_name(event.state)
            text = f"state: {self.state}"
            if event.message and event.message != ModelVersion.State.Name(event.state):
                text += f" ({event.message})"
            if event.failure.reason:
                text += f" [{event.failure.reason}]"
            self.line(text)
        elif event.kind == ModelVersionEvent.KIND_PROGRESS:
            self.loss = event.loss or self.loss
            self.lr = event.learning_rate or self.lr
            self.sps = event.samples_per_second or self.sps
            text = self.progress_line()
            if self.tty:
                self.out.write("\r\033[K" + text)
                self._live = True
            else:
                self.out.write(text + "\n")
            self.out.flush()
        elif event.kind == ModelVersionEvent.KIND_EVALUATION:
            self.line(f"evaluation: {metrics_text(event.eval_metrics)}")
        elif event.kind == ModelVersionEvent.KIND_LOG and event.message:
            self.line(f"log: {event.message.rstrip()}")

    def close(self) -> None:
        if self._live:
            self.out.write("\n")
            self._live = False
        self.out.flush()


def print_version(version: trainer_pb2.ModelVersion, out: IO[str] | None = None) -> None:
    p = version.progress
    progress = f"{p.percent_completed:.1f}%  step {p.step}/{p.total_steps}  epoch {p.epoch:.2f}"
    if p.HasField("time_remaining") and version.state not in (
        ModelVersion.STATE_READY,
        ModelVersion.STATE_FAILED,
        ModelVersion.STATE_CANCELLED,
    ):
        progress += f"  ETA {duration(p.time_remaining.ToTimedelta().total_seconds())}"
    rows = f"train {version.train_row_count}  eval {version.eval_row_count}  skipped {version.skipped_row_count}"
    failure = version.failure if version.HasField("failure") and version.failure.reason else common_pb2.Failure()
    evaluation = version.evaluation
    show(
        version.name,
        [
            ("state", state_name(version.state)),
            ("task", task_name(version.task)),
            ("dataset version", version.dataset_version),
            ("template", version.template),
            ("progress", progress),
            ("rows", rows if version.train_row_count or version.eval_row_count else None),
            ("labels", ", ".join(version.label_names)),
            ("metrics", metrics_text(evaluation.metrics) if evaluation.metrics else None),
            ("roc auc / label", metrics_text(evaluation.roc_auc_per_label) if evaluation.roc_auc_per_label else None),
            ("adapter", version.adapter_uri),
            ("base model", version.lineage.base_model),
            ("failure", failure.reason),
            ("message", failure.message),
            ("field", failure.field),
            ("rows", ", ".join(str(r) for r in failure.rows)),
            ("created", format_time(version, "create_time")),
            ("updated", format_time(version, "update_time")),
        ],
        out,
    )


def follow(client: Client, name: str, as_json: bool, stream_events: bool) -> int:
    """Watches a run to its end. Returns 0 when READY, 1 when FAILED or CANCELLED."""
    renderer = RunRenderer(sys.stderr)

    def on_event(event: trainer_pb2.ModelVersionEvent) -> None:
        if stream_events:  # `textft --json watch`: one JSON event per line on stdout
            print(json_format.MessageToJson(event, preserving_proto_field_name=True, indent=None), flush=True)
        else:
            renderer.event(event)

    try:
        version = client.wait(name, on_event=on_event)
    except KeyboardInterrupt:
        renderer.close()
        sys.stderr.write(f"\nstopped watching; the run goes on. `textft watch {name}` or `textft cancel {name}`\n")
        return 130
    renderer.close()
    if as_json and not stream_events:
        print_json(version)
    elif not as_json:
        print_version(version)
    return 0 if version.state == ModelVersion.STATE_READY else 1
