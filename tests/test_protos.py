"""The generated stubs in clients/python/textft/v1 and textft/internal/v1 are
what protos/ generates now (run by `make check-protos`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
STUBS_ROOT = ROOT / "clients" / "python"
# textft's API, and the vendored Open Inference Protocol (package `inference`).
PACKAGES = ("textft/v1", "textft/internal/v1", "textft/oip/v2")  # the Makefile's PROTOS and OIP_PROTOS
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
HINT = "the generated stubs are stale: run `make protos`"


def _generated(root: Path) -> dict[str, bytes]:
    return {
        f"{package}/{p.name}": p.read_bytes()
        for package in PACKAGES
        if (root / package).is_dir()
        for p in sorted((root / package).iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("stubs")
    protos = sorted(p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (PROTOS / package).glob("*.proto"))
    assert len({p.rsplit("/", 1)[0] for p in protos}) == len(PACKAGES), "a proto package has no .proto files"
    # The same invocation as the Makefile's `protos` target, from the repository root.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    files = _generated(out)
    assert len(files) == 3 * len(protos)
    return files


def test_every_stub_is_present_and_nothing_stale(fresh: dict[str, bytes]) -> None:
    committed = _generated(STUBS_ROOT)
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    assert not missing, f"{HINT} (missing: {', '.join(missing)})"
    assert not extra, f"{HINT} (left over from removed protos: {', '.join(extra)}; `make clean` first)"


def test_stubs_are_byte_identical(fresh: dict[str, bytes]) -> None:
    committed = _generated(STUBS_ROOT)
    differ = sorted(name for name, data in fresh.items() if committed.get(name) != data)
    assert not differ, f"{HINT} (differ: {', '.join(differ)})"


def test_stubs_import_and_match_the_protos() -> None:
    from textft.v1 import dataset_pb2, inference_pb2, trainer_pb2

    assert dataset_pb2.DESCRIPTOR.package == "textft.v1"
    services = {
        s.full_name
        for module in (dataset_pb2, trainer_pb2, inference_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    }
    assert services == {"textft.v1.DatasetService", "textft.v1.TrainerService", "textft.v1.InferenceService"}


def test_the_open_inference_protocol_is_vendored_unchanged(tmp_path: Path) -> None:
    """Read from a descriptor set, not imported: its package `inference` is
    also tritonclient's, and one process's descriptor pool takes only one."""
    from google.protobuf import descriptor_pb2

    out = tmp_path / "oip.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--descriptor_set_out={out}",
            "textft/oip/v2/open_inference_grpc.proto",
        ],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    (proto,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert proto.package == "inference"
    (service,) = proto.service
    assert service.name == "GRPCInferenceService"
    assert [m.name for m in service.method] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    digest = hashlib.sha256((PROTOS / "textft/oip/v2/open_inference_grpc.proto").read_bytes()).hexdigest()
    assert digest in (PROTOS / "textft/oip/v2/README.md").read_text(), "the vendored proto was edited"
