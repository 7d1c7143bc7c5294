"""What many test modules share: names of protos and templates, the sample
datasets, and waits on real things (a watch stream, a process, a condition)
with bounded timeouts instead of sleeps."""

from __future__ import annotations

import os
import random
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from textft import Client
from textft.errors import TextftError, from_rpc_error
from textft.v1 import trainer_pb2
from textft_services.common.config import Settings

MV = trainer_pb2.ModelVersion
EV = trainer_pb2.ModelVersionEvent
TINY_BASE_KEY = "base-models/tiny-gpt-neo"
TINY_BASE_URI = "store://" + TINY_BASE_KEY
BASE = {"pretrained_model_name_or_path": TINY_BASE_URI}
CLS_TEMPLATE = "templates/gpt-neo-125m-lora-text-classification"
GEN_TEMPLATE = "templates/gpt-neo-125m-lora-text-generation"
POSITIVE = ["great", "wonderful", "loved", "excellent", "superb", "delightful"]
NEGATIVE = ["terrible", "awful", "hated", "boring", "dreadful", "dull"]


def sentiment_csv(
    n: int = 160,
    seed: int = 0,
    bad_rows: int = 0,
    template: str = "the film was {word} from start to end",
    positive: list[str] = POSITIVE,
    negative: list[str] = NEGATIVE,
) -> bytes:
    """A learnable two-label CSV (text,label): the label follows the word; bad_rows
    rows with empty text (invalid) are appended at the end."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(positive if label == "pos" else negative)
        lines.append(f"{template.format(word=word)},{label}")
    lines += [",pos"] * bad_rows
    return ("\n".join(lines) + "\n").encode()


def upload_sentiment(client: Client, dataset: str, n: int = 60, seed: int = 0, template: str = "") -> str:
    """Creates `dataset` and uploads a small sentiment_csv to it, as the fixtures
    of the trainer's tests need one; returns the version's name."""
    data = sentiment_csv(n, seed, template=template) if template else sentiment_csv(n, seed)
    client.create_dataset(dataset)
    return client.upload_dataset(dataset, data, task="classification", format="csv").name


def until(events: Iterator[EV], predicate: Callable[[EV], bool]) -> list[EV]:
    """Consumes a watch stream up to and including the first event matching predicate."""
    seen = []
    for event in events:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"stream ended first; last events: {seen[-3:]}")


def states(events: list[EV]) -> list[str]:
    """The states a run went through, without the STATE_ prefix."""
    return [MV.State.Name(e.state).removeprefix("STATE_") for e in events if e.kind == EV.KIND_STATE]


def progressed(step: int = 1) -> Callable[[EV], bool]:
    return lambda e: e.kind == EV.KIND_PROGRESS and e.progress.step >= step


def job_pid(env: dict[str, str], model_version: str, timeout: float = 60) -> int:
    """The pid (and process group) of a run's job, from the file the local
    launcher writes in the job's directory."""
    path = Settings.from_env(env).trainer_workdir / model_version.removeprefix("models/").replace("/versions/", "/")
    pid_file = Path(path) / "job.pid"
    wait_for(pid_file.exists, timeout, f"{pid_file} to appear")
    return int(pid_file.read_text())


def wait_exit(pid: int, timeout: float) -> bool:
    """Event-driven wait for a process that is not our child (a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def wait_for(condition: Callable[[], object], timeout: float, what: str = "the condition") -> None:
    """Polls condition until it holds, for state that gives no event to wait on
    (a file, an object in the store); fails after timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.2, delay * 2)


def error_of(call: Callable[[], object]) -> TextftError:
    """Runs call() and returns the TextftError it raises (raw stub errors converted)."""
    try:
        call()
    except TextftError as e:
        return e
    except grpc.RpcError as e:
        return from_rpc_error(e)
    raise AssertionError("the call succeeded")


def assert_numerically_close(actual: object, expected: object, ops: int = 256) -> None:
    """actual equals expected up to floating-point rounding. Other summation
    orders (a batch vs one row, another CPU's kernels) move a result by a few
    eps of its dtype per rounding step, relative to the values' magnitude; ops
    bounds the steps that feed each value. A fixed `abs=1e-5` is wrong both for
    large float32 logits and for bf16."""
    import torch

    expected_t = torch.as_tensor(expected)
    dtype = expected_t.dtype if expected_t.is_floating_point() else torch.float32
    expected_t = expected_t.to(dtype)
    actual_t = torch.as_tensor(actual).to(dtype=dtype, device=expected_t.device)
    tolerance = torch.finfo(dtype).eps * ops
    scale = max(1.0, float(expected_t.abs().max())) if expected_t.numel() else 1.0
    torch.testing.assert_close(actual_t, expected_t, rtol=tolerance, atol=tolerance * scale)


def assert_same_greedy(got: object, want: object, ops: int = 256) -> None:
    """Two greedy generate(..., output_scores=True, return_dict_in_generate=True)
    results agree: each step's scores are numerically close, and the tokens are
    equal, except after a step whose best two scores were a tie within rounding,
    where either token is a right answer (rows diverge from there on)."""
    import torch

    prompt = want.sequences.shape[1] - len(want.scores)  # type: ignore[attr-defined]
    for row in range(want.sequences.shape[0]):  # type: ignore[attr-defined]
        for step, (got_scores, want_scores) in enumerate(zip(got.scores, want.scores, strict=True)):  # type: ignore[attr-defined]
            expected = want_scores[row].float()
            finite = torch.isfinite(expected)
            assert_numerically_close(got_scores[row].float()[finite], expected[finite], ops)
            got_token = int(got.sequences[row, prompt + step])  # type: ignore[attr-defined]
            want_token = int(want.sequences[row, prompt + step])  # type: ignore[attr-defined]
            if got_token != want_token:
                top = torch.topk(expected[finite], 2).values
                gap = float(top[0] - top[1])
                tie = torch.finfo(torch.float32).eps * ops * max(1.0, float(top.abs().max()))
                assert gap <= tie, f"row {row} step {step}: tokens {got_token} != {want_token} with a gap of {gap:g}"
                break
