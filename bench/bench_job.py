"""A training job's start-up time and peak memory as the dataset grows.

    python -m bench job                                  # 20k, 200k and 1.3M rows, this checkout
    python -m bench job --rows=20000,200000              # other sizes (the harness needs the = form)
    python -m bench job --side=main=/path/to/checkout    # also another checkout, rounds interleaved

For each size a CSV of ~200-character rows (two labels, a split column that
marks 256 rows as eval, so evaluation stays small and the data path dominates)
is uploaded through the real dataset service; then CreateModelVersion starts a
5-step LoRA classification job on a tiny GPT-Neo through the real trainer
service (the local launcher: the job is a child process). Measured:
  - first step: seconds from the CreateModelVersion call to the first progress
    event with step >= 1 (WatchModelVersion);
  - job peak RSS: VmHWM of the job process (/proc/<pid>/status, polled every
    0.1 s while it runs: the high-water mark never goes down).
Goals (issue 14): peak RSS < 1.5 GiB at every size; first step <= 15 s at 1.3M rows.

A side is a checkout whose services/ is run in place of this one's (its
services are started with that checkout's textft_services on PYTHONPATH; the
SDK stays this one's). --skip=main:1300000 leaves out a run that cannot fit.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GOAL_RSS_MIB = 1.5 * 1024
GOAL_FIRST_STEP_S = 15.0
WORDS = ["the", "a", "film", "plot", "actor", "scene", "story", "ending", "music", "camera", "light", "cast"]
POS, NEG = ["great", "wonderful", "superb", "moving"], ["boring", "awful", "dull", "clumsy"]
EVAL_ROWS = 256
ROW_CHARS = 200


def write_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        out.write("text,label,split\n")
        for i in range(n):
            label = rng.choice(("pos", "neg"))
            words = [rng.choice(WORDS) for _ in range(ROW_CHARS // 5)]
            words[rng.randrange(len(words))] = rng.choice(POS if label == "pos" else NEG)
            text = " ".join(words)[:ROW_CHARS]
            out.write(f"{text},{label},{'eval' if i < EVAL_ROWS else 'train'}\n")


def _children(pid: int) -> list[int]:
    """Children of every thread of pid (a job is started by a launcher thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class JobMemory:
    """Polls the trainer's child processes (its jobs) for their VmHWM."""

    def __init__(self, trainer_pid: int) -> None:
        self.trainer_pid = trainer_pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            pending = _children(self.trainer_pid)
            while pending:
                pid = pending.pop()
                self.peak_kib = max(self.peak_kib, _hwm_kib(pid))
                pending.extend(_children(pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _side_env(home: Path, checkout: Path | None, work: Path) -> dict[str, str]:
    from textft_services.stack import local_env

    env = local_env(home, {**os.environ, "TEXTFT_API_KEY": "tft_bench_" + secrets.token_hex(16)})
    env.update(TEXTFT_AUTH="on", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if checkout is not None:  # that checkout's services, importable as textft_services
        shim = work / f"shim-{secrets.token_hex(4)}"
        shim.mkdir()
        (shim / "textft_services").symlink_to(checkout.resolve() / "services")
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_once(side: str, checkout: Path | None, csv: Path, model_dir: Path, work: Path) -> dict[str, Any]:
    from textft import Client
    from textft_services.common.config import Settings
    from textft_services.common.store import open_store
    from textft_services.stack import start_service

    home = work / f"home-{side}-{secrets.token_hex(4)}"
    env = _side_env(home, checkout, work)
    open_store(Settings.from_env(env).store).upload_dir(model_dir, "base-models/bench-gpt-neo")
    with open(work / f"services-{side}.log", "a") as log:
        dataset = start_service("dataset", env, log=log)
        env["TEXTFT_DATASET_ADDR"] = dataset.address
        trainer = start_service("trainer", env, log=log)
        client = Client(dataset.address, trainer.address, api_key=env["TEXTFT_API_KEY"])
        try:
            client.create_dataset("bench")
            uploaded = time.perf_counter()
            version = client.upload_dataset("bench", csv, task="classification", format="csv", timeout=3600)
            upload_s = time.perf_counter() - uploaded
            client.create_model("bench", task="classification")
            memory = JobMemory(trainer.proc.pid)
            started = time.perf_counter()
            run = client.train(
                "bench",
                version.name,
                "templates/gpt-neo-125m-lora-text-classification",
                model_config={"pretrained_model_name_or_path": "store://base-models/bench-gpt-neo"},
                trainer_config={
                    "max_steps": 5,
                    "per_device_train_batch_size": 16,
                    "logging_steps": 1,
                    "save_strategy": "no",
                    "eval_strategy": "no",
                },
            )
            first_step = None
            for event in client.watch(run.name, timeout=3600):
                if first_step is None and event.kind == event.KIND_PROGRESS and event.progress.step >= 1:
                    first_step = time.perf_counter() - started
            done = client.get_model_version(run.name)
            total = time.perf_counter() - started
            peak = memory.stop()
            if done.state != done.STATE_READY:
                raise RuntimeError(f"{side}: {run.name} ended {done.state}: {done.failure.message}")
            return {
                "rows": version.stats.valid_row_count,
                "csv_mib": csv.stat().st_size / 2**20,
                "upload_seconds": upload_s,
                "first_step_seconds": first_step,
                "ready_seconds": total,
                "job_peak_rss_mib": peak,
            }
        finally:
            client.close()
            trainer.stop()
            dataset.stop()


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench job", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,200000,1300000", help="comma-separated sizes")
    parser.add_argument("--side", action="append", default=[], help="NAME=CHECKOUT to measure beside this one")
    parser.add_argument("--skip", action="append", default=[], help="NAME:ROWS runs to leave out")
    args = parser.parse_args(argv)
    from textft_services.common.tinymodels import build_tiny_gpt_neo

    sizes = [int(n) for n in args.rows.split(",")]
    sides: list[tuple[str, Path | None]] = [("this", None)]
    sides += [(name, Path(path)) for name, path in (s.split("=", 1) for s in args.side)]
    skip = {(name, int(rows)) for name, rows in (s.split(":", 1) for s in args.skip)}
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    model_dir = build_tiny_gpt_neo(work / "model", corpus=WORDS + POS + NEG, max_position_embeddings=512)
    figures: dict[str, Any] = {"sizes": sizes, "runs": {}}
    print(
        f"{'side':<8} {'rows':>9} {'CSV MiB':>8} {'upload s':>9} {'first step s':>13} {'READY s':>8} {'peak RSS MiB':>13}"
    )
    for index, rows in enumerate(sizes):
        csv = work / f"rows-{rows}.csv"
        write_csv(csv, rows)
        order = sides if index % 2 == 0 else sides[::-1]
        for name, checkout in order:
            if (name, rows) in skip:
                print(f"{name:<8} {rows:>9} {'skipped':>8}")
                continue
            result = run_once(name, checkout, csv, model_dir, work)
            figures["runs"].setdefault(name, []).append(result)
            print(
                f"{name:<8} {rows:>9} {result['csv_mib']:>8.1f} {result['upload_seconds']:>9.1f} "
                f"{result['first_step_seconds']:>13.1f} {result['ready_seconds']:>8.1f} "
                f"{result['job_peak_rss_mib']:>13.0f}",
                flush=True,
            )
        csv.unlink()
    figures["goals"] = {"job_peak_rss_mib": GOAL_RSS_MIB, "first_step_seconds_at_largest": GOAL_FIRST_STEP_S}
    return figures
