"""Where a model runs and in which dtype: one choice shared by the services
that load models (inference now; the trainer's child can use the same rules).

Device spec: `auto` (CUDA, then Apple MPS, then the CPU), `cpu`, `mps`,
`cuda`, `cuda:N`, or `sharded` (transformers' `device_map="auto"`: the layers
spread over the visible GPUs, for a base too big for one). Dtype spec: `auto`
(bfloat16 on a GPU that supports it, else float16 on a GPU; float32 on the
CPU, where half-precision matmuls are slow and lossy) or an explicit
`float32` / `bfloat16` / `float16`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHARDED = "sharded"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Placement:
    """A resolved device spec: `device` holds the inputs (and, unless sharded, every weight)."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype
    sharded: bool = False

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained`: the dtype, and device_map when sharded."""
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.sharded:
            kwargs["device_map"] = "auto"
        return kwargs

    def describe(self) -> str:
        where = f"{SHARDED} from {self.device}" if self.sharded else str(self.device)
        return f"{where}, {str(self.dtype).removeprefix('torch.')}"


def check_spec(device: str, dtype: str) -> None:
    """Validates the settings' spelling without importing torch (config time)."""
    d = device.strip().lower()
    ok = d in {"auto", "cpu", "mps", "cuda", SHARDED} or (d.startswith("cuda:") and d[5:].isdigit())
    if not ok:
        raise ValueError(f"a device must be auto, cpu, mps, cuda, cuda:N or {SHARDED}, got {device!r}")
    if dtype.strip().lower() not in DTYPES:
        raise ValueError(f"a dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def choose_device(spec: str = "auto") -> tuple[Any, bool]:
    """(torch.device, sharded) for a device spec; an explicit device that is
    not there is an error (ValueError), not a silent fallback to the CPU."""
    import torch

    spec = spec.strip().lower()
    check_spec(spec, "auto")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), False
        if torch.backends.mps.is_available():
            return torch.device("mps"), False
        return torch.device("cpu"), False
    if spec == SHARDED:
        if not torch.cuda.is_available():
            raise ValueError(f"device {SHARDED} needs CUDA GPUs, and none is visible")
        return torch.device("cuda", 0), True
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec} asked for, but CUDA is not available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        device = torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps asked for, but MPS is not available")
    return device, False


def choose_dtype(device: Any, spec: str = "auto") -> Any:
    """The dtype for weights on `device` (see the module docstring)."""
    import torch

    spec = spec.strip().lower()
    check_spec("auto", spec)
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def place(device: str = "auto", dtype: str = "auto") -> Placement:
    where, sharded = choose_device(device)
    return Placement(where, choose_dtype(where, dtype), sharded)


def input_device(model: Any) -> Any:
    """Where a model's inputs go: its input embeddings' device (with a
    device_map the first shard, which `model.device` does not always name)."""
    embeddings = model.get_input_embeddings()
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device
