"""`--precision fp32|int8|bf16|auto`: the arithmetic a backbone (and, at bf16, a detector) runs in.

- fp32: the backbone's fused inference network (Backbone.for_inference).
- int8: that network quantized statically, calibrated on real faces, cached (facerec.pipeline.int8); CPU only.
- bf16: a bfloat16 copy of the fused network run under autocast (ops autocast keeps in float32 stay
  there), its embeddings normalized again in float32. On CPUs with AVX512-BF16 or AMX the matrix units
  take bf16 natively; elsewhere PyTorch emulates it, with the same numbers, several times slower than
  fp32. A detector at bf16 runs each of its networks under autocast, their outputs cast back to float32,
  so boxes, suppression and landmarks are computed in float32 (`networks_in_bf16`). Even so, MTCNN's
  cascade amplifies bf16's rounding: on the shared photos it finds the same faces, with boxes at IoU
  0.77-0.99 to FP32's. So only `--precision bf16` runs a detector at bf16, never auto, and a gallery
  records the detector's precision.
- auto: the fastest of these that this machine runs natively and that keeps the backbone's embeddings
  within cosine COSINE of FP32, measured once per machine and model (facerec.pipeline.autoprecision).

What a machine runs natively is a function of its CPU's flags (as /proc/cpuinfo lists them) or its GPU,
kept apart from reading them (`candidates`, `int8_weight_bits`) so that every case is tested on any machine.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import sys
import threading
from collections.abc import Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from facerec import defaults
from facerec.errors import UsageError

if TYPE_CHECKING:
    from facerec.contract.parts import Backbone

FP32, INT8, BF16, AUTO = "fp32", "int8", "bf16", "auto"
PRECISIONS = (FP32, INT8, BF16)  # what a network runs at
CHOICES = (*PRECISIONS, AUTO)  # what a user may ask for
COSINE = 0.9995  # the worst cosine to FP32 that auto keeps, and that lets precisions stand in for each other
FLOAT_FAMILY = frozenset({FP32, BF16})  # bf16 rounds FP32's numbers: cosine 0.99999 on faces
ENGINE = "x86"  # torch's quantized engine for int8

# The CPU flags that decide precisions (and that benchmarks print): native bf16, 8-bit dot products.
RELEVANT_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
    "amx_int8",
)  # fmt: skip
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
# Without these, x86's int8 kernels add pairs of u8 x s8 products in 16 bits (AVX2's vpmaddubsw), which
# saturates with 8-bit weights; VNNI and AMX sum in 32 bits. (AVX-VNNI, 256-bit, is not counted: not
# every kernel of torch's x86 engine uses it.)
FULL_INT8 = frozenset({"avx512_vnni", "amx_int8"})


@dataclass(frozen=True)
class Machine:
    """What a precision's speed depends on: the CPU model and its relevant flags, or the GPU."""

    cpu: str
    flags: frozenset[str]
    gpu: str | None = None  # the CUDA device's name and compute capability, when the network runs there

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "flags": sorted(self.flags), "gpu": self.gpu}

    def describe(self) -> str:
        """One line for messages and benchmarks: the CPU, the flags it has and those it lacks."""
        has = " ".join(flag for flag in RELEVANT_FLAGS if flag in self.flags) or "none"
        lacks = " ".join(flag for flag in RELEVANT_FLAGS if flag not in self.flags) or "none"
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu} (flags: {has}; lacks: {lacks}){gpu}"


@functools.cache
def this_cpu() -> tuple[str, frozenset[str]]:
    """The CPU's model name and its RELEVANT_FLAGS, from /proc/cpuinfo (elsewhere: no flags known)."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return model, frozenset(flags) & frozenset(RELEVANT_FLAGS)


def machine(device: torch.device) -> Machine:
    """This machine as seen by a network on `device`."""
    cpu, flags = this_cpu()
    gpu = None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return Machine(cpu, flags, gpu)


def native_bf16(flags: Set[str]) -> bool:
    return bool(flags & NATIVE_BF16)


def int8_weight_bits(flags: Set[str]) -> int:
    """8-bit weights where the CPU sums int8 products in 32 bits (VNNI, AMX), else 7 (see FULL_INT8)."""
    return 8 if flags & FULL_INT8 else 7


def candidates(
    flags: Set[str], device_type: str, quantizable: bool, gpu_bf16: bool = False
) -> tuple[str, ...]:
    """The precisions worth measuring for a backbone on this machine, FP32 first: int8 on a CPU when the
    backbone can be quantized and torch has its x86 engine; bf16 where it runs natively (a CPU with
    AVX512-BF16 or AMX, a GPU of compute capability 8 or more: `gpu_bf16`). Emulated bf16 is never
    faster than FP32, so it is not measured."""
    found = [FP32]
    if device_type == "cpu":
        if quantizable and ENGINE in torch.backends.quantized.supported_engines:
            found.append(INT8)
        if native_bf16(flags):
            found.append(BF16)
    elif device_type == "cuda" and gpu_bf16:
        found.append(BF16)
    return tuple(found)


def quantizable(plugin: Backbone) -> bool:
    return callable(getattr(plugin, "for_quantization", None))


def default_precision() -> str:
    """What a command runs at when --precision is not given: FACEREC_PRECISION, else auto."""
    found = os.environ.get(defaults.PRECISION_VARIABLE) or defaults.PRECISION
    if found not in CHOICES:
        raise UsageError(
            f"{defaults.PRECISION_VARIABLE}={found}: unknown precision (available: {', '.join(CHOICES)})"
        )
    return found


def check_precision(precision: str, plugin: Backbone, name: str) -> None:
    """Refuse, before any weights load, a precision the backbone or this machine cannot run."""
    if precision not in CHOICES:
        raise UsageError(f"--precision: unknown precision '{precision}' (available: {', '.join(CHOICES)})")
    if precision != INT8:
        return
    if not quantizable(plugin):
        raise UsageError(
            f"--precision int8: backbone '{name}' cannot be quantized (it declares no for_quantization); "
            "use --precision fp32"
        )
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise UsageError(f"--precision int8: this PyTorch build has no '{ENGINE}' quantized engine")


def int8_device(device: str | None) -> str:
    """int8 networks run on the CPU: `auto` means the CPU; any other device is refused."""
    if device in (None, "auto") or torch.device(device).type == "cpu":
        return "cpu"
    raise UsageError(f"--device {device}: --precision int8 runs on the CPU only; use --device cpu")


def interchangeable(recorded: str, cosine: float | None, other: str) -> bool:
    """Whether embeddings made at `other` may be compared with embeddings made at `recorded`, whose
    worst cosine to FP32 was measured as `cosine` (None: not measured). FP32 and bf16 stand in for each
    other; either stands in for a precision measured within COSINE of FP32 (an int8 network), since FP32
    is then within COSINE of it. Two int8 networks are not compared here (each is its own, see
    facerec.gallery.provenance)."""
    if other == recorded:
        return True
    if recorded in FLOAT_FAMILY:
        return other in FLOAT_FAMILY
    return other in FLOAT_FAMILY and cosine is not None and cosine >= COSINE


# bf16.


class Bfloat16Network(nn.Module):
    """A bf16 copy of a (fused, float32) network, run under autocast, with float32 unit vectors out.

    The copy holds its weights in bf16 once, rather than autocast casting them at every call; autocast
    still casts what the network's own code makes in float32, and keeps in float32 the operations it
    lists as needing it. The embeddings are normalized again in float32: in bf16 their norm is off by
    up to 0.003.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = bf16_copy(network)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        with torch.autocast(faces.device.type, dtype=torch.bfloat16):
            vectors = self.network(faces.to(torch.bfloat16)).float()
        return vectors / vectors.norm(dim=1, keepdim=True)


def bf16_copy(network: nn.Module) -> nn.Module:
    """A copy of `network` with its floating parameters and buffers in bf16; `network` is untouched.

    The copy is made with each floating tensor already cast (deepcopy's memo), so the float32 weights are
    never copied first: 27 ms against 53-66 for inception-resnet's fused network (Intel Xeon with AMX,
    2 cores). A tensor that two modules share stays one tensor in the copy."""
    cast: dict[int, Any] = {}
    for tensor in (*network.parameters(), *network.buffers()):
        if tensor.is_floating_point():
            half = tensor.detach().to(torch.bfloat16)
            cast[id(tensor)] = (
                nn.Parameter(half, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else half
            )
    return copy.deepcopy(network, cast)


def note_emulated_bf16(device: torch.device) -> None:
    """Say once, on stderr, that bf16 on this CPU is emulated: it is correct, and slower than fp32."""
    if device.type == "cpu" and not native_bf16(this_cpu()[1]):
        _once(
            f"--precision bf16: this CPU ({this_cpu()[0]}) has no native bf16 (avx512_bf16, amx_bf16); "
            "PyTorch emulates it: the same numbers, slower than fp32"
        )


@functools.cache
def _once(message: str) -> None:
    stderr_note(message)


_scope = threading.local()  # per thread: how deep inside a top-level module call, and its autocast
_hooks_lock = threading.Lock()
_hooks: list[Any] = []


@contextmanager
def networks_in_bf16() -> Iterator[None]:
    """Within this block, in this thread, every torch module called from outside any other runs under
    bf16 autocast and returns float32: a detector's networks compute in bf16, and the code between them
    (boxes, suppression, landmarks) stays float32, as it was written for. Works for any detector, since
    it hooks module calls, not a detector's code; other threads are untouched."""
    _install_hooks()
    previous = getattr(_scope, "state", None)
    _scope.state = {"depth": 0, "open": []}
    try:
        yield
    finally:
        for autocast in reversed(_scope.state["open"]):  # a network that raised left its autocast open
            autocast.__exit__(None, None, None)
        _scope.state = previous


def _install_hooks() -> None:
    """Global module hooks, installed once per process, inactive outside `networks_in_bf16`."""
    with _hooks_lock:
        if not _hooks:
            modules = torch.nn.modules.module
            _hooks.append(modules.register_module_forward_pre_hook(_enter_network))
            _hooks.append(modules.register_module_forward_hook(_leave_network))


def _enter_network(module: nn.Module, args: tuple) -> None:
    state = getattr(_scope, "state", None)
    if state is None:
        return
    if state["depth"] == 0:
        device = next((arg.device.type for arg in args if isinstance(arg, torch.Tensor)), "cpu")
        autocast = torch.autocast(device, dtype=torch.bfloat16)
        autocast.__enter__()
        state["open"].append(autocast)
    state["depth"] += 1


def _leave_network(module: nn.Module, args: tuple, output: Any) -> Any:
    state = getattr(_scope, "state", None)
    if state is None:
        return None
    state["depth"] -= 1
    if state["depth"] > 0:
        return None
    state["open"].pop().__exit__(None, None, None)
    return _float32(output)


def _float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, tuple | list):
        items = [_float32(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {key: _float32(item) for key, item in value.items()}
    return value


def stderr_note(message: str) -> None:
    """One line on stderr: calibrating and measuring take a while, once, and the user should know why."""
    print(message, file=sys.stderr, flush=True)
