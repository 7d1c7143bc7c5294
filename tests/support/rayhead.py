"""A real local Ray head for tests and benchmarks: `ray start --head --block`
on loopback with 2 CPUs, in a process group of its own that stop() ends."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Ray picks the machine's network address unless told it is a single machine
# (the setting Ray uses on laptops): everything stays on 127.0.0.1.
RAY_LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # The head's Ray Client proxy gives each client a server process of its own and
    # waits 30 s for it to answer; on 2 busy cores its start (a Python process
    # importing Ray) took longer, and the trainer's connect failed.
    "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayHead:
    address: str  # the head's GCS, host:port
    client_address: str  # its Ray Client server, ray://host:port
    proc: subprocess.Popen[str]
    started_in: float


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """The temp dir is short: Ray's unix sockets live under it."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port, client_port = _free_port(), _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={_free_port()}",  # not the fixed default: heads may run side by side
        f"--num-cpus={num_cpus}",
        "--include-dashboard=false",
        "--object-store-memory=100000000",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    began = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **RAY_LOOPBACK},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [output.put(line) for line in proc.stdout or ()] + [output.put("")], daemon=True
    ).start()
    seen = []
    try:
        while True:
            line = output.get(timeout=120)
            seen.append(line)
            if not line:
                raise RuntimeError("ray start exited before the head was up:\n" + "".join(seen[-20:]))
            if "Ray runtime started" in line:
                break
        yield RayHead(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", proc, time.monotonic() - began)
    finally:
        proc.terminate()  # ray start --block stops the processes it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this head only (its own process group)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
