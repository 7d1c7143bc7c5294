"""The local stack: the store plus the three services, each its own process.

Used by `textft up`, by `make demo`, and by the integration tests, so all of
them exercise the same start-up path. Services report their port on a ready
line (bootstrap.READY_PREFIX), so port 0 works and nothing polls or sleeps.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .common.bootstrap import READY_PREFIX
from .common.config import Settings

SERVICES = ("dataset", "trainer", "inference")
DEFAULT_PORTS = {"dataset": 50051, "trainer": 50052, "inference": 50053}
ADDR_ENV = {"dataset": "TEXTFT_DATASET_ADDR", "trainer": "TEXTFT_TRAINER_ADDR", "inference": "TEXTFT_INFERENCE_ADDR"}


class StackError(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[str]
    port: int
    address: str

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _pump(stream: IO[str], ready: queue.Queue[str], sink: IO[str] | None) -> None:
    """Forwards a child's stdout, handing the ready line to the launcher."""
    for line in stream:
        if line.startswith(READY_PREFIX):
            ready.put(line[len(READY_PREFIX) :])
        elif sink is not None:
            sink.write(line)
            sink.flush()
    ready.put("")  # EOF: the child exited


def start_service(
    name: str,
    env: dict[str, str],
    port: int = 0,
    host: str = "127.0.0.1",
    timeout: float = 180,
    log: IO[str] | None = None,
) -> ServiceProcess:
    """Starts `textft_services.<name>.server` and waits for its ready line."""
    cmd = [sys.executable, "-m", f"textft_services.{name}.server", "--port", str(port), "--host", host]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=log if log is not None else None, text=True, bufsize=1
    )
    ready: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, ready, log or sys.stdout), daemon=True).start()
    try:
        line = ready.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise StackError(f"{name} service did not become ready within {timeout:.0f}s") from None
    if not line:
        code = proc.wait()
        raise StackError(f"{name} service exited with code {code} before it was ready (see its log)")
    info = json.loads(line)
    return ServiceProcess(name, proc, int(info["port"]), f"{host}:{info['port']}")


@dataclass
class Stack:
    env: dict[str, str]
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: svc.address for name, svc in self.services.items()}

    def stop(self) -> None:
        # Reverse order: inference and trainer depend on the dataset service.
        for name in reversed(list(self.services)):
            self.services[name].stop()


def start_stack(
    env: dict[str, str],
    ports: dict[str, int] | None = None,
    host: str = "127.0.0.1",
    log: IO[str] | None = None,
) -> Stack:
    """Starts dataset, trainer and inference in dependency order. Ports are
    fixed up front (0 picks a free one), so every service knows every other's
    address: the dataset service asks the trainer before deleting a dataset."""
    ports = {name: (ports or {}).get(name, 0) or _free_port() for name in SERVICES}
    stack = Stack(dict(env))
    for name in SERVICES:
        stack.env[ADDR_ENV[name]] = f"{host}:{ports[name]}"
    try:
        for name in SERVICES:
            svc = start_service(name, stack.env, ports.get(name, 0), host, log=log)
            stack.services[name] = svc
            stack.env[ADDR_ENV[name]] = svc.address
    except BaseException:
        stack.stop()
        raise
    return stack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a local stack: store (MinIO if configured, else a local
    directory) and an API key (TEXTFT_API_KEY, else one made and saved in
    $TEXTFT_HOME/api_key with mode 600, which the SDK reads)."""
    env = dict(os.environ if base is None else base)
    env["TEXTFT_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    key = env.get("TEXTFT_API_KEY", "")
    key_file = home / "api_key"
    if not key:
        if key_file.exists():
            key = key_file.read_text().strip()
        else:
            key = "tft_" + secrets.token_urlsafe(24)
            key_file.touch(mode=0o600)
            key_file.write_text(key + "\n")
    env["TEXTFT_API_KEY"] = key
    env.setdefault("TEXTFT_API_KEYS", key)
    if not env.get("MINIO_ENDPOINT"):
        env["TEXTFT_STORE"] = "local"
    return env


def start_minio(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """Starts a MinIO server from the `minio` binary on PATH, if there is one."""
    binary = shutil.which("minio")
    if binary is None or env.get("MINIO_ENDPOINT"):
        return None
    port, console = _free_port(), _free_port()
    env.setdefault("MINIO_ROOT_USER", "textft")
    env.setdefault("MINIO_ROOT_PASSWORD", secrets.token_urlsafe(18))
    proc = subprocess.Popen(
        [
            binary,
            "server",
            str(home / "minio"),
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{console}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env.update(
        MINIO_ENDPOINT=f"127.0.0.1:{port}",
        MINIO_ACCESS_KEY=env["MINIO_ROOT_USER"],
        MINIO_SECRET_KEY=env["MINIO_ROOT_PASSWORD"],
        TEXTFT_STORE="s3",
    )
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textft up", description="Start the store and the three textft services.")
    parser.add_argument("--home", default=str(Settings.from_env().home), help="state directory (TEXTFT_HOME)")
    parser.add_argument("--host", default="127.0.0.1")
    for name in SERVICES:
        parser.add_argument(f"--{name}-port", type=int, default=DEFAULT_PORTS[name])
    args = parser.parse_args(argv)
    home = Path(args.home).expanduser().resolve()
    env = local_env(home)
    minio = start_minio(home, env)
    if minio is not None:
        from .common.store import open_store

        open_store(Settings.from_env(env).store)  # waits for MinIO: the client retries the bucket check
    ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
    stack = start_stack(env, ports, args.host)
    # Handlers before the "up" lines: a Ctrl-C right after them must stop the
    # services, not raise KeyboardInterrupt past them (which orphaned them).
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    where = env["MINIO_ENDPOINT"] if env.get("TEXTFT_STORE") == "s3" else str(home / "store")
    print(f"textft is up (store: {env.get('TEXTFT_STORE')} {where})")
    for name, address in stack.addresses.items():
        print(f"  {name:<9} {address}")
    print(f"  API key in {home / 'api_key'} (or TEXTFT_API_KEY); Ctrl-C stops everything", flush=True)
    for svc in stack.services.values():  # one service dying takes the stack down, loudly
        threading.Thread(target=lambda s=svc: (s.proc.wait(), stopping.set()), daemon=True).start()
    stopping.wait()
    print("stopping textft ...", flush=True)
    stack.stop()
    if minio is not None:
        minio.terminate()
        minio.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
