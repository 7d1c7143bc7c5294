"""TLS end to end, with a CA and certificates made here (cryptography): the
three services serve TLS (TEXTFT_TLS_CERT/KEY) and call each other over it
(TEXTFT_TLS_CA, read by their SDK clients); the SDK, the CLI and the health
probe (deploy/healthcheck.py) reach them; plaintext or an unknown CA fail with
UNAVAILABLE; mutual TLS refuses a caller without a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import TINY_BASE_KEY, TINY_BASE_URI

from textft import Client
from textft.client import channel_credentials, open_channel
from textft.errors import Unavailable
from textft.v1 import trainer_pb2
from textft_services.common.bootstrap import start_server
from textft_services.common.config import Settings, TlsSettings
from textft_services.common.store import S3Store
from textft_services.stack import Stack, start_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


# ---------------------------------------------------------------- certificates
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".pem"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @classmethod
    def make(cls, directory: Path, name: str) -> CA:
        key, now = _key(), datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        path, _ = _write(directory / name, key, cert)
        return cls(key, cert, path)

    def issue(self, directory: Path, name: str, server: bool) -> tuple[Path, Path]:
        key, now = _key(), datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return _write(directory / name, key, builder.sign(self.key, hashes.SHA256()))


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the servers use


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca = CA.make(directory, "textft-test-ca")
    server_cert, server_key = ca.issue(directory, "textft-server", server=True)
    client_cert, client_key = ca.issue(directory, "textft-client", server=False)
    other = CA.make(directory, "someone-else-ca")
    return Certs(ca.path, server_cert, server_key, client_cert, client_key, other.path)


# ---------------------------------------------------------------- the stack over TLS
@pytest.fixture(scope="module")
def tls_stack(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, certs: Certs
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("textft-tls-home")
    env = s3_endpoint.service_env(
        home,
        unique_bucket(),
        base={k: v for k, v in os.environ.items() if not k.startswith("TEXTFT_TLS")},
        # servers
        TEXTFT_TLS_CERT=str(certs.server_cert),
        TEXTFT_TLS_KEY=str(certs.server_key),
        # the services' own clients (trainer -> dataset, inference -> trainer)
        TEXTFT_TLS_CA=str(certs.ca),
    )
    S3Store(Settings.from_env(env).store).upload_dir(tiny_model_dir, TINY_BASE_KEY)
    with open(home / "services.log", "w") as log:
        running = start_stack(env, log=log)
        try:
            yield running
        finally:
            running.stop()
    assert "Traceback" not in (home / "services.log").read_text()


def _client(stack: Stack, **kw: object) -> Client:
    a = stack.addresses
    return Client(a["dataset"], a["trainer"], a["inference"], api_key=API_KEY, env={}, **kw)  # type: ignore[arg-type]


def test_sdk_trains_and_predicts_over_tls(tls_stack: Stack, certs: Certs) -> None:
    """Upload, train and predict: the trainer reads the dataset version and
    inference reads the model version through their own TLS clients."""
    rng = random.Random(3)
    rows = ["text,label"]
    for _ in range(40):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["great", "superb", "loved"] if label == "pos" else ["awful", "dull", "hated"])
        rows.append(f"the film was {word},{label}")
    with _client(tls_stack, tls_ca=str(certs.ca)) as client:
        assert client.tls
        client.create_dataset("tls-reviews")
        data = client.upload_dataset("tls-reviews", ("\n".join(rows) + "\n").encode(), "classification", "csv")
        assert data.stats.valid_row_count == 40
        client.create_model("tls-sentiment", task="classification")
        run = client.train(
            "tls-sentiment",
            data.name,
            "gpt-neo-125m-lora-text-classification",
            model_config={"pretrained_model_name_or_path": TINY_BASE_URI},
            trainer_config={"num_train_epochs": 1, "per_device_train_batch_size": 8, "logging_steps": 2},
        )
        done = client.wait(run.name, timeout=300)
        assert done.state == trainer_pb2.ModelVersion.STATE_READY, done.failure
        response = client.predict(done.name, ["the film was great"])
        assert {s.label for s in response.predictions[0].classification.scores} == {"pos", "neg"}


def test_plaintext_client_is_refused(tls_stack: Stack) -> None:
    with _client(tls_stack, tls=False, retries=0, timeout=10) as client, pytest.raises(Unavailable):
        client.list_templates()


def test_unknown_ca_is_refused(tls_stack: Stack, certs: Certs) -> None:
    client = _client(tls_stack, tls_ca=str(certs.other_ca), retries=0, timeout=10)
    with client, pytest.raises(Unavailable):
        client.list_templates()


def test_tls_settings_come_from_the_environment(tls_stack: Stack, certs: Certs) -> None:
    a = tls_stack.addresses
    env = {
        "TEXTFT_TRAINER_ADDR": a["trainer"],
        "TEXTFT_API_KEY": API_KEY,
        "TEXTFT_TLS_CA": str(certs.ca),
    }
    with Client.from_env(env) as client:
        assert client.tls and client.targets["trainer"] == a["trainer"]
        assert client.list_templates()
    # The CLI (its real entry point) reads the same variables.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    result = subprocess.run(
        [sys.executable, "-m", "textft", "templates"],
        env={**cli_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "gpt-neo-125m-lora-text-classification" in result.stdout


@pytest.mark.parametrize("service", ["dataset", "trainer", "inference"])
def test_health_probe_over_tls(tls_stack: Stack, certs: Certs, service: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTFT_", "MINIO_"))}
    address = tls_stack.addresses[service]
    ok = subprocess.run(
        [sys.executable, str(HEALTHCHECK), address],
        env={**base, "TEXTFT_TLS_CA": str(certs.ca)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{address}: SERVING"
    plaintext = subprocess.run(
        [sys.executable, str(HEALTHCHECK), address], env=base, capture_output=True, text=True, timeout=60
    )
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


# ---------------------------------------------------------------- mutual TLS, in process
def _health(target: str, credentials: grpc.ChannelCredentials) -> int:
    with open_channel(target, credentials=credentials) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_mutual_tls_needs_a_client_certificate(certs: Certs) -> None:
    settings = Settings(
        auth_enabled=False,
        tls=TlsSettings(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca),
    )
    running = start_server(settings, 0, lambda server: [], host="127.0.0.1")
    target = f"127.0.0.1:{running.port}"
    try:
        with_cert = channel_credentials(certs.ca, certs.client_cert, certs.client_key)
        assert _health(target, with_cert) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            _health(target, channel_credentials(certs.ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="TEXTFT_TLS_KEY"):
        Settings.from_env({"TEXTFT_TLS_CERT": "/x/cert.pem"})
    with pytest.raises(ValueError, match="TEXTFT_TLS_CLIENT_CA"):
        Settings.from_env({"TEXTFT_TLS_CLIENT_CA": "/x/ca.pem"})
    tls = Settings.from_env({"TEXTFT_TLS_CERT": "/x/c.pem", "TEXTFT_TLS_KEY": "/x/k.pem"}).tls
    assert tls.enabled and tls.cert == Path("/x/c.pem") and tls.client_ca is None
    assert not Settings.from_env({}).tls.enabled
    with pytest.raises(ValueError, match="cannot read the TLS root certificate"):
        Client("127.0.0.1:1", env={}, tls_ca="/no/such/ca.pem")
