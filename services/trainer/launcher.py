"""How a training job is started: one small interface. The embedded default
runs the job as a local child process in its own process group, so a crash or
an out-of-memory kill fails the job, not the service, and cancel is a signal.
A Kubernetes launcher runs the same entry point (`textft-train-job`) as a Job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path


class JobHandle(ABC):
    @abstractmethod
    def lines(self) -> Iterator[str]:
        """The job's stdout, line by line, until it ends."""

    @abstractmethod
    def wait(self) -> int:
        """Exit code; negative for a signal (as subprocess reports it)."""

    @abstractmethod
    def terminate(self) -> None:
        """Asks the job to stop (SIGTERM), then kills it if it lingers."""


class Launcher(ABC):
    @abstractmethod
    def start(self, job_key: str, workdir: Path, env: dict[str, str]) -> JobHandle: ...


class LocalProcessHandle(JobHandle):
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def wait(self) -> int:
        return self.proc.wait()

    def terminate(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalProcessLauncher(Launcher):
    """Runs `python -m textft_services.trainer.worker` as a child process."""

    def start(self, job_key: str, workdir: Path, env: dict[str, str]) -> JobHandle:
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "textft_services.trainer.worker", "--job", job_key, "--workdir", str(workdir)]
        stderr = open(workdir / "job.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                start_new_session=True,  # its own process group: cancel reaches DataLoader workers too
            )
        finally:
            stderr.close()
        return LocalProcessHandle(proc)
