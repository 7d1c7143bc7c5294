"""How a training job is started: one small interface. The embedded default
runs the job as a local child process in its own process group, so a crash or
an out-of-memory kill fails the job, not the service, and cancel is a signal.
With nproc > 1 the child is `torchrun --nproc_per_node=N` (DDP; HF Trainer
sets it up from torchrun's environment). A Kubernetes launcher runs the same
entry point (`textft-train-job`) as a Job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

WORKER_MODULE = "textft_services.trainer.job"


def worker_command(python: str, job_key: str, workdir: Path, nproc: int = 1) -> list[str]:
    """The job's command line: the worker entry point, under torchrun when nproc > 1."""
    worker = ["-m", WORKER_MODULE, "--job", job_key, "--workdir", str(workdir), "--exit-on-stdin-eof"]
    if nproc > 1:
        # --standalone: a local rendezvous on a free port, so jobs never collide.
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *worker]
    return [python, *worker]


class JobHandle(ABC):
    @abstractmethod
    def lines(self) -> Iterator[str]:
        """The job's stdout, line by line, until it ends."""

    @abstractmethod
    def wait(self) -> int:
        """Exit code; negative for a signal (as subprocess reports it)."""

    @abstractmethod
    def terminate(self) -> None:
        """Asks the job to stop (SIGTERM) and returns at once; the job is killed
        if it lingers. Safe to call on a job that has ended."""

    def describe(self) -> str:
        """Where the job runs, for the run's log (a pid, a Kubernetes Job name)."""
        return ""


class Launcher(ABC):
    @abstractmethod
    def start(self, job_key: str, workdir: Path, env: dict[str, str], distributed: bool = True) -> JobHandle:
        """Starts the worker entry point for the TrainingJobSpec at job_key;
        distributed=False runs it as one process (evaluations)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases what the launcher holds (a cluster connection) at trainer shutdown."""


class LocalProcessHandle(JobHandle):
    def __init__(self, proc: subprocess.Popen[str], kill_after: float = 10.0, torchrun: bool = False) -> None:
        self.proc = proc
        self.kill_after = kill_after
        self.torchrun = torchrun

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        what = "torchrun" if self.torchrun else "local process"
        return f"{what} pid {self.proc.pid} (process group {self.proc.pid})"

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def wait(self) -> int:
        code = self.proc.wait()
        # The job's lifeline: workers exit on stdin EOF. Closing it here also
        # ends torchrun's ranks, which run in sessions of their own, if torchrun
        # itself was killed before it could stop them.
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        return code

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        if self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        timer = threading.Timer(self.kill_after, self._signal, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()


class LocalProcessLauncher(Launcher):
    """Runs `python -m textft_services.trainer.job` as a child process, or
    `python -m torch.distributed.run --nproc_per_node=N` around it."""

    def __init__(self, nproc: int = 1) -> None:
        self.nproc = max(1, nproc)

    def command(self, job_key: str, workdir: Path, distributed: bool = True) -> list[str]:
        return worker_command(sys.executable, job_key, workdir, self.nproc if distributed else 1)

    def start(self, job_key: str, workdir: Path, env: dict[str, str], distributed: bool = True) -> JobHandle:
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(job_key, workdir, distributed)
        stderr = open(workdir / "job.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.PIPE,  # the lifeline (see LocalProcessHandle.wait)
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                start_new_session=True,  # its own process group: cancel reaches DataLoader workers too
            )
        finally:
            stderr.close()
        # Where operators (and tests) find the job's process group without parsing logs.
        (workdir / "job.pid").write_text(f"{proc.pid}\n")
        return LocalProcessHandle(proc, torchrun=cmd[2] == "torch.distributed.run")
