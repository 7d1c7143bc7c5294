"""The main job (`make demo`) runs as a newcomer would run it: a real stack,
real fine-tunes, real predictions, all offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "TEXTFT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "textft_services.demo", "--home", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("[READY]") == 2
    assert "row 101: EMPTY_TEXT" in out and "2 invalid rows skipped" in out
    # The classifier learned: each demo review goes to the right label.
    lines = [line for line in out.splitlines() if "->" in line and ("positive" in line or "negative" in line)]
    assert len(lines) == 4
    expected = ["positive", "negative", "positive", "negative"]
    assert [line.split("->")[1].split()[0] for line in lines] == expected
    assert "demo finished" in out
