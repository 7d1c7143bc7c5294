#!/usr/bin/env python3
"""grpc.health.v1 probe for a textft service, over TLS when the service uses it.

    python healthcheck.py [HOST:PORT] [SERVICE]

HOST:PORT defaults to $TEXTFT_HEALTH_ADDR (else 127.0.0.1:50051); SERVICE to
the whole server (""). TLS follows the same variables as the services: TLS is
used when TEXTFT_TLS_CERT (the server's own certificate: the probe runs in its
container), TEXTFT_TLS_CA or TEXTFT_TLS=on is set; TEXTFT_TLS_CA is the root to
verify against, TEXTFT_TLS_SERVER_NAME the name to check (the certificate
rarely names 127.0.0.1), TEXTFT_TLS_CLIENT_CERT/KEY a client certificate for
mutual TLS. Exit status 0 when SERVING, 1 otherwise (Docker HEALTHCHECK,
Kubernetes exec probes where the built-in gRPC probe cannot speak TLS).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from textft.client import channel_credentials, open_channel


def probe(target: str, service: str = "", env: dict[str, str] | None = None, timeout: float = 5.0) -> str:
    """The serving status name of `service` at `target` (raises grpc.RpcError)."""
    env = dict(os.environ if env is None else env)
    tls = bool(env.get("TEXTFT_TLS_CERT") or env.get("TEXTFT_TLS_CA")) or env.get("TEXTFT_TLS", "") in {
        "1",
        "on",
        "true",
        "yes",
    }
    credentials = None
    if tls:
        credentials = channel_credentials(
            env.get("TEXTFT_TLS_CA") or None,
            env.get("TEXTFT_TLS_CLIENT_CERT") or None,
            env.get("TEXTFT_TLS_CLIENT_KEY") or None,
        )
    with open_channel(target, credentials=credentials, server_name=env.get("TEXTFT_TLS_SERVER_NAME", "")) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str]) -> int:
    target = argv[0] if argv else os.environ.get("TEXTFT_HEALTH_ADDR", "127.0.0.1:50051")
    service = argv[1] if len(argv) > 1 else ""
    try:
        status = probe(target, service)
    except grpc.RpcError as err:
        print(f"{target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
