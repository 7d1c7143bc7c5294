"""`textft datasets ...`: datasets, uploads of their versions, validation reports and rows."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..client import Client
from ..uploads import UploadProgress
from ..v1 import common_pb2
from .args import TASK_CHOICES, UsageError, dataset_version_name
from .output import format_time, human_bytes, list_all, next_page_hint, print_json, show, table, task_name


def _column_mapping(items: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items or []:
        canonical, sep, column = item.partition("=")
        if not sep or not canonical or not column:
            raise UsageError(f"--map expects canonical=column, got {item!r}")
        mapping[canonical.strip()] = column.strip()
    return mapping


def cmd_datasets_create(client: Client, args: argparse.Namespace) -> int:
    dataset = client.create_dataset(args.id, description=args.description)
    if args.json:
        print_json(dataset)
    else:
        print(f"created {dataset.name}")
    return 0


def _print_dataset_version(version: Any) -> None:
    s = version.stats
    show(
        version.name,
        [
            ("task", task_name(version.task)),
            (
                "rows",
                f"{s.row_count}  (valid {s.valid_row_count}, invalid {s.invalid_row_count}, warnings {s.warning_count})",
            ),
            ("labels", ", ".join(f"{k} {v}" for k, v in sorted(s.label_counts.items()))),
            ("targets", s.target_count or None),
            (
                "text chars",
                f"min {s.text_length_min}  p50 {s.text_length_p50}  mean {s.text_length_mean:.1f}"
                f"  p95 {s.text_length_p95}  max {s.text_length_max}"
                if s.valid_row_count
                else None,
            ),
            ("source", f"{human_bytes(version.source_size_bytes)}  sha256 {version.source_sha256}"),
            ("mapping", ", ".join(f"{k}={v}" for k, v in sorted(version.column_mapping.items()))),
            ("description", version.description),
            ("created", format_time(version, "create_time")),
        ],
    )
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
        print_json(version)
    else:
        _print_dataset_version(version)
    return 0


def cmd_datasets_get(client: Client, args: argparse.Namespace) -> int:
    name = args.name
    if "/versions/" in name:
        version = client.get_dataset_version(dataset_version_name(name))
        if args.json:
            print_json(version)
        else:
            _print_dataset_version(version)
        return 0
    dataset = client.get_dataset(name)
    if args.json:
        print_json(dataset)
        return 0
    show(
        dataset.name,
        [
            ("description", dataset.description),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(dataset.labels.items()))),
            ("latest version", dataset.latest_version or "(none)"),
            ("created", format_time(dataset, "create_time")),
        ],
    )
    return 0


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> int:
    list_all(
        lambda token: client.list_datasets(page_size=1000, page_token=token),
        "datasets",
        args.json,
        ("NAME", "LATEST VERSION", "CREATED", "DESCRIPTION"),
        lambda d: (d.name, d.latest_version, format_time(d, "create_time"), d.description),
    )
    return 0


def cmd_datasets_versions(client: Client, args: argparse.Namespace) -> int:
    list_all(
        lambda token: client.list_dataset_versions(args.dataset, page_size=1000, page_token=token),
        "dataset_versions",
        args.json,
        ("NAME", "TASK", "ROWS", "VALID", "INVALID", "LABELS", "CREATED"),
        lambda v: (
            v.name,
            task_name(v.task),
            v.stats.row_count,
            v.stats.valid_row_count,
            v.stats.invalid_row_count,
            ",".join(v.label_names),
            format_time(v, "create_time"),
        ),
    )
    return 0


def cmd_datasets_report(client: Client, args: argparse.Namespace) -> int:
    name = dataset_version_name(args.version)
    report = client.get_validation_report(name, page_size=args.page_size, page_token=args.page_token)
    if args.json:
        print_json(report)
        return 0
    s = report.stats
    print(
        f"{name}: {s.row_count} rows, {s.valid_row_count} valid, {s.invalid_row_count} invalid, {s.warning_count} warnings"
    )
    if report.issues:
        severity = {1: "error", 2: "warning"}
        table(
            ("ROW", "SEVERITY", "CODE", "FIELD", "MESSAGE"),
            ((i.row, severity.get(i.severity, "?"), i.code, i.field, i.message) for i in report.issues),
        )
    else:
        print("no findings")
    next_page_hint("datasets report", name, report.next_page_token)
    return 0


def cmd_datasets_rows(client: Client, args: argparse.Namespace) -> int:
    name = dataset_version_name(args.version)
    page = client.read_rows(name, page_size=args.page_size, page_token=args.page_token)
    if args.json:
        print_json(page)
        return 0

    def clip(text: str, n: int = 60) -> str:
        text = text.replace("\n", "\\n")
        return text if len(text) <= n else text[: n - 1] + "…"

    table(
        ("ROW", "SPLIT", "LABELS", "TARGET", "TEXT"),
        ((r.row, r.split, "|".join(r.labels), clip(r.target, 30), clip(r.text)) for r in page.rows),
    )
    next_page_hint("datasets rows", name, page.next_page_token)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `datasets` and its subcommands to the top-level subparsers."""
    datasets = sub.add_parser("datasets", help="datasets and their versions")
    dsub = datasets.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = dsub.add_parser("create", help="create a dataset")
    p.add_argument("id", help="dataset id, [a-z0-9][a-z0-9-]{0,62}")
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_datasets_create)
    p = dsub.add_parser("upload", help="upload a CSV/TSV/JSONL file as a new version")
    p.add_argument("dataset", help="dataset id or datasets/{id}")
    p.add_argument("file", help="file to upload, or - for stdin")
    p.add_argument("--task", choices=TASK_CHOICES, help="validate rows for this task (default: inferred)")
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
