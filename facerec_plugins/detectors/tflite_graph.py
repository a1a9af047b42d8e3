"""A PyTorch module built from a TFLite file of a float convolutional network, weights and wiring alike.

Detectors published as TFLite files (MediaPipe's BlazeFace) run here in PyTorch, so that they batch, run
on any device torch has and in any of its precisions, as the other detectors do, with no TFLite
interpreter. The file is read with the `tflite` package (the reader generated from TFLite's flatbuffer
schema; the extra `facerec[detectors]` installs it). Weights stored as float16 behind a DEQUANTIZE
operator (as MediaPipe ships them) are widened to float32 when read, which is exact and is what the
interpreter computes with. Every other operator becomes a torch module, and the module's forward runs
them in the file's order (TFLite stores them topologically), freeing each intermediate value after its
last use.

TFLite is channels-last: 4-D values are (batch, height, width, channels) in the file. Here they are
torch's (batch, channels, height, width), in channels-last memory (the layout torch's CPU convolutions
run fastest on), so every operator that names an axis or a padding has it translated. The module takes
and returns 4-D values in torch's order; values of other ranks are as in the file. The batch is
whatever the caller passes, however many images the file declares (one, for BlazeFace).

Padding follows TFLite: `VALID` is none; `SAME` pads each spatial side so that the output has
ceil(input / stride) positions, the odd pixel going after (below, right), which torch's symmetric
padding cannot say; such a convolution pads first, then convolves without padding. The spatial sizes
the padding depends on are the file's, so the module takes inputs of exactly the file's size.

The operators are those such networks use (2-D and depthwise convolutions, max pooling, addition, ReLU,
zero padding, bilinear resizing, reshaping and concatenation), each with its TFLite semantics; a file
using any other operator, a quantized tensor, or an option these do not support, is refused in one
line naming the file and the operator.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerec.plugin import FacerecError
from facerec_plugins.detectors.pointwise import blas_takes, is_pointwise, pointwise

NHWC_TO_NCHW = (0, 3, 1, 2)  # permute(*NHWC_TO_NCHW) turns TFLite's axis order into torch's
NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}  # TFLite's axis a of a 4-D value is torch's axis NCHW_AXIS[a]


class TfliteGraph(nn.Module):
    """A TFLite graph as a module: forward takes the graph's inputs in order and returns its outputs."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        wiring: Sequence[tuple[list[int], int]],
        inputs: list[int],
        outputs: list[int],
        input_shapes: list[tuple[int, ...]],
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.wiring = list(wiring)  # per layer: the tensors (by index) it reads, the one it writes
        self.inputs, self.outputs = inputs, outputs
        self.input_shapes = input_shapes  # each input's shape in torch's order, batch excluded
        last_use = {index: position for position, (reads, _) in enumerate(self.wiring) for index in reads}
        self.frees = [
            [index for index in set(reads) if last_use[index] == position and index not in outputs]
            for position, (reads, _) in enumerate(self.wiring)
        ]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for value, shape in zip(inputs, self.input_shapes, strict=True):
            if tuple(value.shape[1:]) != shape:
                raise ValueError(f"this graph takes inputs of shape (N, {', '.join(map(str, shape))})")
        values = dict(zip(self.inputs, inputs, strict=True))
        for layer, (reads, writes), frees in zip(self.layers, self.wiring, self.frees, strict=True):
            # forward, not __call__: module hooks (bf16 autocast's) wrap the graph's call, and skipping
            # them per layer saves a few microseconds each, a millisecond of a 128-pixel network's five
            values[writes] = layer.forward(*(values[index] for index in reads))
            for index in frees:
                del values[index]
        return tuple(values[index] for index in self.outputs)


def load_graph(path: str | Path) -> TfliteGraph:
    """The first subgraph of the TFLite file `path` as a module: eval mode, float32 weights in
    channels-last memory."""
    import tflite  # here: reading a file is the only use, and the package is large to import

    path = Path(path)
    data = path.read_bytes()
    if not tflite.Model.ModelBufferHasIdentifier(data, 0):
        raise FacerecError(f"{path}: not a TFLite model file")
    model = tflite.Model.GetRootAs(data, 0)
    reader = _Reader(path, model, model.Subgraphs(0))
    layers, wiring = [], []
    for position in range(reader.graph.OperatorsLength()):
        op = reader.operator(position)
        if op.name == "DEQUANTIZE":
            reader.fold_dequantize(op)
            continue
        build = BUILDERS.get(op.name)
        if build is None:
            raise op.unsupported("this operator is not supported")
        layers.append(build(op))
        wiring.append((op.value_inputs(), op.outputs[0]))
    graph = reader.graph
    inputs = [graph.Inputs(i) for i in range(graph.InputsLength())]
    outputs = [graph.Outputs(i) for i in range(graph.OutputsLength())]
    shapes = [_torch_shape(reader.shape(index))[1:] for index in inputs]
    layers, wiring = _fuse_relus(layers, wiring, outputs)
    layers, wiring = _fold_channel_pads(layers, wiring, inputs + outputs)
    return TfliteGraph(layers, wiring, inputs, outputs, shapes).eval().to(memory_format=torch.channels_last)


def _fuse_relus(
    layers: list[nn.Module], wiring: list[tuple[list[int], int]], outputs: list[int]
) -> tuple[list[nn.Module], list[tuple[list[int], int]]]:
    """Each RELU of a value that nothing else reads, made by an operator with a fused activation slot
    left empty (BlazeFace's residual sums and convolutions are stored so), becomes that operator's
    activation, applied in place: one pass over a feature map fewer, the same values."""
    readers = Counter(index for reads, _ in wiring for index in reads)
    producers = {writes: position for position, (_, writes) in enumerate(wiring)}
    kept: list[int] = []
    for position, (layer, (reads, writes)) in enumerate(zip(layers, wiring, strict=True)):
        source = producers.get(reads[0]) if isinstance(layer, nn.ReLU) else None
        if (
            source is not None
            and readers[reads[0]] == 1
            and reads[0] not in outputs
            and isinstance(getattr(layers[source], "activation", None), nn.Identity)
        ):
            layers[source].activation = nn.ReLU(inplace=True)
            wiring[source] = (wiring[source][0], writes)
            producers[writes] = source
            continue
        kept.append(position)
    return [layers[position] for position in kept], [wiring[position] for position in kept]


def _fold_channel_pads(
    layers: list[nn.Module], wiring: list[tuple[list[int], int]], kept: list[int]
) -> tuple[list[nn.Module], list[tuple[list[int], int]]]:
    """Each ADD writes its sum over an input nothing else reads (`kept`: the graph's inputs and outputs,
    never overwritten), and takes in a PAD of zero channels after the last (BlazeFace's shortcuts widen
    so) that only it reads, adding the unpadded value to the leading channels: the same sums, two fresh
    feature maps and the padding's pass fewer (a fresh map costs page faults as well as its pass)."""
    readers = Counter([index for reads, _ in wiring for index in reads] + kept)
    producers = {writes: position for position, (_, writes) in enumerate(wiring)}
    dropped: set[int] = set()
    for position, (layer, (reads, _)) in enumerate(zip(layers, wiring, strict=True)):
        if not isinstance(layer, Add):
            continue
        for slot, index in enumerate(reads):
            pad = layers[producers[index]] if index in producers else None
            if isinstance(pad, Pad) and readers[index] == 1 and not any(pad.pads[:-1]):
                dropped.add(producers[index])
                layer.widen = True
                other = reads[1 - slot]
                reads = [other, wiring[producers[index]][0][0]]
                break
        owned = [index in producers and readers[index] == 1 for index in reads]
        if not layer.widen and owned == [False, True]:
            reads, owned = reads[::-1], owned[::-1]  # a + b is b + a, to the bit
        layer.in_place = owned[0]
        wiring[position] = (reads, wiring[position][1])
    kept_positions = [position for position in range(len(layers)) if position not in dropped]
    return [layers[position] for position in kept_positions], [
        wiring[position] for position in kept_positions
    ]


@dataclass
class Operator:
    """One TFLite operator as the builders see it: its name, tensors and options, and the file's reader."""

    reader: _Reader
    position: int
    name: str
    inputs: list[int]  # tensor indices; -1 for an omitted optional input
    outputs: list[int]
    options: object | None  # the flatbuffer table of its builtin options

    def option(self, kind: str):
        """The builtin options read as tflite's class `kind` (Conv2DOptions, say)."""
        import tflite

        options = getattr(tflite, kind)()
        if self.options is not None:
            options.Init(self.options.Bytes, self.options.Pos)
        return options

    def constant(self, slot: int) -> np.ndarray | None:
        """Input `slot` as stored in the file; None when the operator omits it."""
        if slot >= len(self.inputs) or self.inputs[slot] < 0:
            return None
        found = self.reader.constants.get(self.inputs[slot])
        if found is None:
            raise self.unsupported(f"input {slot} is computed, not stored in the file")
        return found

    def value_inputs(self) -> list[int]:
        """The inputs computed by the graph, in order; each builder takes its stored inputs itself."""
        return [index for index in self.inputs if index >= 0 and index not in self.reader.constants]

    def shape(self, slot: int) -> tuple[int, ...]:
        """The file's shape of input `slot`."""
        return self.reader.shape(self.inputs[slot])

    def unsupported(self, why: str) -> FacerecError:
        return FacerecError(f"{self.reader.path}: operator {self.position} ({self.name}): {why}")


class _Reader:
    """The file's tensors: shapes, and the stored (constant) ones as arrays."""

    def __init__(self, path: Path, model, graph) -> None:
        import tflite

        self.path, self.model, self.graph = path, model, graph
        self.type_names = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
        self.constants: dict[int, np.ndarray] = {}
        for index in range(graph.TensorsLength()):
            tensor = graph.Tensors(index)
            buffer = model.Buffers(tensor.Buffer())
            if buffer is not None and buffer.DataLength():
                self.constants[index] = self._array(index, tensor, buffer)

    def _array(self, index: int, tensor, buffer) -> np.ndarray:
        kind = self.type_names.get(tensor.Type(), str(tensor.Type()))
        dtype = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64}.get(kind)
        quantization = tensor.Quantization()
        if dtype is None or (quantization is not None and quantization.ScaleLength()):
            raise FacerecError(f"{self.path}: tensor {index} is {kind}, quantized or of a type not supported")
        if tensor.Sparsity() is not None:
            raise FacerecError(f"{self.path}: tensor {index} is stored sparse, which is not supported")
        return np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtype).reshape(self.shape(index))

    def shape(self, index: int) -> tuple[int, ...]:
        tensor = self.graph.Tensors(index)
        return tuple(int(side) for side in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

    def operator(self, position: int) -> Operator:
        from tflite.utils import opcode2name

        op = self.graph.Operators(position)
        code = self.model.OperatorCodes(op.OpcodeIndex())
        # small codes sit in the deprecated int8 field, larger ones in the int32 field
        name = opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        return Operator(
            reader=self,
            position=position,
            name=name,
            inputs=[op.Inputs(i) for i in range(op.InputsLength())],
            outputs=[op.Outputs(i) for i in range(op.OutputsLength())],
            options=op.BuiltinOptions(),
        )

    def fold_dequantize(self, op: Operator) -> None:
        """A DEQUANTIZE of stored float16 weights: their float32 values become the output's, exactly."""
        stored = op.constant(0)
        if stored.dtype != np.float16:
            raise op.unsupported("only float16 weights can be dequantized here")
        self.constants[op.outputs[0]] = stored.astype(np.float32)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in NHWC_TO_NCHW) if len(shape) == 4 else shape


def _activation(op: Operator, code: int) -> nn.Module:
    """The fused activation TFLite applies to an operator's output."""
    import tflite

    kinds = tflite.ActivationFunctionType
    if code == kinds.NONE:
        return nn.Identity()
    if code == kinds.RELU:  # in place: the operator's output is its own
        return nn.ReLU(inplace=True)
    if code == kinds.RELU6:
        return nn.ReLU6(inplace=True)
    raise op.unsupported(f"fused activation {code} is not supported")


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding along one axis: (before, after), the odd pixel after."""
    reach = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def _padding(op: Operator, options, kernel: tuple[int, int], dilation: tuple[int, int]) -> list[int]:
    """(top, bottom, left, right) padding of a windowed operator on the file's input size."""
    import tflite

    if options.Padding() == tflite.Padding.VALID:
        return [0, 0, 0, 0]
    _, height, width, _ = op.shape(0)
    top, bottom = _same_padding(height, kernel[0], options.StrideH(), dilation[0])
    left, right = _same_padding(width, kernel[1], options.StrideW(), dilation[1])
    return [top, bottom, left, right]


class Windowed(nn.Module):
    """A windowed operator (convolution, pooling) with TFLite's padding and fused activation.

    Symmetric padding goes to the operator itself; uneven padding is applied first with `fill`. A 1 x 1
    convolution of a float32 channels-last CPU picture runs as a matrix product
    (facerec_plugins.detectors.pointwise): 0.4 ms of BlazeFace's 5 ms a frame, one frame at a time.
    """

    def __init__(self, body: nn.Module, padding: list[int], activation: nn.Module, fill: float = 0.0) -> None:
        super().__init__()
        top, bottom, left, right = padding
        self.pre_pad = None if (top == bottom and left == right) else (left, right, top, bottom)
        self.fill = fill
        self.body, self.activation = body, activation
        self.pointwise = isinstance(body, nn.Conv2d) and is_pointwise(body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad, value=self.fill)
        if self.pointwise and blas_takes(x):
            return self.activation.forward(pointwise(self.body, x))
        return self.activation.forward(self.body.forward(x))  # forward: as TfliteGraph.forward says


def _convolution(op: Operator) -> nn.Module:
    """CONV_2D (filters O x H x W x I) and DEPTHWISE_CONV_2D (1 x H x W x I*M) as one torch Conv2d."""
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    options = op.option("DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
    weight = op.constant(1)
    if weight.dtype != np.float32:
        raise op.unsupported(f"{weight.dtype} filters are not supported")
    channels = op.shape(0)[3]
    if depthwise:
        # (I*M, 1, H, W): output c*M + m reads input c, as in torch's groups
        weight = weight.transpose(3, 0, 1, 2)
        groups = channels
    else:
        weight = weight.transpose(0, 3, 1, 2)
        groups = 1
    if weight.shape[1] * groups != channels:
        raise op.unsupported("filters do not fit the input's channels")
    kernel = weight.shape[2:]
    dilation = (options.DilationHFactor(), options.DilationWFactor())
    padding = _padding(op, options, kernel, dilation)
    conv = nn.Conv2d(
        channels,
        weight.shape[0],
        kernel,
        stride=(options.StrideH(), options.StrideW()),
        padding=(padding[0], padding[2]) if padding[0] == padding[1] and padding[2] == padding[3] else 0,
        dilation=dilation,
        groups=groups,
    )
    bias = op.constant(2)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        conv.bias.copy_(torch.tensor(bias) if bias is not None else torch.zeros(weight.shape[0]))
    return Windowed(conv, padding, _activation(op, options.FusedActivationFunction()))


def _max_pool(op: Operator) -> nn.Module:
    """MAX_POOL_2D; SAME padding never wins a maximum, so it is filled with -inf."""
    options = op.option("Pool2DOptions")
    kernel = (options.FilterHeight(), options.FilterWidth())
    padding = _padding(op, options, kernel, (1, 1))
    even = padding[0] == padding[1] and padding[2] == padding[3]
    pool = nn.MaxPool2d(
        kernel, stride=(options.StrideH(), options.StrideW()), padding=(padding[0], padding[2]) if even else 0
    )
    return Windowed(pool, padding, _activation(op, options.FusedActivationFunction()), fill=-math.inf)


class Add(nn.Module):
    """ADD of two computed values (broadcasting as TFLite's), then its fused activation. `in_place`: the
    first value is this operator's alone, and a sum of its shape and type is written over it; `widen`:
    the second value is a channel PAD's input, the first's leading channels (the padding's zeros leave
    the rest as they are)."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.in_place = self.widen = False

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # under autocast a sum may widen the type; a broadcast sum may be larger than `a`
        in_place = self.in_place and a.dtype == b.dtype and (self.widen or a.shape == b.shape)
        if self.widen:
            total = a if in_place else a.clone()
            total[:, : b.shape[1]] += b
        else:
            total = a.add_(b) if in_place else a + b
        return self.activation.forward(total)


def _add(op: Operator) -> nn.Module:
    if len(op.value_inputs()) != 2:
        raise op.unsupported("only the sum of two computed values is supported")
    if op.shape(0) != op.shape(1):
        raise op.unsupported("only the sum of two values of one shape is supported")
    return Add(_activation(op, op.option("AddOptions").FusedActivationFunction()))


class Pad(nn.Module):
    """PAD with zeros, TFLite's per-axis (before, after) pairs in torch's (last axis first) order."""

    def __init__(self, pads: tuple[int, ...]) -> None:
        super().__init__()
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


def _pad(op: Operator) -> nn.Module:
    pairs = op.constant(1).reshape(-1, 2).tolist()
    if len(pairs) == 4:
        pairs = [pairs[axis] for axis in NHWC_TO_NCHW]
    if pairs[0] != [0, 0]:
        raise op.unsupported("padding the batch axis is not supported")
    return Pad(tuple(side for pair in reversed(pairs[1:]) for side in pair))


class ResizeBilinear(nn.Module):
    def __init__(self, size: tuple[int, int], align_corners: bool) -> None:
        super().__init__()
        self.size, self.align_corners = size, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)


def _resize_bilinear(op: Operator) -> nn.Module:
    """RESIZE_BILINEAR: half-pixel centres are torch's align_corners=False, aligned corners its True;
    TFLite's legacy sampling (neither) has no torch equivalent and is refused."""
    options = op.option("ResizeBilinearOptions")
    if options.AlignCorners() == options.HalfPixelCenters():
        raise op.unsupported("only half_pixel_centers or align_corners resizing is supported")
    height, width = (int(side) for side in op.constant(1))
    return ResizeBilinear((height, width), bool(options.AlignCorners()))


class Reshape(nn.Module):
    """RESHAPE in TFLite's element order: a 4-D input is read channels-last, and a 4-D output (the
    file's `shape` after the batch axis has three sides) is put back in torch's order."""

    def __init__(self, shape: tuple[int, ...], from_4d: bool) -> None:
        super().__init__()
        self.shape, self.from_4d, self.to_4d = shape, from_4d, len(shape) == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_4d:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.shape)
        return x.permute(*NHWC_TO_NCHW) if self.to_4d else x


def _reshape(op: Operator) -> nn.Module:
    """The output shape is the file's, the batch axis kept as the caller's."""
    shape = op.reader.shape(op.outputs[0])
    if not shape or shape[0] != op.shape(0)[0]:
        raise op.unsupported("only reshapes that keep the batch axis are supported")
    return Reshape(shape[1:], len(op.shape(0)) == 4)


class Concatenation(nn.Module):
    def __init__(self, axis: int, activation: nn.Module) -> None:
        super().__init__()
        self.axis, self.activation = axis, activation

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        return self.activation(torch.cat(values, self.axis))


def _concatenation(op: Operator) -> nn.Module:
    options = op.option("ConcatenationOptions")
    rank = len(op.shape(0))
    axis = options.Axis() % rank
    if len(op.value_inputs()) != len(op.inputs):
        raise op.unsupported("only concatenations of computed values are supported")
    if axis == 0:
        raise op.unsupported("concatenating along the batch axis is not supported")
    return Concatenation(
        NCHW_AXIS[axis] if rank == 4 else axis, _activation(op, options.FusedActivationFunction())
    )


BUILDERS = {
    "CONV_2D": _convolution,
    "DEPTHWISE_CONV_2D": _convolution,
    "MAX_POOL_2D": _max_pool,
    "ADD": _add,
    "RELU": lambda op: nn.ReLU(),
    "PAD": _pad,
    "RESIZE_BILINEAR": _resize_bilinear,
    "RESHAPE": _reshape,
    "CONCATENATION": _concatenation,
}
