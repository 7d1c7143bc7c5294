"""The Open Inference Protocol (KServe v2) on the inference service, called by
Triton's own client (tritonclient[grpc]) and, the way grpcurl does, by
messages built from the server's reflection: health and metadata, name
mapping, classification and generation through raw and typed tensors (equal
to textft's Predict), auth, and the status codes and field violations of bad
requests. Real processes on loopback, real adapters trained in the test.

Nothing here imports textft.oip: its stubs and tritonclient's both define the
`inference` package, and one process's default descriptor pool takes only one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import RunningStack
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from support import CLS_TEMPLATE, GEN_TEMPLATE, MV, TINY_BASE_URI, assert_numerically_close, error_of
from tritonclient.utils import InferenceServerException

from textft import Client
from textft.errors import NotFound, from_rpc_error
from textft_services.stack import _free_port, start_service

pytestmark = pytest.mark.integration

SERVICE = "inference.GRPCInferenceService"
SHORT = {"max_steps": 10, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 5}
WORDS = ["great", "awful", "superb", "boring", "loved", "dull", "wonderful", "dreadful"]
GOOD = {"great", "superb", "loved", "wonderful"}
TEXTS = [f"the film was {w} from start to end" for w in WORDS]
CLS, GEN = "oip-sentiment", "oip-shout"
README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class Models:
    cls: str  # models/oip-sentiment/versions/v1
    gen: str  # models/oip-shout/versions/v1
    labels: list[str]


@pytest.fixture(scope="module")
def models(stack: RunningStack) -> Models:
    """A classification and a generation adapter, trained briefly through the real trainer."""
    with stack.client() as c:
        c.create_dataset(CLS)
        c.create_dataset(GEN)
        rows = [(t, "pos" if w in GOOD else "neg") for w, t in zip(WORDS, TEXTS, strict=True)] * 6
        csv = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows)
        jsonl = "".join(f'{{"text": "upper: {w}", "target": "{w.upper()}"}}\n' for w in WORDS) * 6
        cls_ds = c.upload_dataset(CLS, csv.encode(), task="classification", format="csv").name
        gen_ds = c.upload_dataset(GEN, jsonl.encode(), task="generation", format="jsonl").name
        overrides = {"model_config": {"pretrained_model_name_or_path": TINY_BASE_URI}, "trainer_config": SHORT}
        c.create_model(CLS, task="classification")
        c.create_model(GEN, task="generation")
        runs = [
            c.train(CLS, cls_ds, CLS_TEMPLATE, **overrides).name,  # type: ignore[arg-type]
            c.train(GEN, gen_ds, GEN_TEMPLATE, **overrides).name,  # type: ignore[arg-type]
        ]
        done = [c.wait(run, timeout=600) for run in runs]
        for version in done:
            assert version.state == MV.STATE_READY, version.failure.message
    return Models(runs[0], runs[1], list(done[0].label_names))


@pytest.fixture(scope="module")
def address(stack: RunningStack) -> str:
    return stack.stack.addresses["inference"]


@pytest.fixture(scope="module")
def auth(stack: RunningStack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.api_key}"}


@pytest.fixture(scope="module")
def tc(address: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=address)
    try:
        yield client
    finally:
        client.close()


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class Reflected:
    """grpcurl's way: the service and its messages from server reflection (in a
    pool of their own), requests written as JSON."""

    def __init__(self, address: str, auth: dict[str, str]) -> None:
        self.auth = list(auth.items())
        self.raw = grpc.insecure_channel(address)
        self.channel = grpc.intercept_channel(self.raw, _AddMetadata(self.auth))
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = DescriptorPool(self.db)
        self.service = self.pool.FindServiceByName(SERVICE)

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        descriptor = self.service.FindMethodByName(method)
        request_cls = message_factory.GetMessageClass(descriptor.input_type)
        response_cls = message_factory.GetMessageClass(descriptor.output_type)
        call = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        try:
            response = call(json_format.ParseDict(body, request_cls()), timeout=120)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return json_format.MessageToDict(response)

    def close(self) -> None:
        self.raw.close()


@pytest.fixture(scope="module")
def reflected(address: str, auth: dict[str, str]) -> Iterator[Reflected]:
    r = Reflected(address, auth)
    try:
        yield r
    finally:
        r.close()


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def triton_status(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    raise AssertionError("the call succeeded")


# ---- server and model metadata ----
def test_server_live_ready_and_metadata(tc: triton.InferenceServerClient, auth: dict[str, str]) -> None:
    assert tc.is_server_live(headers=auth)
    assert tc.is_server_ready(headers=auth)
    meta = tc.get_server_metadata(headers=auth)
    assert meta.name == "textft"
    assert meta.version


def test_model_ready_once_loaded(client: Client, tc: triton.InferenceServerClient, auth: dict, models: Models) -> None:
    with contextlib.suppress(NotFound):
        client.unload_model_version(models.cls)  # whatever ran before: not in the cache now
    assert not tc.is_model_ready(CLS, "1", headers=auth)
    tc.infer(CLS, [text_input(TEXTS[:1])], model_version="1", headers=auth)  # the first call loads it
    assert tc.is_model_ready(CLS, "1", headers=auth)
    assert tc.is_model_ready(CLS, headers=auth)  # newest READY version
    assert tc.is_model_ready(models.cls, headers=auth)  # the full resource name
    assert tc.is_model_ready(CLS, "v1", headers=auth)


def test_classification_metadata(tc: triton.InferenceServerClient, auth: dict, models: Models) -> None:
    meta = tc.get_model_metadata(CLS, headers=auth)
    assert meta.name == CLS
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("scores", "FP32", [-1, len(models.labels)]),
        ("labels", "BYTES", [-1]),
    ]


def test_generation_metadata(tc: triton.InferenceServerClient, auth: dict, models: Models) -> None:
    meta = tc.get_model_metadata(GEN, "1", headers=auth)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("text_output", "BYTES", [-1])]


def test_metadata_properties_name_the_labels(reflected: Reflected, models: Models) -> None:
    # Triton's client predates OIP's `properties`; read them as the spec has them.
    meta = reflected.call("ModelMetadata", {"name": CLS, "version": "1"})
    assert json.loads(meta["properties"]["labels"]) == models.labels
    assert meta["properties"]["task"] == "TEXT_CLASSIFICATION"
    assert meta["properties"]["model_version"] == models.cls
    gen = reflected.call("ModelMetadata", {"name": GEN})
    assert gen["properties"]["task"] == "TEXT_GENERATION"
    assert "labels" not in gen["properties"]


# ---- inference ----
def test_classification_equals_predict(
    client: Client, tc: triton.InferenceServerClient, auth: dict, models: Models
) -> None:
    result = tc.infer(CLS, [text_input(TEXTS)], model_version="1", request_id="r-1", headers=auth)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (CLS, "1", "r-1")
    scores, labels = result.as_numpy("scores"), result.as_numpy("labels")
    assert scores.shape == (len(TEXTS), len(models.labels)) and scores.dtype == np.float32
    assert json.loads(result.get_output("scores").parameters["labels"].string_param) == models.labels

    want = client.predict(models.cls, TEXTS).predictions
    expected = np.array(
        [[{s.label: s.score for s in p.classification.scores}[lab] for lab in models.labels] for p in want]
    )
    assert_numerically_close(scores.copy(), expected.astype(np.float32))  # as_numpy views a read-only buffer
    assert [lab.decode() for lab in labels] == [p.classification.scores[0].label for p in want]


def labels_request(texts: list[str], **fields: str) -> dict:
    """A ModelInfer request as JSON with typed contents (what `grpcurl -d` sends), asking for labels only."""
    text = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(texts)],
        "contents": {"bytes_contents": [b64(t) for t in texts]},
    }
    return {"model_name": CLS, **fields, "inputs": [text], "outputs": [{"name": "labels"}]}


def test_typed_contents_as_grpcurl_sends_them(reflected: Reflected, client: Client, models: Models) -> None:
    response = reflected.call("ModelInfer", labels_request(TEXTS[:2]))
    assert [o["name"] for o in response["outputs"]] == ["labels"]  # only what was asked for
    assert "rawOutputContents" not in response  # typed in, typed out
    labels = [base64.b64decode(x).decode() for x in response["outputs"][0]["contents"]["bytesContents"]]
    want = client.predict(models.cls, TEXTS[:2]).predictions
    assert labels == [p.classification.scores[0].label for p in want]
    assert response["parameters"]["model_version"]["stringParam"] == models.cls


def test_generation_equals_predict(
    client: Client, tc: triton.InferenceServerClient, auth: dict, models: Models
) -> None:
    prompts = [f"upper: {w}" for w in WORDS[:3]]
    params = {"max_new_tokens": 6, "temperature": 0.0, "stop": json.dumps(["\n"])}
    result = tc.infer(GEN, [text_input(prompts)], parameters=params, headers=auth)
    got = [t.decode() for t in result.as_numpy("text_output")]
    want = client.predict(models.gen, prompts, max_new_tokens=6, stop=["\n"]).predictions
    assert got == [p.generation.text for p in want]

    sampled = {"max_new_tokens": 6, "temperature": 0.9, "top_p": 0.95, "seed": 7}
    again = [tc.infer(GEN, [text_input(prompts[:1])], parameters=sampled, headers=auth) for _ in range(2)]
    assert again[0].as_numpy("text_output").tolist() == again[1].as_numpy("text_output").tolist()  # seeded


# ---- auth and errors ----
def test_auth_is_required(tc: triton.InferenceServerClient, models: Models) -> None:
    assert triton_status(lambda: tc.infer(CLS, [text_input(["x"])])) == "StatusCode.UNAUTHENTICATED"
    bad = {"authorization": "Bearer not-the-key"}
    assert triton_status(lambda: tc.get_model_metadata(CLS, headers=bad)) == "StatusCode.UNAUTHENTICATED"
    assert triton_status(lambda: tc.get_server_metadata()) == "StatusCode.UNAUTHENTICATED"
    assert tc.is_server_live() and tc.is_server_ready()  # probes, like grpc.health.v1, need no key


def test_unknown_model_and_version_are_not_found(tc: triton.InferenceServerClient, auth: dict, models: Models) -> None:
    assert triton_status(lambda: tc.get_model_metadata("no-such-model", headers=auth)) == "StatusCode.NOT_FOUND"
    assert triton_status(lambda: tc.infer(CLS, [text_input(["x"])], "99", headers=auth)) == "StatusCode.NOT_FOUND"
    assert triton_status(lambda: tc.is_model_ready("no-such-model", headers=auth)) == "StatusCode.NOT_FOUND"
    status = triton_status(lambda: tc.get_model_metadata("Not A Name", headers=auth))
    assert status == "StatusCode.INVALID_ARGUMENT"


def test_bad_tensors_through_triton(tc: triton.InferenceServerClient, auth: dict, models: Models) -> None:
    floats = triton.InferInput("text", [2], "FP32")
    floats.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    matrix = triton.InferInput("text", [2, 1], "BYTES")
    matrix.set_data_from_numpy(np.array([[b"a"], [b"b"]], dtype=np.object_))
    other = triton.InferInput("prompt", [1], "BYTES")
    other.set_data_from_numpy(np.array([b"a"], dtype=np.object_))
    not_utf8 = triton.InferInput("text", [1], "BYTES")
    not_utf8.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    for inputs in ([floats], [matrix], [other], [not_utf8]):
        assert triton_status(lambda i=inputs: tc.infer(CLS, i, headers=auth)) == "StatusCode.INVALID_ARGUMENT"
    unknown = {"max_tokens": 5}
    status = triton_status(lambda: tc.infer(GEN, [text_input(["x"])], parameters=unknown, headers=auth))
    assert status == "StatusCode.INVALID_ARGUMENT"


def _tensor(datatype: str = "BYTES", shape: list[int] | None = None, name: str = "text", **contents: Any) -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape or [1],
        "contents": contents or {"bytes_contents": [b64("x")]},
    }


BAD_REQUESTS = {
    "inputs[text].datatype": ("INVALID_DATATYPE", {"inputs": [_tensor("FP32", fp32_contents=[1.0])]}),
    "inputs[text].shape": ("INVALID_SHAPE", {"inputs": [_tensor(shape=[1, 1])]}),
    "inputs[text].contents": ("INVALID_TENSOR_CONTENTS", {"inputs": [_tensor(shape=[2])]}),
    "inputs[prompt]": ("UNKNOWN_INPUT", {"inputs": [_tensor(name="prompt")]}),
    "inputs": ("MISSING_INPUT", {"inputs": []}),
    "inputs[text].raw_input_contents": (
        "INVALID_TENSOR_CONTENTS",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}], "raw_input_contents": [b64("\x09\x00")]},
    ),
    "outputs[probabilities]": ("UNKNOWN_OUTPUT", {"inputs": [_tensor()], "outputs": [{"name": "probabilities"}]}),
    "parameters.max_tokens": (
        "UNKNOWN_PARAMETER",
        {"inputs": [_tensor()], "parameters": {"max_tokens": {"int64_param": 5}}},
    ),
    "parameters.temperature": (
        "INVALID_PARAMETER",
        {"inputs": [_tensor()], "parameters": {"temperature": {"string_param": "hot"}}},
    ),
}


@pytest.mark.parametrize("field", sorted(BAD_REQUESTS))
def test_bad_requests_name_the_tensor(reflected: Reflected, models: Models, field: str) -> None:
    reason, body = BAD_REQUESTS[field]
    error = error_of(lambda: reflected.call("ModelInfer", {"model_name": GEN, **body}))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason
    assert [v.field for v in error.violations] == [field]


def test_engine_limits_come_back_in_oip_terms(reflected: Reflected, models: Models) -> None:
    body = {"model_name": GEN, "inputs": [_tensor()], "parameters": {"max_new_tokens": {"int64_param": 5000}}}
    error = error_of(lambda: reflected.call("ModelInfer", body))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["parameters.max_new_tokens"]
    long = {"model_name": CLS, "inputs": [_tensor(shape=[2], bytes_contents=[b64("ok"), b64("x" * 20_001)])]}
    error = error_of(lambda: reflected.call("ModelInfer", long))
    assert [v.field for v in error.violations] == ["inputs[text][1]"]


def test_contradicting_version_is_refused(reflected: Reflected, models: Models) -> None:
    error = error_of(lambda: reflected.call("ModelMetadata", {"name": models.cls, "version": "2"}))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["model_version"]


# ---- reflection (what grpcurl needs) ----
def _grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    if not found:
        pytest.skip("grpcurl is not installed (services[test] brings it on x86-64 Linux)")
    return found


def test_grpcurl_lists_and_calls_model_infer(address: str, auth: dict, client: Client, models: Models) -> None:
    """The real grpcurl, through reflection, with the API key as a header."""
    grpcurl = _grpcurl()
    header = ["-H", f"authorization: {auth['authorization']}"]
    listed = subprocess.run(
        [grpcurl, "-plaintext", *header, address, "list"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    body = labels_request(TEXTS[:2], model_version="1")
    call = [grpcurl, "-plaintext", *header, "-d", json.dumps(body), address, f"{SERVICE}/ModelInfer"]
    answered = subprocess.run(call, capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    response = json.loads(answered.stdout)
    contents = response["outputs"][0]["contents"]  # grpcurl prints the proto's own field names
    labels = [base64.b64decode(x).decode() for x in contents.get("bytes_contents", contents.get("bytesContents"))]
    assert labels == [p.classification.scores[0].label for p in client.predict(models.cls, TEXTS[:2]).predictions]
    # No key: refused, and grpcurl says so in its exit status and the gRPC code.
    refused = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(body), address, f"{SERVICE}/ModelInfer"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


def test_reflection_lists_and_describes_the_service(reflected: Reflected) -> None:
    assert SERVICE in set(reflected.db.get_services())
    assert {"ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer"} <= {
        m.name for m in reflected.service.methods
    }
    assert reflected.call("ServerReady", {}) == {"ready": True}


def test_every_rpc_needs_a_key_but_the_probes(address: str, reflected: Reflected) -> None:
    probes = {"ServerLive", "ServerReady"}  # like grpc.health.v1: Kubernetes and gateways probe without a key
    with grpc.insecure_channel(address) as channel:
        for method in reflected.service.methods:
            request_cls = message_factory.GetMessageClass(method.input_type)
            call = channel.unary_unary(f"/{SERVICE}/{method.name}", request_serializer=lambda m: m.SerializeToString())
            for label, metadata in (
                ("none", []),
                ("wrong", [("authorization", "Bearer wrong")]),
                ("key", reflected.auth),
            ):
                try:
                    call(request_cls(), metadata=metadata, timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                if label == "key" or method.name in probes:
                    assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL), method.name
                else:
                    assert code == grpc.StatusCode.UNAUTHENTICATED, method.name


def test_readme_tritonclient_example_runs(stack: RunningStack, address: str, models: Models, tmp_path: Path) -> None:
    section = README.read_text().split("## Open Inference Protocol", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## Open Inference Protocol'"
    code = match.group(1)
    assert '"sentiment"' in code, "README's OIP example no longer names the model 'sentiment'"
    (tmp_path / "example.py").write_text(code.replace('"sentiment"', f'"{CLS}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTFT_")}
    env.update(TEXTFT_INFERENCE_ADDR=address, TEXTFT_API_KEY=stack.api_key)
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert set(re.findall(r"b'(\w+)'", result.stdout)) <= set(models.labels)
    assert re.findall(r"b'(\w+)'", result.stdout)


def test_second_port(stack: RunningStack, auth: dict, models: Models, tmp_path: Path) -> None:
    """TEXTFT_INFERENCE_OIP_PORT: one more port of the same server, same auth."""
    port = _free_port()
    env = {**stack.env, "TEXTFT_HOME": str(tmp_path), "TEXTFT_INFERENCE_OIP_PORT": str(port)}
    with open(tmp_path / "inference.log", "w") as log:
        service = start_service("inference", env, log=log)
        try:
            second = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
            try:
                assert second.is_server_ready()
                meta = second.get_model_metadata(CLS, "1", headers=auth)
                assert [t.name for t in meta.outputs] == ["scores", "labels"]
                assert triton_status(lambda: second.get_model_metadata(CLS)) == "StatusCode.UNAUTHENTICATED"
            finally:
                second.close()
            main = triton.InferenceServerClient(url=service.address)  # and the main port still answers
            try:
                assert main.get_model_metadata(GEN, headers=auth).name == GEN
            finally:
                main.close()
        finally:
            service.stop()
