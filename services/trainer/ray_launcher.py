"""Training and evaluation jobs as tasks on a Ray cluster (TEXTFT_LAUNCHER=ray).

A job of one worker is one Ray task that reserves the resources a job asks for
(TEXTFT_RAY_NUM_GPUS, TEXTFT_RAY_NUM_CPUS) and runs the same worker entry point
as the local launcher, as a child process of the Ray worker: stdin a pipe (the
lifeline: the job exits when the Ray worker dies), stdout read line by line
and put in a mailbox (one small async actor per trainer) that the trainer's
JobHandle reads. The job
reads and writes only the store, so nothing of the trainer's filesystem needs
to be shared: its scratch directory is a temporary one on the node.

A Ray worker or node lost mid-job fails the task with a system error, which
Ray retries (TEXTFT_RAY_MAX_RETRIES); the rerun resumes from the job's last
checkpoint in the store, and its events go to the same mailbox, so the run's
watchers see it go on. Cancel is ray.cancel: the task stops its job (SIGTERM
to the job's process group, SIGKILL after a grace) and, if the task itself
lingers, a forced cancel kills its worker process, and the lifeline the job.

A job of several workers (TEXTFT_TRAINER_NPROC=N) runs through Ray Train: the
task is a driver that fits a TorchTrainer (ScalingConfig(num_workers=N), each
worker reserving TEXTFT_RAY_NUM_CPUS and TEXTFT_RAY_NUM_GPUS, on any nodes);
every worker runs the job's entry point in its own process, inside the torch
process group Ray Train set up (gloo on CPU, NCCL on GPUs), where HF Trainer's
DDP uses it. Rank 0 puts the job's events in the mailbox. A lost worker makes
Ray Train restart the group (TEXTFT_RAY_MAX_RETRIES), which resumes from the
job's last checkpoint; cancel stops the fit, and a forced cancel ends the
driver task with the workers it owns.

Ray is an optional dependency (pip install 'textft-services[ray]'), imported
only here."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2

from .events import encode
from .launcher import JobHandle, Launcher, worker_command

try:
    import ray
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "TEXTFT_LAUNCHER=ray needs Ray on the trainer (and the cluster's nodes): pip install 'textft-services[ray]'"
    ) from exc

log = logging.getLogger("textft.trainer.ray")

# A line the task puts in the mailbox when an attempt starts (never a job's own
# output: those are the job's stdout lines, and a job event line starts
# otherwise). The handle turns it into a log event.
_STARTED = "\x00textft-ray-started "
_WORKDIR_PREFIX = "textft-job-"
_OWNER = "ray-worker.pid"  # in a job's scratch directory: the Ray worker it belongs to
# Characters of a failed job's stderr that reach the run's log.
_STDERR_TAIL = 4000
# What Ray Train sets on each of its workers (the process group's rendezvous,
# the worker's place in it, its devices): the trainer's environment, which the
# job gets too, must not override them.
_RAY_TRAIN_OWNED = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "ACCELERATE_TORCH_DEVICE",
    }
)


class _Mailboxes:
    """One actor per trainer (async: its calls wait without blocking each
    other) that holds each running job's undelivered stdout lines, so a job
    costs one Ray worker process (its task), not two."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[str]] = {}
        self.ready: dict[str, asyncio.Event] = {}

    async def put(self, key: str, lines: list[str]) -> None:
        self.boxes.setdefault(key, []).extend(lines)
        self.ready.setdefault(key, asyncio.Event()).set()

    async def take(self, key: str, timeout: float) -> list[str]:
        """The lines waiting for key, after waiting up to timeout for one."""
        ready = self.ready.setdefault(key, asyncio.Event())
        if not self.boxes.get(key) and timeout > 0:
            try:
                await asyncio.wait_for(ready.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        ready.clear()
        return self.boxes.pop(key, [])

    async def close(self, key: str) -> None:
        self.boxes.pop(key, None)
        self.ready.pop(key, None)


@dataclass(frozen=True)
class Channel:
    """A job's lines in the mailboxes actor: the task puts, the handle takes."""

    mailboxes: Any
    key: str

    def put(self, line: str) -> None:
        ray.get(self.mailboxes.put.remote(self.key, [line]))

    def take(self, timeout: float) -> list[str]:
        return list(ray.get(self.mailboxes.take.remote(self.key, timeout)))

    def close(self) -> None:
        self.mailboxes.close.remote(self.key)


def _run_job(lines: Channel, job_key: str, env: dict[str, str], kill_after: float) -> int:
    """The Ray task: runs the job on this node until it exits; returns its exit
    code (negative for a signal)."""
    context = ray.get_runtime_context()
    _sweep_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
    (workdir / _OWNER).write_text(str(os.getpid()))
    env = dict(env)
    # The GPUs Ray gave this task, and no others (none when it reserved none):
    # the trainer's own CUDA_VISIBLE_DEVICES means nothing on this node.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in ray.get_gpu_ids())
    # A cancel is seen below (is_canceled, which answers on the task's own
    # thread only), not as the KeyboardInterrupt Ray raises on the main thread,
    # which could land anywhere in the cleanup.
    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    stderr = open(workdir / "job.log", "wb+")  # noqa: SIM115 - closed in finally
    try:
        proc = subprocess.Popen(
            worker_command(sys.executable, job_key, workdir),
            env=env,
            stdin=subprocess.PIPE,  # the lifeline: the job exits when this process dies
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: a stop reaches DataLoader workers too
        )
        started = {
            "node": ray.util.get_node_ip_address(),
            "pid": proc.pid,
            "worker_pid": os.getpid(),
            "task": context.get_task_id(),
            "workdir": str(workdir),
        }
        lines.put(_STARTED + json.dumps(started))
        pump = threading.Thread(target=_pump, args=(proc, lines), name="job-stdout", daemon=True)
        pump.start()
        code = _wait_or_stop(proc, context, kill_after)
        # The job's last lines are in the mailbox before the task returns (the
        # handle reads until the task is done, then what is left).
        pump.join(kill_after)
        if code != 0:
            stderr.seek(max(0, stderr.tell() - _STDERR_TAIL))
            tail = stderr.read().decode(errors="replace").strip()
            if tail:
                lines.put(encode(job_pb2.JobEvent(log=f"the job's stderr ended with:\n{tail}")))
        return code
    finally:
        stderr.close()
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        shutil.rmtree(workdir, ignore_errors=True)


class _ChannelStream:
    """A text stream into a job's mailbox: what rank 0's Emitter writes (one event a write)."""

    def __init__(self, lines: Channel) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.put(text)
        return len(text)

    def flush(self) -> None:
        pass


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the job's entry point in this process, in the torch
    process group Ray Train set up. Rank 0 puts the job's exit code in its
    own box (metrics reported without a checkpoint are not kept by Ray Train)."""
    from ray import train

    from .job.main import main as job_main

    os.environ.update({k: v for k, v in config["env"].items() if k not in _RAY_TRAIN_OWNED})
    context = train.get_context()
    rank = context.get_world_rank()
    lines: Channel = config["lines"]
    _sweep_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
    (workdir / _OWNER).write_text(str(os.getpid()))
    if rank == 0:
        started = {
            "node": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "worker_pid": os.getpid(),
            "task": ray.get_runtime_context().get_task_id(),
            "workdir": str(workdir),
            "world_size": context.get_world_size(),
        }
        lines.put(_STARTED + json.dumps(started))
    cwd = os.getcwd()
    try:
        code = job_main(
            ["--job", config["job"], "--workdir", str(workdir)], _ChannelStream(lines) if rank == 0 else None
        )
    finally:
        os.chdir(cwd)  # the job works in its directory, removed here
        shutil.rmtree(workdir, ignore_errors=True)
    if code != 0 and context.get_world_size() > 1:
        # The other ranks may wait in a collective for this one: leaving the
        # process group makes theirs fail instead of hanging.
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        config["exit"].put(str(code))


def _run_distributed(
    lines: Channel, job_key: str, env: dict[str, str], workers: int, num_cpus: float, num_gpus: float, retries: int
) -> int:
    """The Ray task of a job of several workers: the driver of a Ray Train
    TorchTrainer fit; returns rank 0's exit code (negative for a signal)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))  # Ray Train's run records; the job's are in the store
    exit_box = Channel(lines.mailboxes, lines.key + ":exit")
    resources = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": job_key, "env": env, "lines": lines, "exit": exit_box},
        torch_config=TorchConfig(backend="nccl" if num_gpus else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=num_gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"textft-{uuid.uuid4().hex[:12]}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=retries),
        ),
    )
    try:
        trainer.fit()
        codes = exit_box.take(0.0)  # one per attempt of the group: the last one's counts
        return int(codes[-1]) if codes else 1
    except KeyboardInterrupt:  # ray.cancel: the fit is stopped, and its workers with it
        return -signal.SIGTERM
    except Exception as exc:  # the group failed past its retries
        lines.put(encode(job_pb2.JobEvent(log=f"Ray Train failed: {str(exc).splitlines()[0][:500]}")))
        return 1
    finally:
        exit_box.close()
        shutil.rmtree(storage, ignore_errors=True)


def _sweep_workdirs() -> None:
    """Removes the scratch directories of earlier tasks on this node whose Ray
    worker died (a killed worker cannot clean up after itself)."""
    for path in Path(tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*"):
        try:
            owner = int((path / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _pump(proc: subprocess.Popen[str], lines: Channel) -> None:
    """Puts the job's stdout lines in its mailbox. If the mailbox is gone (the
    trainer went away), the rest is read and dropped: a full pipe would block
    the job, and the lifeline or a cancel ends it."""
    assert proc.stdout is not None
    delivering = True
    for line in proc.stdout:
        if delivering:
            try:
                lines.put(line)
            except Exception:
                delivering = False


def _wait_or_stop(proc: subprocess.Popen[str], context: Any, kill_after: float) -> int:
    """Waits for the job; when the task is cancelled, stops it: SIGTERM to its
    process group, SIGKILL if it lingers."""
    while True:
        try:
            return proc.wait(0.25)
        except subprocess.TimeoutExpired:
            pass
        if context.is_canceled():
            _killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class RayJobHandle(JobHandle):
    def __init__(self, ref: Any, lines: Channel, max_retries: int, kill_after: float) -> None:
        self.ref = ref
        self.channel = lines
        self.max_retries = max_retries
        self.kill_after = kill_after
        self.task_id = ref.task_id().hex()
        self.attempts = 0
        self.where = ""
        self._cancelled = False
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"ray task {self.task_id} " + (self.where or "(waiting for resources)")

    def _done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def lines(self) -> Iterator[str]:
        while True:
            # Done is checked before the read: every line of an attempt is put
            # before its task returns, so one more read after done has them all.
            done = self._done()
            try:
                batch = self.channel.take(timeout=0.0 if done else 1.0)
            except ray.exceptions.RayError as exc:  # the mailboxes' actor is gone: no more lines
                log.warning("ray task %s: its lines are lost (%s)", self.task_id, exc)
                break
            for line in batch:
                yield self._started(json.loads(line[len(_STARTED) :])) if line.startswith(_STARTED) else line
            if done and not batch:
                break
        failure = self._failure()
        if failure is not None:
            yield encode(job_pb2.JobEvent(failure=failure))

    def _started(self, started: dict[str, Any]) -> str:
        self.attempts += 1
        self.where = (
            f"on node {started['node']} (job pid {started['pid']}, ray worker pid {started['worker_pid']}, "
            f"workdir {started['workdir']})"
        )
        message = f"ray task {self.task_id} attempt {self.attempts} {self.where}"
        if started.get("world_size"):
            message += f", Ray Train: {started['world_size']} workers"
        if self.attempts > 1:
            message += ": Ray reran the job after its worker was lost; it resumes from its last checkpoint"
        return encode(job_pb2.JobEvent(log=message))

    def _failure(self) -> common_pb2.Failure | None:
        """Why the task failed when Ray, not the job, ended it (the job reports its own failures)."""
        try:
            ray.get(self.ref)
            return None
        except ray.exceptions.TaskCancelledError:
            return None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            if self._cancelled:
                return None
            tries = self.max_retries + 1
            return common_pb2.Failure(
                reason="MODEL_TRAINING_CRASHED",
                message=f"the Ray worker running the job was lost {tries} time(s) "
                f"(TEXTFT_RAY_MAX_RETRIES={self.max_retries}): {type(exc).__name__}",
            )
        except ray.exceptions.RayError as exc:
            return common_pb2.Failure(
                reason="MODEL_TRAINING_CRASHED", message=f"the Ray task failed: {str(exc).splitlines()[0][:500]}"
            )

    def wait(self) -> int:
        try:
            return int(ray.get(self.ref))
        except ray.exceptions.TaskCancelledError:
            return -signal.SIGTERM
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
            return -signal.SIGKILL
        except ray.exceptions.RayError:
            return 1
        finally:
            self.channel.close()

    def terminate(self) -> None:
        with self._lock:
            if self._cancelled or self._done():
                return
            self._cancelled = True
        # Not recursive: that would also cancel the task's puts of the job's last lines.
        ray.cancel(self.ref, recursive=False)  # the task stops its job (see _stop_when_cancelled)
        # A task that lingers past the job's own grace is killed with its worker
        # process; the job then exits on its lifeline.
        timer = threading.Timer(self.kill_after + 5.0, self._force)
        timer.daemon = True
        timer.start()

    def _force(self) -> None:
        if not self._done():
            ray.cancel(self.ref, force=True, recursive=False)


class RayLauncher(Launcher):
    """Runs each job as a Ray task on the cluster at `address` (see the module doc)."""

    def __init__(
        self,
        address: str = "auto",
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        max_retries: int = 2,
        nproc: int = 1,
        kill_after: float = 10.0,
    ) -> None:
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.nproc = max(1, nproc)
        self.kill_after = kill_after
        if not ray.is_initialized():
            # log_to_driver off: a job's stderr stays on its node (a failed job's
            # tail reaches the run's log), not in the trainer's log.
            try:
                ray.init(address=address, namespace="textft", log_to_driver=False)
            except ConnectionError as exc:
                raise ValueError(f"TEXTFT_RAY_ADDRESS={address}: no Ray cluster answers there ({exc})") from None
        self._task = ray.remote(_run_job)
        self._distributed = ray.remote(_run_distributed)
        # The mailboxes live on the trainer's node where it is part of the
        # cluster (soft: anywhere otherwise), so losing a worker node loses no
        # lines; they end with this trainer (not detached).
        options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000}
        node_id = ray.get_runtime_context().get_node_id()
        if node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        self._mailboxes = ray.remote(_Mailboxes).options(**options).remote()
        log.info(
            "jobs run on the Ray cluster at %s (%s GPU, %s CPU per worker, %d worker(s) per job, %d retries)",
            address,
            num_gpus,
            num_cpus,
            self.nproc,
            max_retries,
        )

    def start(self, job_key: str, workdir: Path, env: dict[str, str], distributed: bool = True) -> JobHandle:
        # workdir is the trainer's; the job gets a temporary one on its node.
        lines = Channel(self._mailboxes, uuid.uuid4().hex)
        name = f"textft-job:{job_key.removesuffix('/job.json')}"
        if distributed and self.nproc > 1:
            # The driver of the Ray Train fit reserves nothing: its workers do.
            # Ray Train retries a lost worker itself; a lost driver is retried by Ray.
            ref = self._distributed.options(num_cpus=0, max_retries=self.max_retries, name=name).remote(
                lines, job_key, env, self.nproc, self.num_cpus, self.num_gpus, self.max_retries
            )
        else:
            ref = self._task.options(
                num_cpus=self.num_cpus,
                num_gpus=self.num_gpus,
                max_retries=self.max_retries,
                retry_exceptions=False,  # only a lost worker or node is retried; the job reports its own failures
                name=name,
            ).remote(lines, job_key, env, self.kill_after)
        return RayJobHandle(ref, lines, self.max_retries, self.kill_after)

    def close(self) -> None:
        ray.shutdown()
