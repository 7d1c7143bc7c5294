"""`textft plot` through its real entry point against a tiny classification
run on the real stack: a loss curve and ROC curves as PNG files; the SDK
helpers without matplotlib fail with a clear message."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningStack
from support import EV, MV, TINY_BASE_URI

from textft.plots import PlotsUnavailable, loss_curve, save_loss_curve
from textft.v1 import common_pb2

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run_name(stack: RunningStack) -> str:
    rng = random.Random(7)
    words = {"pos": ["great", "superb", "loved", "wonderful"], "neg": ["awful", "dull", "hated", "dreadful"]}
    rows = ["text,label"]
    for _ in range(120):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(words[label])
        if rng.random() < 0.15:  # neutral rows, labelled at random: a ROC curve with a shape, not a corner
            word = rng.choice(["okay", "average", "fine"])
        rows.append(f"the film was {word} from start to end,{label}")
    with stack.client() as client:
        client.create_dataset("plot-reviews")
        data = client.upload_dataset("plot-reviews", ("\n".join(rows) + "\n").encode(), "classification", "csv")
        client.create_model("plot-sentiment", task="classification")
        run = client.train(
            "plot-sentiment",
            data.name,
            "gpt-neo-125m-lora-text-classification",
            model_config={"pretrained_model_name_or_path": TINY_BASE_URI},
            trainer_config={
                "num_train_epochs": 4,
                "learning_rate": 5e-3,
                "per_device_train_batch_size": 8,
                "logging_steps": 4,
            },
        )
        done = client.wait(run.name, timeout=300)
        assert done.state == MV.STATE_READY, done.failure
        assert done.evaluation.roc_curves
        return done.name


def test_plot_command_saves_loss_and_roc_png(stack: RunningStack, run_name: str, tmp_path: Path) -> None:
    a = stack.stack.addresses
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    env.update(TEXTFT_TRAINER_ADDR=a["trainer"], TEXTFT_API_KEY=stack.api_key)
    out = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, "-m", "textft", "--json", "plot", run_name, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    files = [Path(f) for f in json.loads(result.stdout)["files"]]
    version = run_name.split("/")[-1]
    assert [f.name for f in files] == [f"plot-sentiment-{version}-loss.png", f"plot-sentiment-{version}-roc.png"]
    for path in files:
        assert path.parent == out
        width, height = png_size(path)
        assert width >= 500 and height >= 400
        assert 10_000 < path.stat().st_size < 2_000_000  # drawn lines and text, not an empty canvas
    # Keep copies where a person can look at them (TEXTFT_TEST_PLOTS_DIR).
    if keep := os.environ.get("TEXTFT_TEST_PLOTS_DIR"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        for path in files:
            (Path(keep) / path.name).write_bytes(path.read_bytes())

    # The data behind the loss curve falls, and the ROC curves are better than chance.
    with stack.client() as client:
        curve = loss_curve(client.watch(run_name))
        evaluation = client.get_model_version(run_name).evaluation
    assert len(curve.losses) >= 5 and curve.steps == sorted(curve.steps)
    third = len(curve.losses) // 3
    assert sum(curve.losses[-third:]) / third < 0.8 * sum(curve.losses[:third]) / third
    assert all(auc > 0.5 for auc in evaluation.roc_auc_per_label.values())

    # Human-readable output names the files.
    plain = subprocess.run(
        [sys.executable, "-m", "textft", "plot", run_name, "--out", str(tmp_path / "again")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0 and plain.stdout.count("saved ") == 2


def test_plot_of_an_unknown_run_fails_cleanly(stack: RunningStack, tmp_path: Path) -> None:
    a = stack.stack.addresses
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    env.update(TEXTFT_TRAINER_ADDR=a["trainer"], TEXTFT_API_KEY=stack.api_key)
    result = subprocess.run(
        [sys.executable, "-m", "textft", "plot", "models/nope/versions/v1", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_loss_curve_skips_events_without_loss(tmp_path: Path) -> None:
    events = [
        EV(kind=EV.KIND_STATE, state=MV.STATE_TRAINING),
        EV(kind=EV.KIND_PROGRESS, progress=common_pb2.Progress(step=2), loss=0.9),
        EV(kind=EV.KIND_PROGRESS, progress=common_pb2.Progress(step=3)),  # no loss: not a point
        EV(kind=EV.KIND_PROGRESS, progress=common_pb2.Progress(step=4), loss=0.5),
        EV(kind=EV.KIND_EVALUATION, progress=common_pb2.Progress(step=4), eval_metrics={"loss": 0.6}),
    ]
    curve = loss_curve(events)
    assert (curve.steps, curve.losses) == ([2, 4], [0.9, 0.5])
    assert (curve.eval_steps, curve.eval_losses) == ([4], [0.6])
    with pytest.raises(ValueError, match="no training loss"):
        save_loss_curve(events[:1], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_without_matplotlib_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    events = [EV(kind=EV.KIND_PROGRESS, progress=common_pb2.Progress(step=1), loss=0.7)]
    with pytest.raises(PlotsUnavailable, match=r"pip install \"textft\[plots\]\""):
        save_loss_curve(events, tmp_path / "loss.png")
