"""A PyTorch module built from an ONNX file of a plain convolutional network, weights and wiring alike.

Detectors published as ONNX files (CenterFace) run here in PyTorch, so that they batch, run on any
device torch has and in any of its precisions, as the other detectors do, with no ONNX runtime. The
file is read with the `onnx` package's own reader (the protobuf schema; the extra `facerec[detectors]`
installs it): every node becomes a torch module holding its initializers as parameters, and the
module's forward runs the nodes in the graph's order (ONNX requires it to be topological), freeing each
intermediate value after its last use so that memory holds a few feature maps, not the whole graph's.
Rewrites save work and give the same values (to float32 rounding): a BatchNormalization that alone
reads a convolution's output is folded into its weights and bias, a Relu that alone reads a
convolution's output is applied in place by that convolution (`Convolution`, which also picks the
fastest way to run it), a transposed convolution that paints blocks runs as a matrix product
(`Upsampling`), an Add writes its sum over an input that no other node reads, and a bfloat16 ReLU on
the CPU clamps its bits as int16 (`relu_`).

The operators are those such networks use (2-D convolutions and transposed convolutions, inference
batch normalization, ReLU, sigmoid, addition), each with its ONNX semantics; a file using any other
operator, or an attribute these do not support, is refused in one line naming the file and the node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facerec.plugin import FacerecError
from facerec_plugins.detectors.pointwise import blas_takes, is_pointwise, pointwise


@dataclass(frozen=True)
class Node:
    """One ONNX node as the builders see it: its operator, attributes, and inputs split into graph
    values (by name) and initializers (as arrays)."""

    op: str
    name: str
    attributes: dict[str, Any]
    inputs: list[str]  # every input name, in the node's order ("" for an omitted optional one)
    constants: dict[str, np.ndarray]  # the inputs that are initializers, by name
    owns_input: bool  # no other node, nor the graph's output, reads its first input: it may overwrite it

    def weight(self, index: int) -> torch.Tensor | None:
        """Input `index` as a tensor when it is an initializer; None when the node omits it."""
        if index >= len(self.inputs) or not self.inputs[index]:
            return None
        name = self.inputs[index]
        if name not in self.constants:
            raise _unsupported(self, f"input {name} is computed, not a stored weight")
        return torch.from_numpy(self.constants[name].copy())


class OnnxGraph(nn.Module):
    """An ONNX graph as a module: forward takes the graph's inputs in order and returns its outputs."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        wiring: Sequence[tuple[list[str], str]],
        inputs: list[str],
        outputs: list[str],
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.wiring = list(wiring)  # per layer: the value names it reads, the one it writes
        self.inputs, self.outputs = inputs, outputs
        last_use = {name: position for position, (reads, _) in enumerate(self.wiring) for name in reads}
        self.frees = [
            [name for name in dict.fromkeys(reads) if last_use[name] == position and name not in outputs]
            for position, (reads, _) in enumerate(self.wiring)
        ]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = dict(zip(self.inputs, inputs, strict=True))
        for layer, (reads, writes), frees in zip(self.layers, self.wiring, self.frees, strict=True):
            values[writes] = layer(*(values[name] for name in reads))
            for name in frees:
                del values[name]
        return tuple(values[name] for name in self.outputs)


class Add(nn.Module):
    """ONNX `Add` of two computed values (numpy broadcasting, as torch's). `owned`: the input (0 or 1)
    that nothing else reads, into which the sum is written when it has the sum's shape and type: one map
    not allocated (a fresh map costs page faults as well as its pass); None: a new tensor."""

    def __init__(self, owned: int | None = None) -> None:
        super().__init__()
        self.owned = owned

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.owned is not None and a.shape == b.shape and a.dtype == b.dtype:
            return a.add_(b) if self.owned == 0 else b.add_(a)
        return a + b


class Convolution(nn.Module):
    """An ONNX `Conv`, and the `Relu` that alone reads its output when `relu`. A 1 x 1 convolution of a
    float32 channels-last CPU picture runs as a matrix product (facerec_plugins.detectors.pointwise);
    other convolutions, and every one on other devices, in other types or under autocast, are the
    module's own. The ReLU is applied in place, no new map allocated."""

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        self.conv, self.relu = conv, relu
        self.pointwise = is_pointwise(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pointwise(self.conv, x) if self.pointwise and blas_takes(x) else self.conv(x)
        return relu_(y) if self.relu else y


class Relu(nn.Module):
    """ONNX `Relu`, in place when nothing else reads its input (half the memory of a wide layer)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_(x if self.inplace else x.clone())


def relu_(x: torch.Tensor) -> torch.Tensor:
    """`x.relu_()`, and for bfloat16 on the CPU an int16 clamp of the same bits: torch's bfloat16 ReLU
    there took 147 us on a 32 x 192 x 256 map, the clamp 30 (AMD EPYC), and a bfloat16 is negative
    exactly when its bits as an int16 are (a NaN with its sign bit set becomes 0, not NaN)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        x.view(torch.int16).clamp_min_(0)
        return x
    return x.relu_()


class Upsampling(nn.Module):
    """An ONNX `ConvTranspose` whose kernel is its stride, without padding, groups or dilation (CenterFace's
    2x upsampling): each input pixel paints its own block of output pixels. On a float32 channels-last
    CPU picture it runs as one matrix product whose rows are the blocks, reshuffled into place: torch's
    own transposed convolution there is a generic path that fills and folds a large buffer at every
    call. Elsewhere, torch's. The same values, to float32 rounding. The `Relu` that alone reads its
    output, when `relu`, in place."""

    def __init__(self, conv: nn.ConvTranspose2d, relu: bool = False) -> None:
        super().__init__()
        self.conv, self.relu = conv, relu
        self.blocks = conv.kernel_size == conv.stride and conv.groups == 1 and conv.dilation == (1, 1)
        self.blocks &= conv.padding == (0, 0) and conv.output_padding == (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not (self.blocks and blas_takes(x)):
            return relu_(conv(x)) if self.relu else conv(x)
        n, channels, height, width = x.shape
        rows, columns = conv.kernel_size
        weight = conv.weight.permute(0, 2, 3, 1).reshape(channels, -1)  # (in, row, column, out) per input
        blocks = x.permute(0, 2, 3, 1).reshape(-1, channels) @ weight
        blocks = blocks.view(n, height, width, rows, columns, -1).permute(0, 1, 3, 2, 4, 5)
        y = blocks.reshape(n, height * rows, width * columns, -1)
        if conv.bias is not None:
            y += conv.bias
        y = y.permute(0, 3, 1, 2)  # channels-last, a view
        return relu_(y) if self.relu else y


def load_graph(path: str | Path) -> OnnxGraph:
    """The network in the ONNX file `path`, in eval mode, as float32 on the CPU."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FacerecError(
            f"{path}: reading ONNX files needs the onnx package (pip install 'facerec[detectors]')"
        ) from None
    try:
        graph = onnx.load(str(path)).graph
        constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    except Exception as error:  # protobuf raises its own DecodeError, onnx ValueError and others
        raise FacerecError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    inputs = [value.name for value in graph.input if value.name not in constants]
    outputs = [value.name for value in graph.output]
    readers = Counter([name for proto in graph.node for name in proto.input] + outputs + inputs)
    layers, wiring = [], []
    for index, proto in enumerate(graph.node):
        node = Node(
            op=proto.op_type,
            name=proto.name or f"#{index}",
            attributes={
                attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in proto.attribute
            },
            inputs=list(proto.input),
            constants={name: constants[name] for name in proto.input if name in constants},
            owns_input=bool(proto.input) and readers[proto.input[0]] == 1,
        )
        if proto.domain not in ("", "ai.onnx") or node.op not in BUILDERS or len(proto.output) != 1:
            raise FacerecError(f"{path}: ONNX operator {node.op} (node {node.name}) is not supported")
        try:
            layers.append(BUILDERS[node.op](node))
        except _Unsupported as error:
            raise FacerecError(f"{path}: {error}") from None
        wiring.append(([name for name in node.inputs if name and name not in constants], proto.output[0]))
    return OnnxGraph(*_fuse(layers, wiring, inputs + outputs), inputs, outputs).eval()


def _fuse(
    layers: list[nn.Module], wiring: list[tuple[list[str], str]], kept: list[str]
) -> tuple[list[nn.Module], list[tuple[list[str], str]]]:
    """The module docstring's rewrites. `kept`: the graph's inputs and outputs, never overwritten."""
    readers = Counter([name for reads, _ in wiring for name in reads] + kept)
    producers = {writes: position for position, (_, writes) in enumerate(wiring)}
    dropped: set[int] = set()

    def absorb(position: int, source: int) -> None:
        """Layer `source` now writes what layer `position` wrote, and `position` is gone."""
        writes = wiring[position][1]
        wiring[source] = (wiring[source][0], writes)
        producers[writes] = source
        dropped.add(position)

    for position, (layer, (reads, _)) in enumerate(zip(layers, wiring, strict=True)):
        source = producers.get(reads[0]) if reads else None
        alone = source is not None and readers[reads[0]] == 1  # the only reader of its source's output
        convolution = alone and isinstance(layers[source], Convolution | Upsampling)
        if type(layer) is nn.Conv2d:
            layers[position] = Convolution(layer)
        elif type(layer) is nn.ConvTranspose2d:
            layers[position] = Upsampling(layer)
        elif isinstance(layer, nn.BatchNorm2d) and convolution and _foldable(layers[source]):
            _fold_batch_norm(layers[source].conv, layer)
            layers[source] = type(layers[source])(layers[source].conv)  # its bias may be new
            absorb(position, source)
        elif isinstance(layer, Relu) and convolution:
            layers[source].relu = True
            absorb(position, source)
        elif isinstance(layer, Add):
            owned = [index for index, name in enumerate(reads) if name in producers and readers[name] == 1]
            layer.owned = owned[0] if owned else None
    kept_positions = [position for position in range(len(layers)) if position not in dropped]
    return [layers[position] for position in kept_positions], [
        wiring[position] for position in kept_positions
    ]


def _foldable(layer: Convolution | Upsampling) -> bool:
    """Whether a batch norm after `layer` folds into it: no ReLU between, and for a transposed
    convolution one group (with more, its weight's second axis is a group's channels, not all)."""
    return not layer.relu and (isinstance(layer, Convolution) or layer.conv.groups == 1)


def _fold_batch_norm(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Make `conv` compute bn(conv(x)): each output channel's weights and bias times the norm's gain,
    its bias shifted. A transposed convolution's weight holds its output channels second."""
    with torch.no_grad():
        gain = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(gain)
        shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
        conv.weight.mul_(gain.reshape(shape))
        conv.bias = nn.Parameter((bias - bn.running_mean) * gain + bn.bias)


class _Unsupported(Exception):
    pass


def _unsupported(node: Node, why: str) -> _Unsupported:
    return _Unsupported(f"ONNX {node.op} node {node.name}: {why}")


def _expect(node: Node, name: str, allowed: Callable[[Any], bool], default: Any = None) -> Any:
    """Attribute `name` of `node` (or `default`), refused unless `allowed` says this module computes it."""
    value = node.attributes.get(name, default)
    if not allowed(value):
        raise _unsupported(node, f"attribute {name}={value!r} is not supported")
    return value


def _pads(node: Node) -> tuple[int, int]:
    """ONNX 2-D `pads` (top, left, bottom, right) as torch's symmetric (height, width) padding."""
    _expect(node, "auto_pad", lambda value: value in (None, b"NOTSET", "NOTSET"))
    top, left, *_ = _expect(node, "pads", lambda p: len(p) == 4 and p[:2] == p[2:], [0, 0, 0, 0])
    return top, left


def _convolution(node: Node, transposed: bool) -> nn.Module:
    weight, bias = node.weight(1), node.weight(2)
    if weight is None or weight.ndim != 4:
        raise _unsupported(node, "only 2-D convolutions with stored weights are supported")
    groups = _expect(node, "group", lambda g: isinstance(g, int) and g >= 1, 1)
    options: dict[str, Any] = {
        "kernel_size": tuple(weight.shape[2:]),
        "stride": tuple(_expect(node, "strides", lambda s: len(s) == 2, [1, 1])),
        "padding": _pads(node),
        "dilation": tuple(_expect(node, "dilations", lambda d: len(d) == 2, [1, 1])),
        "groups": groups,
        "bias": bias is not None,
    }
    _expect(node, "kernel_shape", lambda k: k is None or tuple(k) == options["kernel_size"])
    if transposed:
        _expect(node, "output_shape", lambda shape: shape is None)
        options["output_padding"] = tuple(_expect(node, "output_padding", lambda p: len(p) == 2, [0, 0]))
        layer = nn.ConvTranspose2d(weight.shape[0], weight.shape[1] * groups, **options)
    else:
        layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], **options)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _batch_norm(node: Node) -> nn.Module:
    """Inference batch normalization: (x - mean) / sqrt(var + epsilon) * scale + bias, per channel."""
    _expect(node, "training_mode", lambda mode: not mode, 0)
    scale, bias, mean, variance = (node.weight(index) for index in range(1, 5))
    layer = nn.BatchNorm2d(len(scale), eps=_expect(node, "epsilon", lambda e: e > 0, 1e-5))
    with torch.no_grad():
        layer.weight.copy_(scale)
        layer.bias.copy_(bias)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance)
    return layer


def _add(node: Node) -> nn.Module:
    if node.constants:
        raise _unsupported(node, "adding a stored constant is not supported")
    return Add()


BUILDERS: dict[str, Callable[[Node], nn.Module]] = {
    "Conv": lambda node: _convolution(node, transposed=False),
    "ConvTranspose": lambda node: _convolution(node, transposed=True),
    "BatchNormalization": _batch_norm,
    "Relu": lambda node: Relu(inplace=node.owns_input),
    "Sigmoid": lambda node: nn.Sigmoid(),
    "Add": _add,
}
