"""Server bootstrap shared by the three services: flags, logging, interceptors,
grpc.health.v1, reflection, message-size limits, graceful shutdown, and a
machine-readable ready line on stdout (how launchers and tests learn the port
when it is 0)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .access import AuditLog, KeyRing
from .config import Settings, TlsSettings
from .db import Database, open_database
from .interceptors import AuthInterceptor, ErrorInterceptor
from .logs import setup_logging

log = logging.getLogger("textft.server")
READY_PREFIX = "TEXTFT_READY "


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    extra_ports: list[int] = field(default_factory=list)

    def stop(self, grace: float = 5.0) -> None:
        for name in [*self.service_names, ""]:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt() parameter numbers (malloc.h)


def tune_malloc(arenas: int, mmap_threshold: int) -> bool:
    """Caps glibc's malloc arenas and fixes its mmap threshold for this process
    (what MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ do), before any worker
    thread allocates. glibc gives each thread that allocates under contention
    an arena of its own, up to 8 per core, and raises the mmap threshold to the
    largest block freed (up to 32 MiB), after which megabyte buffers come from
    the arenas, which rarely give their high-water mark back: an upload's
    receiving, validating and storing threads each kept tens of MB of freed
    chunks and parts (bench/bench_upload.py). With a fixed threshold blocks
    that large are mapped and unmapped each time. False where malloc is not
    glibc's."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False


def parse_args(service: str, default_port: int, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"textft-{service}", description=f"textft {service} service")
    parser.add_argument("--host", default=None, help="address to bind (env TEXTFT_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port}; 0 picks one)")
    return parser.parse_args(argv)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS with the configured certificate; with a client CA, callers must
    present a certificate signed by it (mutual TLS)."""
    assert tls.cert is not None and tls.key is not None
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=tls.client_ca.read_bytes(), require_client_auth=True)


def blocking_health_servicer() -> health.HealthServicer:
    """grpc.health.v1 with a blocking Watch, on purpose: grpcio-health's
    non-blocking Watch sends under its state lock, and set() after a burst of
    cancelled watches deadlocks against the server's poll thread (reproduced
    with grpcio 1.7x; reworked upstream in grpc/grpc#43403). Watch needs a key
    (AuthInterceptor), so only authorised callers hold a stream, as with
    WatchModelVersion."""
    return health.HealthServicer(experimental_non_blocking=False)


def start_server(
    settings: Settings,
    port: int,
    register: Callable[[grpc.Server], list[str]],
    host: str | None = None,
    health_servicer: health.HealthServicer | None = None,
    extra_ports: Sequence[int] = (),
    database: Database | None = None,
) -> Running:
    """Starts a server with the shared interceptors; `register` adds servicers
    and returns their full service names (for health and reflection). A
    servicer that reports readiness itself (the inference service's Open
    Inference Protocol ServerReady) passes the health servicer it reads.
    `extra_ports` are more ports of the same server (same host, TLS, auth).
    With `database` (the metadata database), keys created through
    AccessService are accepted too and mutating calls are audited; without it
    only the configured keys are (in-process test servers)."""
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.auth_enabled:
        audit = AuditLog(database) if database is not None else None
        interceptors.append(AuthInterceptor(KeyRing(settings.api_keys, database, settings.service_key), audit))
    interceptors.append(ErrorInterceptor(settings.secrets()))
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Streams one connection may hold open at once (HTTP/2
        # SETTINGS_MAX_CONCURRENT_STREAMS): one client cannot take every slot.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    ]
    # maximum_concurrent_rpcs bounds the executor's queue: without it, RPCs
    # beyond the worker count wait there without limit (and unseen by any
    # service-level bound); beyond it gRPC answers RESOURCE_EXHAUSTED itself.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(1, settings.grpc_workers), thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.max_rpcs,
    )
    names = register(server)
    # Blocking Watch on purpose: grpcio-health's non-blocking Watch sends under
    # its state lock, and set() after a burst of cancelled watches deadlocks
    # against the server's poll thread (reproduced with grpcio 1.7x; reworked
    # upstream in grpc/grpc#43403). Watch needs a key (AuthInterceptor), so
    # only authorised callers can hold a stream, like WatchModelVersion.
    if health_servicer is None:
        health_servicer = blocking_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = [_bind(server, settings, host or settings.host, p) for p in (port, *extra_ports)]
    server.start()
    return Running(server, bound[0], health_servicer, names, bound[1:])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere


def _bind(server: grpc.Server, settings: Settings, host: str, port: int) -> int:
    address = f"{host}:{port}"
    if not settings.tls.enabled and not settings.allow_plaintext and not is_loopback(host):
        # Keys travel in every call's metadata: plaintext off the machine gives them away.
        raise ValueError(
            f"refusing to serve plaintext gRPC on {address}, which is not a loopback address: set "
            "TEXTFT_TLS_CERT and TEXTFT_TLS_KEY, or TEXTFT_ALLOW_PLAINTEXT=true where TLS is terminated "
            "in front of the service (a service mesh)"
        )
    if settings.tls.enabled:
        bound = server.add_secure_port(address, server_credentials(settings.tls))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"could not bind {address}")
    return bound


def run_service(
    service: str,
    default_port: int,
    build: Callable[[Settings], tuple[Callable[[grpc.Server], list[str]], Callable[[], None]]],
    argv: Sequence[str] | None = None,
    health_servicer: health.HealthServicer | None = None,
    extra_ports: Callable[[Settings], Sequence[int]] | None = None,
) -> None:
    """Entry point body of a service process. `build` returns the registrar and
    a shutdown hook (stop queues, flush state) run before the server stops;
    `extra_ports` picks more ports of the same server from the settings."""
    args = parse_args(service, default_port, argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a configuration mistake: say which, without a traceback
        sys.stderr.write(f"textft-{service}: configuration error: {exc}\n")
        raise SystemExit(2) from None
    setup_logging(service, settings.log_level, settings.log_format, settings.secrets())
    if not settings.auth_enabled:
        log.warning("auth is OFF (TEXTFT_AUTH=off): any caller can use this service")
    database = open_database(settings)  # the same instance build() gets from open_database
    try:
        register, on_shutdown = build(settings)
    except ValueError as exc:  # e.g. a launcher that is not installed
        log.error("textft-%s: configuration error: %s", service, exc)
        raise SystemExit(2) from None
    more = list(extra_ports(settings)) if extra_ports else []
    try:
        running = start_server(settings, args.port, register, args.host, health_servicer, more, database)
    except ValueError as exc:
        log.error("textft-%s: configuration error: %s", service, exc)
        raise SystemExit(2) from None
    host = args.host or settings.host
    tls = "mutual TLS" if settings.tls.client_ca else "TLS" if settings.tls.enabled else "plaintext"
    log.info("%s service listening on %s:%d (%s)", service, host, running.port, tls)
    for port in running.extra_ports:
        log.info("%s service also listening on %s:%d", service, host, port)
    ready: dict[str, Any] = {"service": service, "host": host, "port": running.port, "tls": settings.tls.enabled}
    if running.extra_ports:
        ready["extra_ports"] = running.extra_ports
    sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
    sys.stdout.flush()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("%s service shutting down", service)
    for name in [*running.service_names, ""]:
        running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        on_shutdown()
    finally:
        running.server.stop(5).wait()
    log.info("%s service stopped", service)
