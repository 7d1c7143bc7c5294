"""The `textft` command line through its real entry point (`python -m textft`
in a subprocess) against the real services of the `stack` fixture: datasets,
templates, models, a tiny training run followed to READY, predictions, JSON
output, errors without tracebacks, and `textft up` starting and stopping."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import RunningStack
from support import NEGATIVE, POSITIVE, TINY_BASE_URI

from textft.cli import apply_set

pytestmark = pytest.mark.integration

CLS_TEMPLATE = "gpt-neo-125m-lora-text-classification"


def _clean_env() -> dict[str, str]:
    """The environment of a CLI subprocess: nothing textft-specific leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(stack: RunningStack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    a = stack.stack.addresses
    cmd = [
        sys.executable,
        "-m",
        "textft",
        "--dataset-addr",
        a["dataset"],
        "--trainer-addr",
        a["trainer"],
        "--inference-addr",
        a["inference"],
        "--api-key",
        stack.api_key,
        *args,
    ]
    return subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(1)
    lines = ["text,label"]
    for _ in range(60):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        lines.append(f"the film was {word} from start to end,{label}")
    path = tmp_path_factory.mktemp("cli") / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def dataset_version(stack: RunningStack, csv_file: Path) -> str:
    ok(cli(stack, "datasets", "create", "cli-reviews", "--description", "from the CLI"))
    result = ok(cli(stack, "--json", "datasets", "upload", "cli-reviews", str(csv_file), "--task", "classification"))
    version = json.loads(result.stdout)
    size = csv_file.stat().st_size
    # Not a terminal: the progress line is printed once, at the end.
    assert "uploaded" in result.stderr and "(100%)" in result.stderr and str(size) in result.stderr
    assert "60 rows" in result.stderr  # counted as the bytes went out
    assert int(version["stats"]["valid_row_count"]) == 60
    return str(version["name"])


def test_templates(stack: RunningStack) -> None:
    table = ok(cli(stack, "templates")).stdout
    header = table.splitlines()[0].split()
    assert header[:3] == ["NAME", "TASK", "BASE"]
    assert CLS_TEMPLATE in table and "EleutherAI/gpt-neo-125M" in table
    listed = json.loads(ok(cli(stack, "--json", "templates", "--task", "generation")).stdout)
    names = [t["name"] for t in listed["templates"]]
    assert names and all("generation" in n for n in names)


def test_datasets(stack: RunningStack, dataset_version: str, csv_file: Path) -> None:
    # A human-readable upload: the summary names the version, counts and labels.
    out = ok(cli(stack, "datasets", "upload", "cli-reviews", str(csv_file), "--format", "csv")).stdout
    assert "datasets/cli-reviews/versions/" in out and "valid 60, invalid 0" in out
    assert "neg" in out and "pos" in out

    got = ok(cli(stack, "datasets", "get", dataset_version)).stdout
    assert dataset_version in got and "classification" in got
    dataset = json.loads(ok(cli(stack, "--json", "datasets", "get", "cli-reviews")).stdout)
    assert dataset["name"] == "datasets/cli-reviews" and dataset["description"] == "from the CLI"

    report = ok(cli(stack, "datasets", "report", dataset_version)).stdout
    assert "60 rows, 60 valid, 0 invalid" in report
    rows = ok(cli(stack, "datasets", "rows", dataset_version, "--page-size", "5")).stdout
    assert len(rows.splitlines()) == 6 and "the film was" in rows
    versions = ok(cli(stack, "datasets", "versions", "cli-reviews")).stdout
    assert dataset_version in versions
    assert "datasets/cli-reviews" in ok(cli(stack, "datasets", "list")).stdout


def test_train_watch_predict(stack: RunningStack, dataset_version: str) -> None:
    created = ok(cli(stack, "models", "create", "cli-sentiment", "--task", "classification")).stdout
    assert "models/cli-sentiment" in created
    result = ok(
        cli(
            stack,
            "train",
            "cli-sentiment",
            dataset_version,
            "--template",
            CLS_TEMPLATE,
            "--model-config",
            json.dumps({"pretrained_model_name_or_path": TINY_BASE_URI}),
            "--trainer-config",
            json.dumps({"learning_rate": 5e-3, "per_device_train_batch_size": 8}),
            "--set",
            "trainer_config.num_train_epochs=2",
            "--set",
            "trainer.logging_steps=2",
            timeout=300,
        )
    )
    assert "loss" in result.stderr and "samples/s" in result.stderr
    assert "state: TRAINING" in result.stderr and "state: READY" in result.stderr
    assert "state            READY" in result.stdout and "accuracy" in result.stdout
    name = result.stdout.splitlines()[0].strip()
    assert name.startswith("models/cli-sentiment/versions/")

    status = json.loads(ok(cli(stack, "--json", "status", name)).stdout)
    assert status["state"] == "STATE_READY"
    assert status["trainer_config"]["num_train_epochs"] == 2
    assert name in ok(cli(stack, "models", "versions", "cli-sentiment")).stdout
    assert name in ok(cli(stack, "models", "get", "cli-sentiment")).stdout
    # A late watcher replays the history and exits 0 on READY.
    watched = ok(cli(stack, "watch", name))
    assert "state: READY" in watched.stderr

    texts = ["the film was wonderful from start to end", "the film was dreadful from start to end"]
    predicted = ok(cli(stack, "predict", "cli-sentiment", *texts)).stdout
    for text in texts:
        assert text in predicted
    label_lines = [line.split() for line in predicted.splitlines() if line.startswith("  ")]
    assert len(label_lines) == 4 and {line[0] for line in label_lines} == {"pos", "neg"}
    assert all(0.0 <= float(line[1]) <= 1.0 for line in label_lines)
    response = json.loads(ok(cli(stack, "--json", "predict", name, texts[0])).stdout)
    assert response["model_version"] == name
    assert {s["label"] for s in response["predictions"][0]["classification"]["scores"]} == {"pos", "neg"}

    evaluated = ok(cli(stack, "evaluate", name, dataset_version, timeout=300)).stdout
    assert "accuracy" in evaluated and "roc_auc[pos]" in evaluated


def test_errors_have_no_traceback(stack: RunningStack, dataset_version: str) -> None:
    result = cli(stack, "datasets", "get", "datasets/nope/versions/v1")
    assert result.returncode == 1
    assert "error: NOT_FOUND:" in result.stderr and "Traceback" not in result.stderr
    result = cli(stack, "train", "nope", "datasets/nope/versions/v1", "--template", CLS_TEMPLATE, "--no-wait")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr and "Traceback" not in result.stderr
    # A refused config names the field.
    ok(cli(stack, "models", "create", "cli-refused", "--task", "classification"))
    result = cli(
        stack, "train", "cli-refused", dataset_version, "--template", CLS_TEMPLATE, "--set", "trainer.output_dir=/x"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: INVALID_ARGUMENT:" in result.stderr and "  trainer_config.output_dir: " in result.stderr
    # Bad arguments are usage errors (exit 2), not crashes.
    result = cli(stack, "train", "m", "d", "--template", "t", "--set", "nodot=1")
    assert result.returncode == 2 and "--set" in result.stderr and "Traceback" not in result.stderr


def test_keys_create_use_revoke(stack: RunningStack) -> None:
    """An admin creates a predictor's key, the predictor's key reads but may not
    create, the admin revokes it, and the audit log shows what happened."""
    ok(cli(stack, "whoami"))
    created = json.loads(ok(cli(stack, "--json", "keys", "create", "ci-bot", "--role", "predictor")).stdout)
    key_id, secret = created["api_key"]["key_id"], created["secret"]
    assert secret.startswith(f"tft_{key_id}_") and created["api_key"]["role"] == "ROLE_PREDICTOR"
    listed = ok(cli(stack, "keys", "list")).stdout
    assert key_id in listed and "predictor" in listed and secret not in listed

    as_predictor = dataclasses.replace(stack, api_key=secret)
    assert "predictor in app default" in ok(cli(as_predictor, "whoami")).stdout
    ok(cli(as_predictor, "templates"))
    denied = cli(as_predictor, "models", "create", "not-allowed", "--task", "classification")
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr and "Traceback" not in denied.stderr

    ok(cli(stack, "keys", "revoke", key_id))
    assert key_id not in ok(cli(stack, "keys", "list")).stdout
    assert key_id in ok(cli(stack, "keys", "list", "--all")).stdout
    audit = ok(cli(stack, "audit")).stdout
    assert "RevokeApiKey" in audit and "CreateApiKey" in audit and "PERMISSION_DENIED" in audit


def test_apply_set_parses_json_values() -> None:
    configs: dict[str, dict[str, object]] = {"trainer_config": {"learning_rate": 1e-3}}
    for item in (
        "trainer_config.num_train_epochs=3",
        "trainer.bf16=true",
        'peft.target_modules=["q_proj"]',
        "model_config.revision=main",
        "tokenizer_config.a.b=null",
    ):
        apply_set(configs, item)
    assert configs == {
        "trainer_config": {"learning_rate": 1e-3, "num_train_epochs": 3, "bf16": True},
        "peft_config": {"target_modules": ["q_proj"]},
        "model_config": {"revision": "main"},
        "tokenizer_config": {"a": {"b": None}},
    }


def test_up_starts_and_stops_on_sigint(tmp_path: Path) -> None:
    env = _clean_env()
    env["TEXTFT_AUTH"] = "on"
    cmd = [sys.executable, "-m", "textft", "up", "--home", str(tmp_path / "home")]
    cmd += ["--dataset-port", "0", "--trainer-port", "0", "--inference-port", "0"]
    log = tmp_path / "up.log"
    with open(log, "w") as stderr:  # a file, not a pipe: the services' logs cannot block it
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    addresses: dict[str, str] = {}
    try:
        while len(addresses) < 3:
            line = lines.get(timeout=180)
            assert line, f"textft up exited early: {''.join(seen)}"
            seen.append(line)
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("dataset", "trainer", "inference"):
                addresses[parts[0]] = parts[1]
        assert any("textft is up (store: local" in s for s in seen), seen
        assert all(a.startswith("127.0.0.1:") and not a.endswith(":0") for a in addresses.values())
        assert (tmp_path / "home" / "api_key").exists()
        # The key `up` wrote is the one the CLI reads by default: templates answers.
        key = (tmp_path / "home" / "api_key").read_text().strip()
        templates = subprocess.run(
            [sys.executable, "-m", "textft", "--trainer-addr", addresses["trainer"], "--api-key", key, "templates"],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert templates.returncode == 0 and CLS_TEMPLATE in templates.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_up_without_the_services_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from textft import cli as textft_cli

    monkeypatch.setitem(sys.modules, "textft_services", None)  # as if it were not installed
    assert textft_cli.main(["up", "--home", "unused"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e services" in err and "make install" in err
