"""The README's "SDK in ten lines" runs as written against the real stack.

Only what a test must change is changed, by string replacement (each one must
apply, so an edited README fails here rather than drifting): the base model is
the tiny offline GPT-Neo (a `model_config` argument), and the dataset and model
ids get a prefix so they do not collide with other tests on the shared stack.
Addresses and the key come from TEXTFT_* variables, as the README says."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningStack
from support import TINY_BASE_URI

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"
TEMPLATE = '"gpt-neo-125m-lora-text-classification",'


def sdk_example() -> str:
    text = README.read_text()
    section = text.split("## The SDK in ten lines", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## The SDK in ten lines'"
    return match.group(1)


def adapted(code: str) -> str:
    replacements = [
        (TEMPLATE, TEMPLATE + f' model_config={{"pretrained_model_name_or_path": "{TINY_BASE_URI}"}},'),
        ('"reviews"', '"readme-reviews"'),
        ('"sentiment"', '"readme-sentiment"'),
    ]
    for old, new in replacements:
        assert old in code, f"README's SDK example no longer contains {old!r}: update tests/test_readme.py"
        code = code.replace(old, new)
    return code


def test_sdk_example_in_readme_runs(stack: RunningStack, tmp_path: Path) -> None:
    code = sdk_example()
    assert len(code.strip().splitlines()) <= 12  # "in ten lines" (plus the import and a blank line)
    rng = random.Random(11)
    rows = ["text,label"]
    for _ in range(40):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(["great", "loved", "superb"] if label == "positive" else ["awful", "dull", "hated"])
        rows.append(f"the film was {word},{label}")
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")  # the file the example uploads
    (tmp_path / "example.py").write_text(adapted(code))
    a = stack.stack.addresses
    # Inside an app of its own, as the README's security model says it runs: the
    # same ten lines, with TEXTFT_APP and that app's key.
    app = f"readme-{random.getrandbits(32):08x}"
    with stack.client() as platform:
        key = platform.create_app(app, admin_principal="readme").admin_secret
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    env.update(
        TEXTFT_DATASET_ADDR=a["dataset"],
        TEXTFT_TRAINER_ADDR=a["trainer"],
        TEXTFT_INFERENCE_ADDR=a["inference"],
        TEXTFT_API_KEY=key,
        TEXTFT_APP=app,
        TEXTFT_HOME=str(tmp_path / "home"),
    )
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # on_event printed the run's events (kind, step, loss), then the metrics and the scores.
    events = [line.split() for line in lines if re.fullmatch(r"\d+ \d+ [0-9.e-]+", line)]
    assert len(events) >= 5 and any(float(loss) > 0 for _, _, loss in events)
    assert any("'accuracy':" in line for line in lines)
    assert 'label: "positive"' in result.stdout and 'label: "negative"' in result.stdout
    assert any(k.startswith(f"apps/{app}/models/") and "/adapter/" in k for k in stack.store.list(f"apps/{app}/"))
