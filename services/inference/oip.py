"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`)
as a thin façade over the inference Engine, so Triton and KServe clients,
OIP-aware gateways and probes call textft models without textft code.

It uses only the Engine's public calls (resolve, load, loaded, predict), as
the textft handlers do, and is served by the same gRPC server: the same auth,
TLS, limits, error mapping and request metrics.

Names: OIP's `model_name` is a model id (`sentiment`) and `model_version` a
version number (`1` means `models/sentiment/versions/v1`) or id (`v1`); an
empty version means the model's newest READY one. The full resource name is
accepted as `model_name` too (`models/sentiment/versions/v1`, `models/sentiment`).

Tensors, per task (ModelMetadata says the same):
- classification: input `text` (BYTES [-1]); outputs `scores` (FP32 [-1, L],
  columns in the model's label order) and `labels` (BYTES [-1], the highest
  scoring label of each text). The label names are in the metadata's
  `properties["labels"]` and in the `scores` output's `labels` parameter
  (JSON lists).
- generation: input `text` (BYTES [-1]) with request parameters
  max_new_tokens, temperature, top_p, top_k, stop (one string, or a JSON list
  of strings), seed, ignore_eos; output `text_output` (BYTES [-1]).
Inputs come as typed `contents` or as `raw_input_contents`; the response
answers in kind (Triton's client sends raw, grpcurl users typed JSON).
"""

from __future__ import annotations

import array
import functools
import json
import re
import struct
import sys
import time
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2

from textft.errors import FailedPrecondition, FieldViolation, InvalidArgument, TextftError
from textft.oip.v2 import open_inference_grpc_pb2 as oip_pb2
from textft.oip.v2 import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from textft.v1 import common_pb2, inference_pb2, trainer_pb2

from ..common import names
from .engine import Engine

SERVICE = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PLATFORM = "textft_peft_lora"
INPUT = "text"
CLASSIFICATION_OUTPUTS = ("scores", "labels")
GENERATION_OUTPUTS = ("text_output",)
NO_DEADLINE = 1e8  # grpc reports a far-future time_remaining() when the client set none
_VERSION_NUMBER = re.compile(r"[0-9]{1,18}")
_VERSION_ID_NUMBER = re.compile(r"v([0-9]{1,18})")
_LENGTH = struct.Struct("<I")  # BYTES elements in raw contents: a 4-byte little-endian length, then the bytes
Tensor = oip_pb2.ModelInferRequest.InferInputTensor
F = TypeVar("F", bound=Callable[..., Any])


# ---- names ----
@functools.lru_cache(maxsize=4096)  # a pure function of the two strings; errors are not cached
def resource_name(model_name: str, model_version: str) -> str:
    """The textft name an OIP (model_name, model_version) pair means."""
    if model_name.startswith(("models/", "apps/")):
        if names.is_model_name(model_name):
            model = names.parse_model(model_name, "model_name")
        else:
            full = names.parse_model_version(model_name, "model_name")
            if model_version and model_version not in (full.version, oip_version(full.version)):
                raise InvalidArgument.for_field(
                    "model_version", f"{model_version!r} contradicts model_name {model_name!r}", reason="INVALID_NAME"
                )
            return str(full)
    else:
        model = names.ModelName(names.check_id(model_name, "model_name"))
    if not model_version:
        return str(model)
    if _VERSION_NUMBER.fullmatch(model_version):
        return f"{model}/versions/v{int(model_version)}"
    return f"{model}/versions/{names.check_id(model_version, 'model_version')}"


def oip_version(version_id: str) -> str:
    """`v3` -> `3`: the version as OIP clients write it; other ids stay as they are."""
    m = _VERSION_ID_NUMBER.fullmatch(version_id)
    return m.group(1) if m else version_id


def _version_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


# ---- tensors ----
def _tensor_error(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument.for_field(field, description, reason=reason)


def decode_raw_bytes(raw: bytes, count: int, tensor: str) -> list[bytes]:
    """Splits a raw BYTES tensor (length-prefixed elements) into `count` elements."""
    items: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise _tensor_error(
                f"inputs[{tensor}].raw_input_contents",
                f"tensor {tensor!r}: truncated element length at byte {offset}",
                "INVALID_TENSOR_CONTENTS",
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise _tensor_error(
                f"inputs[{tensor}].raw_input_contents",
                f"tensor {tensor!r}: element {len(items)} is {length} bytes long but only {len(view) - offset} remain",
                "INVALID_TENSOR_CONTENTS",
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise _tensor_error(
            f"inputs[{tensor}].raw_input_contents",
            f"tensor {tensor!r}: its shape says {count} elements, the raw contents hold {len(items)}",
            "INVALID_TENSOR_CONTENTS",
        )
    return items


def encode_raw_bytes(items: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def _typed_fields_set(contents: oip_pb2.InferTensorContents) -> list[str]:
    return [field.name for field, _ in contents.ListFields()]


def _one_text_raw(request: oip_pb2.ModelInferRequest) -> list[str] | None:
    """What Triton's client sends for one text (the common case), decoded
    without the general checks; None for anything else."""
    if len(request.inputs) != 1 or len(request.raw_input_contents) != 1:
        return None
    tensor = request.inputs[0]
    if tensor.name != INPUT or tensor.datatype != "BYTES" or list(tensor.shape) != [1] or tensor.parameters:
        return None
    if tensor.HasField("contents"):
        return None
    raw = request.raw_input_contents[0]
    if len(raw) < 4 or _LENGTH.unpack_from(raw)[0] != len(raw) - 4:
        return None
    try:
        return [raw[4:].decode("utf-8")]
    except UnicodeDecodeError:
        return None


def texts_of(request: oip_pb2.ModelInferRequest) -> list[str]:
    """The `text` input as strings, from typed or raw contents, checked against
    its declared datatype and shape."""
    fast = _one_text_raw(request)
    if fast is not None:
        return fast
    by_name: dict[str, int] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name != INPUT:
            raise _tensor_error(
                f"inputs[{tensor.name}]",
                f"unknown input tensor {tensor.name!r}: this model has one input, {INPUT!r} (BYTES, shape [-1])",
                "UNKNOWN_INPUT",
            )
        if tensor.name in by_name:
            raise _tensor_error(f"inputs[{INPUT}]", f"input tensor {INPUT!r} is given twice", "DUPLICATE_INPUT")
        by_name[tensor.name] = i
    if INPUT not in by_name:
        raise _tensor_error("inputs", f"the input tensor {INPUT!r} (BYTES, shape [-1]) is missing", "MISSING_INPUT")
    index = by_name[INPUT]
    tensor = request.inputs[index]
    if tensor.datatype != "BYTES":
        raise _tensor_error(
            f"inputs[{INPUT}].datatype",
            f"tensor {INPUT!r} is BYTES (UTF-8 text), got {tensor.datatype or 'none'!r}",
            "INVALID_DATATYPE",
        )
    shape = list(tensor.shape)
    if len(shape) != 1 or shape[0] < 1:
        raise _tensor_error(
            f"inputs[{INPUT}].shape",
            f"tensor {INPUT!r} has shape [-1] (one text per element, at least one), got {shape}",
            "INVALID_SHAPE",
        )
    if tensor.parameters:
        first = next(iter(tensor.parameters))
        raise _tensor_error(
            f"inputs[{INPUT}].parameters.{first}",
            f"tensor {INPUT!r} takes no parameters; generation settings are request parameters",
            "UNKNOWN_PARAMETER",
        )
    count = shape[0]
    typed = _typed_fields_set(tensor.contents)
    if request.raw_input_contents:
        if typed:
            raise _tensor_error(
                f"inputs[{INPUT}].contents",
                f"tensor {INPUT!r}: give either raw_input_contents or contents, not both",
                "INVALID_TENSOR_CONTENTS",
            )
        if len(request.raw_input_contents) != len(request.inputs):
            raise _tensor_error(
                "raw_input_contents",
                f"{len(request.raw_input_contents)} raw contents for {len(request.inputs)} input tensors",
                "INVALID_TENSOR_CONTENTS",
            )
        items = decode_raw_bytes(request.raw_input_contents[index], count, INPUT)
    else:
        if typed not in ([], ["bytes_contents"]):
            raise _tensor_error(
                f"inputs[{INPUT}].contents",
                f"tensor {INPUT!r} is BYTES: its typed contents go in bytes_contents, got {', '.join(typed)}",
                "INVALID_TENSOR_CONTENTS",
            )
        items = list(tensor.contents.bytes_contents)
        if len(items) != count:
            raise _tensor_error(
                f"inputs[{INPUT}].contents",
                f"tensor {INPUT!r}: its shape says {count} elements, bytes_contents holds {len(items)}",
                "INVALID_TENSOR_CONTENTS",
            )
    texts = []
    for i, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _tensor_error(
                f"inputs[{INPUT}][{i}]", f"tensor {INPUT!r}, element {i}: not UTF-8 ({exc.reason})", "INVALID_UTF8"
            ) from None
    return texts


# ---- request parameters (generation settings) ----
def _value(name: str, parameter: oip_pb2.InferParameter) -> Any:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise _tensor_error(f"parameters.{name}", "has no value", "INVALID_PARAMETER")
    return getattr(parameter, which)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _tensor_error(f"parameters.{name}", f"must be an integer, got {value!r}", "INVALID_PARAMETER")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _tensor_error(f"parameters.{name}", f"must be a number, got {value!r}", "INVALID_PARAMETER")
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _tensor_error(f"parameters.{name}", f"must be a boolean, got {value!r}", "INVALID_PARAMETER")
    return value


def _stop(name: str, value: Any) -> list[str]:
    """One stop string, or a JSON list of them (OIP parameters hold no lists)."""
    if not isinstance(value, str):
        raise _tensor_error(f"parameters.{name}", f"must be a string, got {value!r}", "INVALID_PARAMETER")
    if value.startswith("["):
        try:
            stops = json.loads(value)
        except json.JSONDecodeError:
            stops = None
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _tensor_error(
                f"parameters.{name}", "must be one stop string or a JSON list of strings", "INVALID_PARAMETER"
            )
        return stops
    return [value]


def generation_of(parameters: Any) -> inference_pb2.GenerationParameters:
    """The request's OIP parameters as textft generation settings; unknown
    names are refused, so a typo is not silently ignored."""
    gen = inference_pb2.GenerationParameters()
    for name, parameter in parameters.items():
        value = _value(name, parameter)
        if name == "max_new_tokens":
            gen.max_new_tokens = min(max(_int(name, value), -1), 1 << 30)  # the engine checks the range
        elif name == "temperature":
            gen.temperature = _float(name, value)
        elif name == "top_p":
            gen.top_p = _float(name, value)
        elif name == "top_k":
            gen.top_k = min(max(_int(name, value), -1), 1 << 30)
        elif name == "stop":
            gen.stop.extend(_stop(name, value))
        elif name == "seed":
            seed = _int(name, value)
            if not 0 <= seed < 1 << 64:
                raise _tensor_error(f"parameters.{name}", "must be between 0 and 2^64-1", "INVALID_PARAMETER")
            gen.seed = seed
        elif name == "ignore_eos":
            gen.ignore_eos = _bool(name, value)
        else:
            raise _tensor_error(
                f"parameters.{name}",
                f"unknown parameter {name!r}: known are max_new_tokens, temperature, top_p, top_k, stop, seed, ignore_eos",
                "UNKNOWN_PARAMETER",
            )
    return gen


def _renamed(exc: InvalidArgument) -> InvalidArgument:
    """The engine's field paths (textft's Predict) in OIP's terms."""

    def rename(path: str) -> str:
        if path == "texts" or path.startswith("texts["):
            return f"inputs[{INPUT}]" + path[len("texts") :]
        if path.startswith("generation."):
            return "parameters." + path[len("generation.") :]
        if path == "model_version":
            return "model_name"
        return path

    violations = [FieldViolation(rename(v.field), v.description) for v in exc.violations]
    message = exc.message
    for old, new in zip(exc.violations, violations, strict=True):
        message = message.replace(old.field, new.field, 1)
    return InvalidArgument(message, reason=exc.reason, violations=violations, metadata=exc.metadata)


# ---- responses ----
def _outputs_wanted(request: oip_pb2.ModelInferRequest, available: tuple[str, ...]) -> list[str]:
    if not request.outputs:
        return list(available)
    wanted = []
    for output in request.outputs:
        if output.name not in available:
            raise _tensor_error(
                f"outputs[{output.name}]",
                f"unknown output tensor {output.name!r}: this model has {', '.join(available)}",
                "UNKNOWN_OUTPUT",
            )
        if output.parameters:
            first = next(iter(output.parameters))
            raise _tensor_error(
                f"outputs[{output.name}].parameters.{first}",
                f"output tensor {output.name!r} takes no parameters",
                "UNKNOWN_PARAMETER",
            )
        wanted.append(output.name)
    return wanted


def _add_bytes(response: oip_pb2.ModelInferResponse, name: str, items: list[bytes], raw: bool) -> Any:
    tensor = response.outputs.add(name=name, datatype="BYTES", shape=[len(items)])
    if raw:
        response.raw_output_contents.append(encode_raw_bytes(items))
    else:
        tensor.contents.bytes_contents.extend(items)
    return tensor


@functools.lru_cache(maxsize=1024)
def _labels_json(label_names: tuple[str, ...]) -> str:
    return json.dumps(list(label_names))


def classification_outputs(
    response: oip_pb2.ModelInferResponse,
    predictions: Any,
    label_names: tuple[str, ...],
    wanted: list[str],
    raw: bool,
) -> None:
    column = {label: j for j, label in enumerate(label_names)}
    width = len(label_names)
    scores = array.array("f", bytes(4 * width * len(predictions)))  # row-major [texts, labels]
    top: list[bytes] = []
    for i, prediction in enumerate(predictions):
        ranked = prediction.classification.scores  # highest first
        for item in ranked:
            scores[i * width + column[item.label]] = item.score
        top.append(ranked[0].label.encode() if ranked else b"")
    for name in wanted:
        if name == "scores":
            tensor = response.outputs.add(name="scores", datatype="FP32", shape=[len(predictions), width])
            tensor.parameters["labels"].string_param = _labels_json(label_names)
            if raw:
                if sys.byteorder == "big":
                    scores.byteswap()  # OIP raw contents are little-endian
                response.raw_output_contents.append(scores.tobytes())
            else:
                tensor.contents.fp32_contents.extend(scores)
        else:
            _add_bytes(response, "labels", top, raw)


# ---- the servicer ----
def _observed(method: F) -> F:
    """Counts requests by final status and records latency (the textft handlers' metrics)."""
    name = method.__name__

    @functools.wraps(method)
    def unary(self: OipServicer, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        code = "OK"
        try:
            return method(self, request, context)
        except BaseException as exc:
            code = exc.code.name if isinstance(exc, TextftError) else "INTERNAL"
            raise
        finally:
            self.engine.metrics.requests.inc(method=name, code=code)
            self.engine.metrics.latency.observe(time.monotonic() - started, method=name)

    return unary  # type: ignore[return-value]


def _server_version() -> str:
    try:
        return importlib_metadata.version("textft-services")
    except importlib_metadata.PackageNotFoundError:
        return "0"


class OipServicer(oip_pb2_grpc.GRPCInferenceServiceServicer):
    """`health` is the server's health servicer: ServerReady says what it says."""

    def __init__(self, engine: Engine, health_servicer: health.HealthServicer) -> None:
        self.engine = engine
        self.health = health_servicer
        self.version = _server_version()

    def _resolve(self, model_name: str, model_version: str) -> trainer_pb2.ModelVersion:
        """The READY trainer ModelVersion an OIP name pair means (Engine.resolve)."""
        name = resource_name(model_name, model_version)  # names its own fields
        try:
            return self.engine.resolve(name)
        except InvalidArgument as exc:
            raise _renamed(exc) from None

    @_observed
    def ServerLive(
        self, request: oip_pb2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ServerLiveResponse:
        return oip_pb2.ServerLiveResponse(live=True)

    @_observed
    def ServerReady(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ServerReadyResponse:
        status = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), context).status
        return oip_pb2.ServerReadyResponse(ready=status == health_pb2.HealthCheckResponse.SERVING)

    @_observed
    def ServerMetadata(
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ServerMetadataResponse:
        return oip_pb2.ServerMetadataResponse(name="textft", version=self.version, extensions=[])

    @_observed
    def ModelReady(
        self, request: oip_pb2.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ModelReadyResponse:
        """Ready once the version's base model and adapter are loaded (the first
        ModelInfer, or textft's LoadModelVersion, loads them). A model that
        exists but has no READY version is not ready; an unknown one is NOT_FOUND."""
        try:
            version = self._resolve(request.name, request.version)
        except FailedPrecondition:
            return oip_pb2.ModelReadyResponse(ready=False)
        loaded = any(item.model_version == version.name for item in self.engine.loaded())
        return oip_pb2.ModelReadyResponse(ready=loaded)

    @_observed
    def ModelMetadata(
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ModelMetadataResponse:
        version = self._resolve(request.name, request.version)
        meta = oip_pb2.ModelMetadataResponse.TensorMetadata
        response = oip_pb2.ModelMetadataResponse(
            name=request.name,
            versions=[oip_version(_version_id(version.name))],
            platform=PLATFORM,
            inputs=[meta(name=INPUT, datatype="BYTES", shape=[-1])],
        )
        response.properties["task"] = common_pb2.Task.Name(version.task).removeprefix("TASK_")
        response.properties["model_version"] = version.name
        response.properties["base_model"] = version.lineage.base_model
        if version.task == common_pb2.TASK_TEXT_CLASSIFICATION:
            labels = list(version.label_names)
            response.outputs.extend(
                [
                    meta(name="scores", datatype="FP32", shape=[-1, len(labels)]),
                    meta(name="labels", datatype="BYTES", shape=[-1]),
                ]
            )
            response.properties["labels"] = json.dumps(labels)
        else:
            response.outputs.append(meta(name="text_output", datatype="BYTES", shape=[-1]))
            response.properties["parameters"] = "max_new_tokens,temperature,top_p,top_k,stop,seed,ignore_eos"
        return response

    @_observed
    def ModelInfer(
        self, request: oip_pb2.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip_pb2.ModelInferResponse:
        version = self._resolve(request.model_name, request.model_version)
        classify = version.task == common_pb2.TASK_TEXT_CLASSIFICATION
        wanted = _outputs_wanted(request, CLASSIFICATION_OUTPUTS if classify else GENERATION_OUTPUTS)
        texts = texts_of(request)
        params = generation_of(request.parameters)
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > NO_DEADLINE else time.monotonic() + remaining
        try:
            result = self.engine.predict(version.name, texts, params, deadline, context.add_callback)
        except InvalidArgument as exc:
            raise _renamed(exc) from None
        response = oip_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=oip_version(_version_id(result.model_version)), id=request.id
        )
        response.parameters["model_version"].string_param = result.model_version
        raw = bool(request.raw_input_contents)
        if classify:
            classification_outputs(response, result.predictions, tuple(version.label_names), wanted, raw)
        else:
            _add_bytes(response, "text_output", [p.generation.text.encode() for p in result.predictions], raw)
        return response


def add_to_server(servicer: OipServicer, server: grpc.Server) -> None:
    oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
