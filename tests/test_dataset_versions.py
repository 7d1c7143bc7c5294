"""Dataset versions through the real RPCs against a real S3 endpoint: re-uploads
of identical bytes, the train/eval split a version records, the example files
of each format, hostile ids and keys, failed uploads leaving the store clean,
and the rule for deleting a dataset that a training run uses."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from support import TINY_BASE_URI, error_of

from textft import Client
from textft.errors import FailedPrecondition, InvalidArgument, NotFound
from textft.v1 import common_pb2, dataset_pb2
from textft_services.stack import start_service

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "datasets"
CLS = common_pb2.TASK_TEXT_CLASSIFICATION
GEN = common_pb2.TASK_TEXT_GENERATION
CSV = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\n"


def new_id() -> str:
    return "dv-" + uuid.uuid4().hex[:10]


def keys(stack, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    return list(stack.store.list(prefix))


def test_reupload_of_identical_bytes_is_flagged(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    ds = new_id()
    client.create_dataset(ds)
    v1 = client.upload_dataset(ds, CSV, format="csv")
    assert v1.duplicate_of == ""
    other = client.upload_dataset(ds, CSV + b"new row,neg\n", format="csv")
    assert other.duplicate_of == "" and other.source_sha256 != v1.source_sha256
    again = client.upload_dataset(ds, CSV, format="csv")
    assert again.name == f"datasets/{ds}/versions/v3"
    assert again.duplicate_of == v1.name and again.source_sha256 == v1.source_sha256
    assert client.get_dataset_version(again.name).duplicate_of == v1.name  # recorded in the manifest
    # An import of the same bytes from the store is a re-upload too.
    stack.store.put_bytes(f"imports/{ds}/same.csv", CSV)
    header = dataset_pb2.UploadHeader(parent=f"datasets/{ds}", filename="same.csv")
    imported = client.call(
        client.datasets.ImportDatasetVersion,
        dataset_pb2.ImportDatasetVersionRequest(header=header, source_object=f"imports/{ds}/same.csv"),
    ).dataset_version
    assert imported.duplicate_of == v1.name
    # Another dataset with the same bytes is not a duplicate of this one.
    ds2 = new_id()
    client.create_dataset(ds2)
    assert client.upload_dataset(ds2, CSV, format="csv").duplicate_of == ""


def test_split_column_or_seeded_split_is_recorded(client: Client) -> None:
    ds = new_id()
    client.create_dataset(ds)
    own = client.upload_dataset(ds, b"text,label,split\na,x,train\nb,y,validation\nc,x,\nd,y,test\n", format="csv")
    assert own.split_source == dataset_pb2.SPLIT_SOURCE_COLUMN
    assert (own.stats.split_train_row_count, own.stats.split_eval_row_count) == (1, 2)
    rows = client.read_rows(own.name).rows
    assert [r.split for r in rows] == ["train", "eval", "", "eval"]

    none = client.upload_dataset(ds, CSV, format="csv")
    assert none.split_source == dataset_pb2.SPLIT_SOURCE_SEEDED
    assert (none.stats.split_train_row_count, none.stats.split_eval_row_count) == (0, 0)

    train_only = client.upload_dataset(
        ds, b"text,label,split\na,x,train\nb,y,train\nc,x,train\nd,y,train\n", format="csv"
    )
    assert train_only.split_source == dataset_pb2.SPLIT_SOURCE_SEEDED
    report = client.get_validation_report(train_only.name)
    assert [(i.row, i.code, i.field) for i in report.issues] == [(0, "SPLIT_WITHOUT_EVAL", "split")]


@pytest.mark.parametrize(
    ("name", "task", "rows", "labels", "mapping", "split"),
    [
        (
            "reviews.csv",
            CLS,
            8,
            ["negative", "neutral", "positive"],
            {"text": "text", "labels": "label", "split": "split"},
            (5, 3),
        ),
        (
            "reviews.tsv",
            CLS,
            5,
            ["battery", "build", "camera", "screen"],
            {"text": "text", "labels": "labels", "id": "id"},
            (0, 0),
        ),
        (
            "qa.jsonl",
            GEN,
            5,
            [],
            {"text": "text", "target": "target", "id": "id", "metadata": "metadata", "split": "split"},
            (0, 1),
        ),
        (
            "clarifai.csv",
            CLS,
            5,
            ["negative", "positive"],
            {"text": "input", "labels": "concepts", "id": "inputid", "metadata": "metadata"},
            (0, 0),
        ),
    ],
)
def test_example_files_upload_cleanly(  # type: ignore[no-untyped-def]
    client: Client, name: str, task: int, rows: int, labels: list[str], mapping: dict[str, str], split: tuple[int, int]
) -> None:
    ds = new_id()
    client.create_dataset(ds)
    path = EXAMPLES / name
    version = client.upload_dataset(ds, path)  # the format comes from the file name
    s = version.stats
    assert (s.row_count, s.valid_row_count, s.invalid_row_count, s.warning_count) == (rows, rows, 0, 0)
    assert version.task == task and list(version.label_names) == labels
    assert dict(version.column_mapping) == mapping
    assert (s.split_train_row_count, s.split_eval_row_count) == split
    assert version.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    if name == "clarifai.csv":  # Clarifai's comma-separated concepts and single-quoted metadata
        first, _, third = client.read_rows(version.name, page_size=3).rows
        assert first.id == "c1" and first.metadata["source"] == "app"
        assert list(third.labels) == ["positive", "negative"]


def test_ids_and_keys_with_path_characters_are_refused(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    for bad in ("../etc", "a/b", "..", "x\\y", "a.b"):
        err = error_of(lambda bad=bad: client.create_dataset(bad))
        assert isinstance(err, InvalidArgument) and err.violations[0].field == "dataset_id", bad
    err = error_of(lambda: client.get_dataset("datasets/../models"))
    assert isinstance(err, InvalidArgument) and err.violations[0].field == "name"
    err = error_of(lambda: client.upload_dataset("../x", CSV, format="csv"))
    assert isinstance(err, InvalidArgument) and err.violations[0].field == "header.parent"
    err = error_of(lambda: client.get_dataset_version("datasets/ok/versions/../../models"))
    assert isinstance(err, InvalidArgument) and err.violations[0].field == "name"

    ds = new_id()
    client.create_dataset(ds)
    header = dataset_pb2.UploadHeader(parent=f"datasets/{ds}", format=dataset_pb2.DATASET_FORMAT_CSV)
    for key in (f"datasets/{ds}/../../models/x.csv", "/etc/passwd", "../secret.csv"):
        request = dataset_pb2.ImportDatasetVersionRequest(header=header, source_object=key)
        err = error_of(lambda request=request: client.call(client.datasets.ImportDatasetVersion, request))
        assert isinstance(err, InvalidArgument) and err.reason == "INVALID_OBJECT_KEY", key
        assert err.violations[0].field == "source_object"
    # A valid key outside imports/ (another dataset's source, a model's files) is not read.
    other = client.upload_dataset(ds, CSV, format="csv")
    for key in (other.source_object, "models/m/versions/v1/job.json", "importsx/a.csv", "base-models/b/config.json"):
        request = dataset_pb2.ImportDatasetVersionRequest(header=header, source_object=key)
        err = error_of(lambda request=request: client.call(client.datasets.ImportDatasetVersion, request))
        assert isinstance(err, InvalidArgument) and err.reason == "IMPORT_OUTSIDE_PREFIX", key
        assert err.violations[0].field == "source_object" and "imports/" in err.violations[0].description
    assert {k.split("/")[3] for k in keys(stack, f"datasets/{ds}/versions/")} == {"v1"}  # the upload's only


def test_failure_after_the_header_leaves_nothing(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    """Failures found once rows are being read (the source is already being
    copied to the store) still leave no object under the version's prefix."""
    ds = new_id()
    client.create_dataset(ds)
    header_only = error_of(lambda: client.upload_dataset(ds, b"text,label\n\n\n", format="csv"))
    assert isinstance(header_only, InvalidArgument) and header_only.reason == "NO_DATA_ROWS"
    long_line = b"text,label\nok,a\n" + b"x" * (8 * 100_000 + 1024 * 1024 + 10) + b",a\n"
    too_long = error_of(lambda: client.upload_dataset(ds, long_line, format="csv"))
    assert isinstance(too_long, InvalidArgument) and too_long.reason == "LINE_TOO_LONG"
    assert keys(stack, f"datasets/{ds}/") == []  # records live in the database
    # The two failed uploads had v1 and v2: numbers are never handed out twice
    # (another replica may have been writing under them), so the next is v3.
    assert client.upload_dataset(ds, CSV, format="csv").name == f"datasets/{ds}/versions/v3"


def test_delete_is_refused_while_a_training_run_uses_the_dataset(stack) -> None:  # type: ignore[no-untyped-def]
    """A dataset service that knows the trainer's address asks it (ListModels,
    ListModelVersions) before deleting; force deletes anyway."""
    env = {**stack.env, "TEXTFT_TRAINER_ADDR": stack.stack.addresses["trainer"]}
    service = start_service("dataset", env)
    try:
        a = stack.stack.addresses
        with Client(service.address, a["trainer"], a["inference"], api_key=stack.api_key) as client:
            ds, idle = new_id(), new_id()
            client.create_dataset(ds)
            client.create_dataset(idle)
            rows = b"text,label\n" + b"".join(b"row %d,%s\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(40))
            version = client.upload_dataset(ds, rows, format="csv")
            client.upload_dataset(idle, rows, format="csv")
            model = "m-" + uuid.uuid4().hex[:8]
            client.create_model(model, task="classification")
            run = client.train(
                model,
                version.name,
                "templates/gpt-neo-125m-lora-text-classification",
                model_config={"pretrained_model_name_or_path": TINY_BASE_URI},
                trainer_config={"num_train_epochs": 10_000, "per_device_train_batch_size": 8},
            )
            try:
                delete = dataset_pb2.DeleteDatasetRequest(name=f"datasets/{ds}")
                refused = error_of(lambda: client.call(client.datasets.DeleteDataset, delete))
                assert isinstance(refused, FailedPrecondition) and refused.reason == "DATASET_IN_USE"
                assert run.name in refused.metadata["model_versions"].split(",")  # which runs use it
                assert client.get_dataset_version(version.name) == version  # nothing was deleted
                # A dataset no run uses is deleted as before.
                client.call(client.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name=f"datasets/{idle}"))
                assert keys(stack, f"datasets/{idle}/") == []
                forced = dataset_pb2.DeleteDatasetRequest(name=f"datasets/{ds}", force=True)
                client.call(client.datasets.DeleteDataset, forced)
                assert keys(stack, f"datasets/{ds}/") == []
            finally:
                client.cancel(run.name)
                assert client.wait(run.name, timeout=120).state in (
                    run.STATE_CANCELLED,
                    run.STATE_FAILED,
                )
            assert isinstance(error_of(lambda: client.get_dataset(ds)), NotFound)
    finally:
        service.stop()
