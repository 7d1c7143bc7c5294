"""Golden files pin the formats between the services and the jobs
(textft.internal.v1): the job spec (job.json), the event lines a job prints,
the adapter's textft.json and a version's rows manifest. A change to any of
them shows here as a diff; regenerate with TEXTFT_UPDATE_GOLDEN=1 only when
the change is meant (and readers of the old format are handled)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format, struct_pb2

from textft.internal.v1 import job_pb2, rows_pb2
from textft.v1 import common_pb2, trainer_pb2
from textft_services.common.protojson import to_dict
from textft_services.modeling.loading import read_adapter_manifest, write_adapter_manifest
from textft_services.trainer import events

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
MV = trainer_pb2.ModelVersion


def _struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TEXTFT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; see this module's docstring"


SPEC = job_pb2.TrainingJobSpec(
    model_version="models/reviews/versions/v3",
    task=common_pb2.TASK_TEXT_CLASSIFICATION,
    dataset_version="datasets/reviews/versions/v2",
    rows_manifest_object="datasets/reviews/versions/v2/rows/manifest.json",
    label_names=["neg", "pos"],
    model_config=_struct({"pretrained_model_name_or_path": "store://base-models/tiny"}),
    peft_config=_struct({"r": 8, "target_modules": ["q_proj", "v_proj"]}),
    tokenizer_config=_struct({"model_max_length": 512}),
    trainer_config=_struct({"max_steps": 5, "seed": 42}),
    invalid_data_tolerance_percent=5.0,
    dataset_row_count=1000,
    dataset_invalid_row_count=3,
    dataset_issues=[common_pb2.RowIssue(row=7, code="EMPTY_TEXT", message="text is missing or empty")],
    store="local directory /srv/textft/store",
    output_prefix="models/reviews/versions/v3",
)


def test_training_job_spec() -> None:
    text = json.dumps(to_dict(SPEC), indent=1, sort_keys=True) + "\n"
    _check("training_job_spec.json", text)
    parsed = json_format.Parse(text, job_pb2.TrainingJobSpec())
    assert parsed == SPEC


def test_evaluation_job_spec() -> None:
    spec = job_pb2.TrainingJobSpec()
    spec.CopyFrom(SPEC)
    spec.evaluation.CopyFrom(
        job_pb2.EvaluationTarget(
            dataset_version="datasets/holdout/versions/v1",
            rows_manifest_object="datasets/holdout/versions/v1/rows/manifest.json",
        )
    )
    _check("evaluation_job_spec.json", json.dumps(to_dict(spec), indent=1, sort_keys=True) + "\n")


def _events() -> list[job_pb2.JobEvent]:
    progress = common_pb2.Progress(step=3, total_steps=5, epoch=0.5, percent_completed=60.0)
    progress.time_remaining.FromSeconds(4)
    evaluation = trainer_pb2.Evaluation(metrics={"accuracy": 0.75}, label_names=["neg", "pos"], example_count=4)
    return [
        job_pb2.JobEvent(state=MV.STATE_PREPARING_DATA),
        job_pb2.JobEvent(log="90 train rows, 10 eval rows"),
        job_pb2.JobEvent(data=job_pb2.DataSummary(train_rows=90, eval_rows=10, skipped_rows=3)),
        job_pb2.JobEvent(state=MV.STATE_TRAINING),
        job_pb2.JobEvent(
            progress=job_pb2.JobProgress(progress=progress, loss=0.5, learning_rate=2e-4, samples_per_second=12.5)
        ),
        job_pb2.JobEvent(evaluation=evaluation),
        job_pb2.JobEvent(
            result=job_pb2.JobResult(
                adapter_uri="models/reviews/versions/v3/adapter",
                lineage=trainer_pb2.Lineage(base_model="store://base-models/tiny", library_versions={"peft": "0.21"}),
            )
        ),
        job_pb2.JobEvent(
            failure=common_pb2.Failure(reason="MODEL_TRAINING_INSUFFICIENT_DATA", message="no rows", rows=[1, 2])
        ),
    ]


def test_job_event_lines_round_trip() -> None:
    out = io.StringIO()
    emitter = events.Emitter(out)
    for event in _events():
        emitter.emit(event)
    text = out.getvalue()
    _check("job_events.txt", text)
    noise = "a library's own print\n" + events.EVENT_PREFIX + "{not json\n"
    assert list(events.parse_events(io.StringIO(noise + text))) == _events()


def test_a_silent_emitter_writes_nothing() -> None:
    out = io.StringIO()
    events.Emitter(out, enabled=False).emit(_events()[0])
    assert out.getvalue() == ""


def test_adapter_manifest(tmp_path: Path) -> None:
    manifest = job_pb2.AdapterManifest(
        model_version="models/reviews/versions/v3",
        task="TEXT_CLASSIFICATION",
        label_names=["neg", "pos"],
        multi_label=False,
        prompt_template="{text}\n",
        max_length=512,
        model_config=_struct({"pretrained_model_name_or_path": "store://base-models/tiny"}),
        tokenizer_config=_struct({"model_max_length": 512}),
        lineage=trainer_pb2.Lineage(base_model="store://base-models/tiny", library_versions={"torch": "2.13.0"}),
    )
    write_adapter_manifest(tmp_path, manifest)
    text = (tmp_path / "textft.json").read_text()
    _check("adapter_manifest.json", text)
    assert read_adapter_manifest(tmp_path) == manifest
    # The keys and values inference reads from textft.json today.
    data = json.loads(text)
    assert data["task"] == "TEXT_CLASSIFICATION" and data["label_names"] == ["neg", "pos"]
    assert data["model_config"]["pretrained_model_name_or_path"] == "store://base-models/tiny"
    assert (data["prompt_template"], data["max_length"], data["multi_label"]) == ("{text}\n", 512, False)


def test_rows_manifest() -> None:
    manifest = rows_pb2.RowsManifest(
        schema_version=1,
        dataset_version="datasets/reviews/versions/v2",
        task=common_pb2.TASK_TEXT_CLASSIFICATION,
        row_count=70000,
        parts=[
            rows_pb2.RowsPart(
                object="datasets/reviews/versions/v2/rows/part-00000.parquet",
                sha256="ab" * 32,
                row_count=65536,
                first_row=0,
                size_bytes=1234567,
            ),
            rows_pb2.RowsPart(
                object="datasets/reviews/versions/v2/rows/part-00001.parquet",
                sha256="cd" * 32,
                row_count=4464,
                first_row=65536,
                size_bytes=89012,
            ),
        ],
        label_names=["neg", "pos"],
    )
    text = json.dumps(to_dict(manifest), indent=1, sort_keys=True) + "\n"
    _check("rows_manifest.json", text)
    assert json_format.Parse(text, rows_pb2.RowsManifest()) == manifest
