"""`textft`: the command line of the textft SDK.

Light on purpose (argparse + the SDK: grpcio and protobuf only). Every command
talks to the services through textft.Client; `--json` prints the protobuf
messages as JSON for scripts. Errors from the services are printed as
`error: CODE: message` (plus field violations) with exit status 1.

    textft up                                    # the local stack (needs the services distribution)
    textft datasets create reviews
    textft datasets upload reviews reviews.csv --task classification
    textft models create sentiment --task classification
    textft train sentiment datasets/reviews/versions/v1 --template gpt-neo-125m-lora-text-classification
    textft predict sentiment "what a great film"
    textft plot models/sentiment/versions/v1 --out plots/   # loss and ROC curves (PNG; needs textft[plots])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from .client import ROLES, TASKS, Client, default_api_key
from .errors import TextftError
from .uploads import UploadProgress
from .v1 import access_pb2, common_pb2, inference_pb2, trainer_pb2

MV = trainer_pb2.ModelVersion
EV = trainer_pb2.ModelVersionEvent
CONFIG_SECTIONS = ("model_config", "peft_config", "tokenizer_config", "trainer_config")
# Global options that take a value: `textft up` must see everything after "up" untouched.
_GLOBAL_VALUE_OPTIONS = ("--dataset-addr", "--trainer-addr", "--inference-addr", "--api-key", "--timeout")
_GLOBAL_FLAGS = ("--json",)


class UsageError(Exception):
    """A bad command line argument found after parsing (exit status 2)."""


# ---------------------------------------------------------------- output helpers
def _dump(value: Message | dict[str, Any] | list[Any]) -> str:
    if isinstance(value, Message):
        return json_format.MessageToJson(value, preserving_proto_field_name=True, indent=2)
    return json.dumps(value, indent=2, default=str)


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value: Message | dict[str, Any] | list[Any]) -> None:
    print(_dump(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _task_name(task: int) -> str:
    return {
        common_pb2.TASK_TEXT_CLASSIFICATION: "classification",
        common_pb2.TASK_TEXT_GENERATION: "generation",
    }.get(task, "unspecified")


def _state_name(state: int) -> str:
    return MV.State.Name(state).removeprefix("STATE_")


def _time(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    return getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _metrics(values: dict[str, float] | Any) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in sorted(dict(values).items()))


# ---------------------------------------------------------------- names
def _dataset_version_name(value: str) -> str:
    """`datasets/d/versions/v`, also accepted as `d/versions/v`."""
    return value if value.startswith("datasets/") else f"datasets/{value}"


def _model_version_name(value: str) -> str:
    return value if value.startswith("models/") else f"models/{value}"


# ---------------------------------------------------------------- argument parsing helpers
def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_set(configs: dict[str, dict[str, Any]], assignment: str) -> None:
    """Applies one `section.key[.sub]=value` to configs (section: model_config,
    peft_config, tokenizer_config, trainer_config, or without `_config`)."""
    path, sep, raw = assignment.partition("=")
    parts = path.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UsageError(f"--set expects section.key=value, got {assignment!r}")
    section = parts[0] if parts[0].endswith("_config") else parts[0] + "_config"
    if section not in CONFIG_SECTIONS:
        raise UsageError(f"--set section must be one of {', '.join(CONFIG_SECTIONS)}, got {parts[0]!r}")
    target = configs.setdefault(section, {})
    for key in parts[1:-1]:
        nested = target.setdefault(key, {})
        if not isinstance(nested, dict):
            raise UsageError(f"--set {path}: {key} is not an object")
        target = nested
    target[parts[-1]] = _parse_value(raw)


def _column_mapping(items: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items or []:
        canonical, sep, column = item.partition("=")
        if not sep or not canonical or not column:
            raise UsageError(f"--map expects canonical=column, got {item!r}")
        mapping[canonical.strip()] = column.strip()
    return mapping


# ---------------------------------------------------------------- progress of a training run
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
            parts.append(f"ETA {_duration(self.eta)}")
        return "  ".join(parts)

    def event(self, event: trainer_pb2.ModelVersionEvent) -> None:
        if event.HasField("progress"):
            p = event.progress
            self.step, self.total, self.epoch = p.step or self.step, p.total_steps or self.total, p.epoch or self.epoch
            self.percent = p.percent_completed or self.percent
            if p.HasField("time_remaining"):
                self.eta = p.time_remaining.ToTimedelta().total_seconds()
        if event.kind == EV.KIND_STATE:
            self.state = _state_name(event.state)
            text = f"state: {self.state}"
            if event.message and event.message != MV.State.Name(event.state):
                text += f" ({event.message})"
            if event.failure.reason:
                text += f" [{event.failure.reason}]"
            self.line(text)
        elif event.kind == EV.KIND_PROGRESS:
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
        elif event.kind == EV.KIND_EVALUATION:
            self.line(f"evaluation: {_metrics(event.eval_metrics)}")
        elif event.kind == EV.KIND_LOG and event.message:
            self.line(f"log: {event.message.rstrip()}")

    def close(self) -> None:
        if self._live:
            self.out.write("\n")
            self._live = False
        self.out.flush()


def _print_version(version: trainer_pb2.ModelVersion, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    w = out.write
    w(f"{version.name}\n")
    w(f"  state            {_state_name(version.state)}\n")
    w(f"  task             {_task_name(version.task)}\n")
    w(f"  dataset version  {version.dataset_version}\n")
    w(f"  template         {version.template}\n")
    p = version.progress
    progress = f"{p.percent_completed:.1f}%  step {p.step}/{p.total_steps}  epoch {p.epoch:.2f}"
    if p.HasField("time_remaining") and version.state not in (MV.STATE_READY, MV.STATE_FAILED, MV.STATE_CANCELLED):
        progress += f"  ETA {_duration(p.time_remaining.ToTimedelta().total_seconds())}"
    w(f"  progress         {progress}\n")
    if version.train_row_count or version.eval_row_count:
        w(
            f"  rows             train {version.train_row_count}  eval {version.eval_row_count}"
            f"  skipped {version.skipped_row_count}\n"
        )
    if version.label_names:
        w(f"  labels           {', '.join(version.label_names)}\n")
    if version.evaluation.metrics:
        w(f"  metrics          {_metrics(version.evaluation.metrics)}\n")
    if version.evaluation.roc_auc_per_label:
        w(f"  roc auc / label  {_metrics(version.evaluation.roc_auc_per_label)}\n")
    if version.adapter_uri:
        w(f"  adapter          {version.adapter_uri}\n")
    if version.lineage.base_model:
        w(f"  base model       {version.lineage.base_model}\n")
    if version.HasField("failure") and version.failure.reason:
        _print_failure(version.failure, out)
    created, updated = _time(version, "create_time"), _time(version, "update_time")
    if created:
        w(f"  created          {created}\n")
    if updated:
        w(f"  updated          {updated}\n")


def _print_failure(failure: common_pb2.Failure, out: IO[str]) -> None:
    out.write(f"  failure          {failure.reason}\n")
    if failure.message:
        out.write(f"  message          {failure.message}\n")
    if failure.field:
        out.write(f"  field            {failure.field}\n")
    if failure.rows:
        out.write(f"  rows             {', '.join(str(r) for r in failure.rows)}\n")


def _follow(client: Client, name: str, as_json: bool, stream_events: bool) -> int:
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
        _print_json(version)
    elif not as_json:
        _print_version(version)
    return 0 if version.state == MV.STATE_READY else 1


# ---------------------------------------------------------------- commands
def cmd_templates(client: Client, args: argparse.Namespace) -> int:
    templates = client.list_templates(args.task or common_pb2.TASK_UNSPECIFIED)
    if args.json:
        _print_json({"templates": [_to_dict(t) for t in templates]})
        return 0
    rows = []
    for t in templates:
        base = t.model_config.fields.get("pretrained_model_name_or_path")
        rows.append(
            (t.name.removeprefix("templates/"), _task_name(t.task), base.string_value if base else "", t.description)
        )
    _table(("NAME", "TASK", "BASE MODEL", "DESCRIPTION"), rows)
    return 0


def cmd_datasets_create(client: Client, args: argparse.Namespace) -> int:
    dataset = client.create_dataset(args.id, description=args.description)
    if args.json:
        _print_json(dataset)
    else:
        print(f"created {dataset.name}")
    return 0


def _print_dataset_version(version: Any) -> None:
    s = version.stats
    print(version.name)
    print(f"  task        {_task_name(version.task)}")
    print(
        f"  rows        {s.row_count}  (valid {s.valid_row_count}, invalid {s.invalid_row_count}, warnings {s.warning_count})"
    )
    if s.label_counts:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(s.label_counts.items()))
        print(f"  labels      {counts}")
    if s.target_count:
        print(f"  targets     {s.target_count}")
    if s.valid_row_count:
        print(
            f"  text chars  min {s.text_length_min}  p50 {s.text_length_p50}  mean {s.text_length_mean:.1f}"
            f"  p95 {s.text_length_p95}  max {s.text_length_max}"
        )
    print(f"  source      {_human_bytes(version.source_size_bytes)}  sha256 {version.source_sha256}")
    if version.column_mapping:
        print(f"  mapping     {', '.join(f'{k}={v}' for k, v in sorted(version.column_mapping.items()))}")
    if version.description:
        print(f"  description {version.description}")
    created = _time(version, "create_time")
    if created:
        print(f"  created     {created}")
    if s.invalid_row_count or s.warning_count:
        print(f"  see `textft datasets report {version.name}` for the row-level findings")


def cmd_datasets_upload(client: Client, args: argparse.Namespace) -> int:
    source: Any
    if args.file == "-":
        source, total = sys.stdin.buffer, 0
        if not args.format:
            raise UsageError("--format is required when reading from stdin")
    else:
        source, total = args.file, os.path.getsize(args.file)
    err = sys.stderr
    tty = err.isatty()
    last: list[UploadProgress] = []

    def progress_text(p: UploadProgress, verb: str = "uploading") -> str:
        size = (
            f"{p.bytes_sent} / {total} bytes ({100 * p.bytes_sent / total:.0f}%)" if total else f"{p.bytes_sent} bytes"
        )
        return f"{verb} {size}, {p.rows_sent:,} rows"

    def on_progress(p: UploadProgress) -> None:
        last[:] = [p]
        if tty:
            err.write("\r\033[K" + progress_text(p))
            err.flush()

    version = client.upload_dataset(
        args.dataset,
        source,
        task=args.task or common_pb2.TASK_UNSPECIFIED,
        format=args.format,
        column_mapping=_column_mapping(args.map),
        description=args.description,
        on_progress=on_progress,
    )
    done = last[0] if last else UploadProgress(version.source_size_bytes, total, version.stats.row_count)
    err.write(("\r\033[K" if tty else "") + progress_text(done, "uploaded") + "\n")
    err.flush()
    if args.json:
        _print_json(version)
    else:
        _print_dataset_version(version)
    return 0


def cmd_datasets_get(client: Client, args: argparse.Namespace) -> int:
    name = args.name
    if "/versions/" in name:
        version = client.get_dataset_version(_dataset_version_name(name))
        if args.json:
            _print_json(version)
        else:
            _print_dataset_version(version)
        return 0
    dataset = client.get_dataset(name)
    if args.json:
        _print_json(dataset)
        return 0
    print(dataset.name)
    if dataset.description:
        print(f"  description     {dataset.description}")
    if dataset.labels:
        print(f"  labels          {', '.join(f'{k}={v}' for k, v in sorted(dataset.labels.items()))}")
    print(f"  latest version  {dataset.latest_version or '(none)'}")
    created = _time(dataset, "create_time")
    if created:
        print(f"  created         {created}")
    return 0


def _all_pages(fetch: Callable[[str], Any], field: str) -> tuple[list[Any], Any]:
    items: list[Any] = []
    token = ""
    while True:
        page = fetch(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items, page


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> int:
    datasets, _ = _all_pages(lambda token: client.list_datasets(page_size=1000, page_token=token), "datasets")
    if args.json:
        _print_json({"datasets": [_to_dict(d) for d in datasets]})
        return 0
    _table(
        ("NAME", "LATEST VERSION", "CREATED", "DESCRIPTION"),
        ((d.name, d.latest_version, _time(d, "create_time"), d.description) for d in datasets),
    )
    return 0


def cmd_datasets_versions(client: Client, args: argparse.Namespace) -> int:
    versions, _ = _all_pages(
        lambda token: client.list_dataset_versions(args.dataset, page_size=1000, page_token=token), "dataset_versions"
    )
    if args.json:
        _print_json({"dataset_versions": [_to_dict(v) for v in versions]})
        return 0
    _table(
        ("NAME", "TASK", "ROWS", "VALID", "INVALID", "LABELS", "CREATED"),
        (
            (
                v.name,
                _task_name(v.task),
                v.stats.row_count,
                v.stats.valid_row_count,
                v.stats.invalid_row_count,
                ",".join(v.label_names),
                _time(v, "create_time"),
            )
            for v in versions
        ),
    )
    return 0


def _next_page_hint(command: str, name: str, token: str) -> None:
    if token:
        sys.stderr.write(f"more: textft {command} {name} --page-token {token}\n")


def cmd_datasets_report(client: Client, args: argparse.Namespace) -> int:
    name = _dataset_version_name(args.version)
    report = client.get_validation_report(name, page_size=args.page_size, page_token=args.page_token)
    if args.json:
        _print_json(report)
        return 0
    s = report.stats
    print(
        f"{name}: {s.row_count} rows, {s.valid_row_count} valid, {s.invalid_row_count} invalid, {s.warning_count} warnings"
    )
    if report.issues:
        severity = {1: "error", 2: "warning"}
        _table(
            ("ROW", "SEVERITY", "CODE", "FIELD", "MESSAGE"),
            ((i.row, severity.get(i.severity, "?"), i.code, i.field, i.message) for i in report.issues),
        )
    else:
        print("no findings")
    _next_page_hint("datasets report", name, report.next_page_token)
    return 0


def cmd_datasets_rows(client: Client, args: argparse.Namespace) -> int:
    name = _dataset_version_name(args.version)
    page = client.read_rows(name, page_size=args.page_size, page_token=args.page_token)
    if args.json:
        _print_json(page)
        return 0

    def clip(text: str, n: int = 60) -> str:
        text = text.replace("\n", "\\n")
        return text if len(text) <= n else text[: n - 1] + "…"

    _table(
        ("ROW", "SPLIT", "LABELS", "TARGET", "TEXT"),
        ((r.row, r.split, "|".join(r.labels), clip(r.target, 30), clip(r.text)) for r in page.rows),
    )
    _next_page_hint("datasets rows", name, page.next_page_token)
    return 0


def cmd_models_create(client: Client, args: argparse.Namespace) -> int:
    model = client.create_model(args.id, task=args.task, description=args.description)
    if args.json:
        _print_json(model)
    else:
        print(f"created {model.name} ({_task_name(model.task)})")
    return 0


def cmd_models_list(client: Client, args: argparse.Namespace) -> int:
    models, _ = _all_pages(lambda token: client.list_models(page_size=1000, page_token=token), "models")
    if args.json:
        _print_json({"models": [_to_dict(m) for m in models]})
        return 0
    _table(
        ("NAME", "TASK", "LATEST READY VERSION", "CREATED", "DESCRIPTION"),
        ((m.name, _task_name(m.task), m.latest_ready_version, _time(m, "create_time"), m.description) for m in models),
    )
    return 0


def cmd_models_get(client: Client, args: argparse.Namespace) -> int:
    if "/versions/" in args.name:
        version = client.get_model_version(_model_version_name(args.name))
        if args.json:
            _print_json(version)
        else:
            _print_version(version)
        return 0
    model = client.get_model(args.name)
    if args.json:
        _print_json(model)
        return 0
    print(model.name)
    print(f"  task                  {_task_name(model.task)}")
    if model.description:
        print(f"  description           {model.description}")
    print(f"  latest ready version  {model.latest_ready_version or '(none)'}")
    created = _time(model, "create_time")
    if created:
        print(f"  created               {created}")
    return 0


def cmd_models_versions(client: Client, args: argparse.Namespace) -> int:
    versions, _ = _all_pages(
        lambda token: client.list_model_versions(args.model, page_size=1000, page_token=token), "model_versions"
    )
    if args.json:
        _print_json({"model_versions": [_to_dict(v) for v in versions]})
        return 0

    def headline(v: Any) -> str:
        m = v.evaluation.metrics
        for key in ("accuracy", "macro_f1", "exact_match", "loss"):
            if key in m:
                return f"{key} {m[key]:.4g}"
        return v.failure.reason

    _table(
        ("NAME", "STATE", "PROGRESS", "DATASET VERSION", "TEMPLATE", "RESULT", "CREATED"),
        (
            (
                v.name,
                _state_name(v.state),
                f"{v.progress.percent_completed:.0f}%",
                v.dataset_version,
                v.template.removeprefix("templates/"),
                headline(v),
                _time(v, "create_time"),
            )
            for v in versions
        ),
    )
    return 0


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    configs: dict[str, dict[str, Any]] = {}
    for section in CONFIG_SECTIONS:
        text = getattr(args, section)
        if text is not None:
            configs[section] = _parse_json_object(text, "--" + section.replace("_", "-"))
    for assignment in args.set or []:
        apply_set(configs, assignment)
    version = client.train(
        args.model,
        _dataset_version_name(args.dataset_version),
        args.template,
        model_config=configs.get("model_config"),
        peft_config=configs.get("peft_config"),
        tokenizer_config=configs.get("tokenizer_config"),
        trainer_config=configs.get("trainer_config"),
        invalid_data_tolerance_percent=args.tolerance,
        description=args.description,
    )
    if args.no_wait:
        if args.json:
            _print_json(version)
        else:
            print(f"created {version.name} ({_state_name(version.state)})")
            print(f"follow it with: textft watch {version.name}")
        return 0
    sys.stderr.write(f"training {version.name}\n")
    return _follow(client, version.name, args.json, stream_events=False)


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, _model_version_name(args.version), args.json, stream_events=args.json)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    version = client.cancel(_model_version_name(args.version))
    if args.json:
        _print_json(version)
    else:
        print(f"{version.name}: {_state_name(version.state)}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    version = client.get_model_version(_model_version_name(args.version))
    if args.json:
        _print_json(version)
    else:
        _print_version(version)
    return 0


def cmd_evaluate(client: Client, args: argparse.Namespace) -> int:
    evaluation = client.evaluate(_model_version_name(args.version), args.dataset_version)
    if args.json:
        _print_json(evaluation)
        return 0
    print(f"{args.dataset_version}: {evaluation.example_count} examples, {evaluation.skipped_row_count} skipped")
    for key, value in sorted(evaluation.metrics.items()):
        print(f"  {key:<14} {value:.4f}")
    for label, auc in sorted(evaluation.roc_auc_per_label.items()):
        print(f"  roc_auc[{label}] {auc:.4f}")
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("give at least one TEXT, or --file PATH with one text per line")
    return texts


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    texts = _read_texts(args)
    target = args.model if args.model.startswith("models/") else f"models/{args.model}"
    response = client.predict(
        target,
        texts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop,
        seed=args.seed,
    )
    if args.json:
        _print_json(response)
        return 0
    sys.stderr.write(f"model version: {response.model_version}\n")
    finish = inference_pb2.Generation.FinishReason
    for i, (text, prediction) in enumerate(zip(texts, response.predictions, strict=False)):
        kind = prediction.WhichOneof("result")
        if kind == "classification":
            print(text)
            for score in prediction.classification.scores[: args.top or None]:
                print(f"  {score.label:<20} {score.score:.4f}")
        elif kind == "generation":
            gen = prediction.generation
            if len(texts) > 1:
                print(f"[{i + 1}] {text}")
            print(gen.text)
            reason = finish.Name(gen.finish_reason).removeprefix("FINISH_REASON_").lower()
            sys.stderr.write(f"  ({gen.generated_tokens} tokens, finished: {reason})\n")
    return 0


def cmd_plot(client: Client, args: argparse.Namespace) -> int:
    from .plots import PlotsUnavailable, save_run_plots

    try:
        paths = save_run_plots(client, _model_version_name(args.version), args.out, wait=args.wait)
    except (PlotsUnavailable, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    if args.json:
        _print_json({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            print(f"saved {path}")
    return 0


def _role_name(role: int) -> str:
    return access_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    caller = client.whoami()
    if args.json:
        _print_json(caller)
    else:
        key = f" (key {caller.key_id})" if caller.key_id else " (a key from TEXTFT_API_KEYS)"
        print(f"{caller.principal}: {_role_name(caller.role)} in app {caller.app}{key}")
    return 0


def cmd_keys_create(client: Client, args: argparse.Namespace) -> int:
    key, secret = client.create_api_key(args.principal, role=args.role, description=args.description)
    if args.json:
        _print_json({"api_key": _to_dict(key), "secret": secret})
    else:
        print(f"created key {key.key_id} for {key.principal} ({_role_name(key.role)} in app {key.app})")
        print("the secret is shown this once; store it now:")
        print(secret)
    return 0


def cmd_keys_list(client: Client, args: argparse.Namespace) -> int:
    keys = client.list_api_keys(include_revoked=args.all)
    if args.json:
        _print_json({"api_keys": [_to_dict(k) for k in keys]})
        return 0
    _table(
        ("KEY ID", "PRINCIPAL", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"),
        (
            (k.key_id, k.principal, _role_name(k.role), _time(k, "create_time"), _time(k, "revoke_time"), k.description)
            for k in keys
        ),
    )
    return 0


def cmd_keys_revoke(client: Client, args: argparse.Namespace) -> int:
    key = client.revoke_api_key(args.key_id)
    if args.json:
        _print_json(key)
    else:
        print(f"revoked key {key.key_id} of {key.principal}")
    return 0


def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    page = client.audit_events(page_size=args.limit)
    if args.json:
        _print_json(page)
        return 0
    _table(
        ("TIME", "PRINCIPAL", "METHOD", "RESOURCE", "OUTCOME"),
        ((_time(e, "time"), e.principal, e.method.rsplit("/", 1)[-1], e.resource, e.outcome) for e in page.events),
    )
    return 0


def cmd_up(rest: list[str]) -> int:
    try:
        from textft_services import stack  # lazy: the services bring torch and friends
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "textft_services":
            sys.stderr.write(
                "error: `textft up` needs the services distribution (textft-services), which is not installed.\n"
                "Install it from a checkout with `pip install -e services` (or `make install`).\n"
            )
            return 2
        raise
    try:
        return int(stack.main(rest) or 0)
    except KeyboardInterrupt:  # during start-up: start_stack has stopped what it started
        sys.stderr.write("interrupted\n")
        return 130
    except stack.StackError as err:  # a service did not start; its log says why
        sys.stderr.write(f"error: {err}\n")
        return 1


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textft", description="Fine-tune text models with LoRA and serve them (textft services over gRPC)."
    )
    parser.add_argument("--dataset-addr", help="dataset service host:port (default $TEXTFT_DATASET_ADDR or :50051)")
    parser.add_argument("--trainer-addr", help="trainer service host:port (default $TEXTFT_TRAINER_ADDR or :50052)")
    parser.add_argument(
        "--inference-addr", help="inference service host:port (default $TEXTFT_INFERENCE_ADDR or :50053)"
    )
    parser.add_argument("--api-key", help="API key (default $TEXTFT_API_KEY, else $TEXTFT_HOME/api_key)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of unary calls in seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    task_choices = sorted(TASKS)

    sub.add_parser("up", help="start the local stack (store + three services); arguments go to it", add_help=False)

    # datasets
    datasets = sub.add_parser("datasets", help="datasets and their versions")
    dsub = datasets.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = dsub.add_parser("create", help="create a dataset")
    p.add_argument("id", help="dataset id, [a-z0-9][a-z0-9-]{0,62}")
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_datasets_create)
    p = dsub.add_parser("upload", help="upload a CSV/TSV/JSONL file as a new version")
    p.add_argument("dataset", help="dataset id or datasets/{id}")
    p.add_argument("file", help="file to upload, or - for stdin")
    p.add_argument("--task", choices=task_choices, help="validate rows for this task (default: inferred)")
    p.add_argument("--format", choices=("csv", "tsv", "jsonl"), help="file format (default: from the extension)")
    p.add_argument(
        "--map",
        action="append",
        metavar="CANONICAL=COLUMN",
        help="map a canonical column (text, label, labels, target, id, metadata, split) to a column of the file",
    )
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_datasets_upload)
    p = dsub.add_parser("get", help="show a dataset or a dataset version")
    p.add_argument("name", help="datasets/{id} or datasets/{id}/versions/{version}")
    p.set_defaults(func=cmd_datasets_get)
    p = dsub.add_parser("list", help="list datasets")
    p.set_defaults(func=cmd_datasets_list)
    p = dsub.add_parser("versions", help="list the versions of a dataset")
    p.add_argument("dataset")
    p.set_defaults(func=cmd_datasets_versions)
    for name, func, what in (
        ("report", cmd_datasets_report, "row-level validation findings of a version"),
        ("rows", cmd_datasets_rows, "a page of a version's normalised rows"),
    ):
        p = dsub.add_parser(name, help=what)
        p.add_argument("version", help="datasets/{id}/versions/{version}")
        p.add_argument("--page-size", type=int, default=50)
        p.add_argument("--page-token", default="")
        p.set_defaults(func=func)

    # templates
    p = sub.add_parser("templates", help="list training templates")
    p.add_argument("--task", choices=task_choices)
    p.set_defaults(func=cmd_templates)

    # models
    models = sub.add_parser("models", help="models and their versions (training runs)")
    msub = models.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = msub.add_parser("create", help="create a model")
    p.add_argument("id")
    p.add_argument("--task", choices=task_choices, required=True)
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_models_create)
    p = msub.add_parser("list", help="list models")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("get", help="show a model (or a model version)")
    p.add_argument("name")
    p.set_defaults(func=cmd_models_get)
    p = msub.add_parser("versions", help="list the versions (training runs) of a model")
    p.add_argument("model")
    p.set_defaults(func=cmd_models_versions)

    # training
    p = sub.add_parser("train", help="start a training run and follow it")
    p.add_argument("model", help="model id or models/{id}")
    p.add_argument("dataset_version", help="datasets/{id}/versions/{version}")
    p.add_argument("--template", required=True, help="template name (see `textft templates`)")
    for section in CONFIG_SECTIONS:
        p.add_argument("--" + section.replace("_", "-"), dest=section, metavar="JSON", help=f"{section} overrides")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="one override, e.g. trainer_config.num_train_epochs=3 (value parsed as JSON when it can be)",
    )
    p.add_argument("--tolerance", type=float, default=0.0, metavar="PCT", help="invalid rows tolerated, 0-100 (%%)")
    p.add_argument("--description", default="")
    p.add_argument("--no-wait", action="store_true", help="return once the run is queued")
    p.set_defaults(func=cmd_train)

    for name, func, what in (
        ("watch", cmd_watch, "follow a training run to its end"),
        ("cancel", cmd_cancel, "cancel a training run"),
        ("status", cmd_status, "show a training run"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("version", help="models/{model}/versions/{version}")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="evaluate a READY run on any dataset version of its task")
    p.add_argument("version", help="models/{model}/versions/{version}")
    p.add_argument("dataset_version", help="datasets/{dataset}/versions/{version}")
    p.set_defaults(func=cmd_evaluate)

    # inference
    p = sub.add_parser("predict", help="classify texts or generate from them")
    p.add_argument("model", help="models/{model} (latest READY version) or models/{model}/versions/{version}")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", help="read texts from this file, one per line (- for stdin)")
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--top", type=int, default=0, help="classification: show only the N best labels")
    p.set_defaults(func=cmd_predict)

    # plots
    p = sub.add_parser("plot", help="save a run's training loss and ROC curves as PNG (needs textft[plots])")
    p.add_argument("version", help="models/{model}/versions/{version}")
    p.add_argument("--out", default=".", help="directory for the PNG files (default: here)")
    p.add_argument("--wait", action="store_true", help="wait for a run still going instead of refusing")
    p.set_defaults(func=cmd_plot)

    # access: keys, roles, audit
    p = sub.add_parser("whoami", help="the principal, app and role of this key")
    p.set_defaults(func=cmd_whoami)
    keys = sub.add_parser("keys", help="API keys of this app (admin role)")
    ksub = keys.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = ksub.add_parser("create", help="create a key; its secret is printed once")
    p.add_argument("principal", help="who holds the key: a user or a machine")
    p.add_argument("--role", choices=sorted(ROLES), default="predictor")
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_keys_create)
    p = ksub.add_parser("list", help="list keys")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(func=cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key (every service refuses it within seconds)")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)
    p = sub.add_parser("audit", help="mutating calls in this app, newest first (admin role)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)
    return parser


def _split_up(argv: list[str]) -> list[str] | None:
    """The arguments after `up` when the command is `up` (given to the stack untouched), else None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_VALUE_OPTIONS:
            i += 1
        else:
            return argv[i + 1 :] if arg == "up" else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = _split_up(argv)
    if rest is not None:
        return cmd_up(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    client = Client(
        args.dataset_addr,
        args.trainer_addr,
        args.inference_addr,
        api_key=default_api_key() if args.api_key is None else args.api_key,
        timeout=args.timeout,
    )
    try:
        return int(args.func(client, args))
    except UsageError as err:
        sys.stderr.write(f"textft: error: {err}\n")
        return 2
    except TextftError as err:
        code = getattr(err, "grpc_code", err.code)
        sys.stderr.write(f"error: {code.name}: {err.message}\n")
        if err.reason and err.reason != code.name:
            sys.stderr.write(f"  reason: {err.reason}\n")
        for violation in err.violations:
            sys.stderr.write(f"  {violation.field}: {violation.description}\n")
        return 1
    except BrokenPipeError:  # `textft ... | head`: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
