"""The `dlib-resnet` backbone: dlib's 29-layer metric-learning ResNet (examples/dnn_face_recognition_ex.cpp).

It is the network behind dlib's `face_recognition_model_v1` and the face_recognition package: 150x150 RGB
face chips (as dlib's get_face_chip cuts them) in, 128-d descriptors out. The layers follow dlib's
(dlib/dnn/layers.h) one for one, so its pretrained file loads as it is and the outputs equal dlib's:

- dlib's `con` is a convolution with a bias, padded by kernel // 2 when its stride is 1 and not at all
  otherwise (con_'s default padding);
- dlib's `affine` (what a trained `bn_con` becomes for use) is a learnable per-channel scale and shift.
  It stays that, rather than becoming a BatchNorm2d, because the file holds only the folded scale and
  shift, and batch statistics in training mode would change the function the weights were trained for;
  a scale and shift behaves the same in training and evaluation, with any batch size;
- a residual block is relu(shortcut + affine(con(relu(affine(con(x)))))); blocks that halve the grid
  take a stride-2 first convolution and a 2x2 stride-2 average pool of x as the shortcut. dlib's add_prev
  adds tensors of different shapes by zero-padding the smaller one at the end of each dimension (more
  channels, and a 4x4 shortcut against a 3x3 block output at the 256-channel stage);
- an average over the whole grid (avg_pool_everything) and a 256 -> 128 linear map without bias
  (fc_no_bias) make the descriptor.

dlib's descriptors are not unit vectors: their norms run from 1.32 to 1.60 (mean 1.45) on the 21 faces of
facerec's test photos, and face_recognition compares them raw, calling two faces the same person up to a
Euclidean distance of 0.6. facerec's backbones return unit vectors (its galleries, heads, losses and JSON
output rely on it), so `forward` normalizes them; `descriptors` gives dlib's raw ones. On unit vectors
face_recognition's 0.6 becomes 0.6 / norm: 0.41 for a typical descriptor, 0.375 for the longest ones. Hence
`THRESHOLD` 0.38: on every pair of those 21 faces (and of the 15 faces of benchmarks/bench_dlib.py) it makes
face_recognition's decision, with room on both sides (same person at most 0.29, different people at least
0.40); 0.6 on unit vectors would have called 44% of different people the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerec.plugin import FacerecError, InputRecipe, Register, WeightFile, check_fits, hookimpl
from facerec_plugins.dlib.dnn import DlibLayer, DlibNetwork, read_network
from facerec_plugins.dlib.models import RESNET_V1
from facerec_plugins.fusedconv import convolve

CHIP_SIZE = 150
EMBEDDING_SIZE = 128
FEATURE_SIZE = 256
STEM_CHANNELS = 32
# (output channels, stride) of the 14 residual blocks, from the input up (dlib's alevel4 ... alevel0).
BLOCKS = (
    *[(32, 1)] * 3,
    (64, 2),
    *[(64, 1)] * 3,
    (128, 2),
    *[(128, 1)] * 2,
    (256, 2),
    *[(256, 1)] * 2,
    (256, 2),
)
# dlib's input_rgb_image_sized: each channel becomes (pixel - average) / 256.
DLIB_AVERAGE_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0
THRESHOLD = 0.38  # face_recognition's tolerance 0.6 on raw descriptors, for unit vectors (see above)


def dlib_padding(kernel: int, stride: int) -> int:
    """dlib's default padding for con_ and the pooling layers: kernel // 2 at stride 1, else none."""
    return kernel // 2 if stride == 1 else 0


class Affine(nn.Module):
    """dlib's affine layer in conv mode: x * weight[c] + bias[c] for each channel c, both learnable."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class ConvAffine(nn.Module):
    """dlib's affine<con<...>>: a convolution with bias, then a per-channel scale and shift."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        padding = dlib_padding(kernel, stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding)
        self.affine = Affine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.conv(x))


def zero_padded_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b as dlib's add_prev computes it: the smaller tensor zero-padded at the end of each dimension."""
    if a.shape == b.shape:
        return a + b
    target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]
    return _padded_to(a, target) + _padded_to(b, target)


def _padded_to(x: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    channels, rows, columns = target
    return F.pad(x, (0, columns - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1]))


class ResidualBlock(nn.Module):
    """dlib's ares (stride 1) and ares_down (stride 2): relu(shortcut(x) + block(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = ConvAffine(in_channels, out_channels, 3, stride)
        self.conv2 = ConvAffine(out_channels, out_channels, 3, 1)
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, 2) if self.stride == 2 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.conv2(F.relu(self.conv1(x)))
        return F.relu(zero_padded_sum(block, self.shortcut(x)))


class DlibResnet(nn.Module):
    """The trainable network. `forward` returns unit embeddings, `descriptors` dlib's raw descriptors."""

    def __init__(self):
        super().__init__()
        self.stem = ConvAffine(3, STEM_CHANNELS, 7, 2)
        channels = [STEM_CHANNELS, *(out for out, _ in BLOCKS)]
        self.blocks = nn.Sequential(
            *(ResidualBlock(channels[i], out, stride) for i, (out, stride) in enumerate(BLOCKS))
        )
        self.embed = nn.Linear(FEATURE_SIZE, EMBEDDING_SIZE, bias=False)

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        return self.embed(self.blocks(grid).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptors(x), dim=1)


# The inference form.


def folded(layer: ConvAffine) -> nn.Conv2d:
    """The convolution with the affine scale and shift folded into its weights and bias (no autograd)."""
    conv, affine = layer.conv, layer.affine
    with torch.device("meta"):  # no initialization: the folded weights replace it
        out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    gain = affine.weight.detach()
    out.weight = nn.Parameter(conv.weight.detach() * gain.view(-1, 1, 1, 1), requires_grad=False)
    out.bias = nn.Parameter(conv.bias.detach() * gain + affine.bias.detach(), requires_grad=False)
    return out


class FusedBlock(nn.Module):
    """A ResidualBlock with folded convolutions, computed in place where it can be, its ReLUs and the
    sum of a stride-1 block done inside the convolutions' kernels (facerec_plugins.fusedconv)."""

    def __init__(self, block: ResidualBlock):
        super().__init__()
        self.conv1, self.conv2, self.stride = folded(block.conv1), folded(block.conv2), block.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = convolve(self.conv1, x, relu=True)
        if self.stride == 1:
            return convolve(self.conv2, inner, relu=True, add_to=x)  # x: read by no other layer
        return zero_padded_sum(self.conv2(inner), F.avg_pool2d(x, 2, 2)).relu_()


class FusedDlibResnet(nn.Module):
    """Inference-only dlib ResNet: the unit embeddings of the source network, affine layers folded into
    the convolutions, channels-last memory (oneDNN's fast path on CPU), no autograd.

    It holds folded copies of the weights, not the trainable network: train and save that one. Its
    outputs are inference tensors; clone one before changing it in place.
    """

    def __init__(self, source: DlibResnet):
        super().__init__()
        self.stem = folded(source.stem)
        self.blocks = nn.Sequential(*map(FusedBlock, source.blocks))
        self.embed = nn.Linear(FEATURE_SIZE, EMBEDDING_SIZE, bias=False, device="meta")
        self.embed.weight = nn.Parameter(source.embed.weight.detach().clone(), requires_grad=False)
        self.requires_grad_(False)
        self.eval()

    @torch.inference_mode()
    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.max_pool2d(
            convolve(self.stem, x.contiguous(memory_format=torch.channels_last), relu=True), 3, 2
        )
        return self.embed(self.blocks(grid).mean((2, 3)))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptors(x), dim=1)


# The form int8 quantization starts from (facerec.pipeline.precision).


def _conv_output(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * dlib_padding(kernel, stride) - kernel) // stride + 1


class QuantizableBlock(nn.Module):
    """A FusedBlock as torch.fx can trace and quantize it: modules, out-of-place sums, and the zero padding
    of dlib's add_prev fixed for the grid size it sees (known from the chip size), not found at run time."""

    def __init__(self, block: ResidualBlock, size: int):
        super().__init__()
        self.conv1, self.conv2, self.stride = folded(block.conv1), folded(block.conv2), block.stride
        self.relu = nn.ReLU()
        self.size = _conv_output(size, 3, self.stride)
        if self.stride == 2:
            self.pool = nn.AvgPool2d(2, 2)
            pooled = size // 2
            self.grid_padding = pooled - self.size  # dlib's 3x3 block output against a 4x4 shortcut
            self.channel_padding = block.conv1.conv.out_channels - block.conv1.conv.in_channels
            self.size = max(self.size, pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.stride == 1:
            return F.relu(out + x)
        shortcut = self.pool(x)
        if self.channel_padding:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.channel_padding))
        if self.grid_padding:
            out = F.pad(out, (0, self.grid_padding, 0, self.grid_padding))
        return F.relu(out + shortcut)


class QuantizableDlibResnet(nn.Module):
    """dlib's ResNet for 150x150 chips, affine layers folded, in a form torch.fx traces and quantizes.

    `float_modules` stay FP32, as measured on facerec's test photos: the 7x7 stem reads the chip's pixels
    (in int8 the worst cosine to FP32 falls from 0.9990 to 0.9988), the final linear map makes the
    descriptor from 256 numbers (median 0.9996 against 0.9991), and the two last blocks cost little time
    in FP32, on a 2x2 grid.
    """

    float_modules = ("stem", f"blocks.{len(BLOCKS) - 2}", f"blocks.{len(BLOCKS) - 1}", "embed")

    def __init__(self, source: DlibResnet):
        super().__init__()
        self.stem = folded(source.stem)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2)
        size = _conv_output(_conv_output(CHIP_SIZE, 7, 2), 3, 2)
        blocks = []
        for block in source.blocks:
            blocks.append(QuantizableBlock(block, size))
            size = blocks[-1].size
        self.blocks = nn.Sequential(*blocks)
        self.average = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(FEATURE_SIZE, EMBEDDING_SIZE, bias=False, device="meta")
        self.embed.weight = nn.Parameter(source.embed.weight.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.blocks(self.pool(self.relu(self.stem(x))))
        return F.normalize(self.embed(torch.flatten(self.average(grid), 1)), dim=1)


# Reading dlib's file.


def _expected_kinds() -> list[str]:
    """The layer kinds of dlib's face recognition network, from the input to the loss."""
    kinds = ["input_rgb_image_sized", "con", "affine", "relu", "max_pool"]
    for _, stride in BLOCKS:
        kinds += ["tag", "con", "affine", "relu", "con", "affine"]
        kinds += ["tag", "skip", "avg_pool", "add_prev", "relu"] if stride == 2 else ["add_prev", "relu"]
    return [*kinds, "avg_pool", "fc", "loss_metric"]


def _check_network(network: DlibNetwork, path: Path) -> None:
    """Raise FacerecError unless `network` is dlib's face recognition ResNet with its input scaling."""
    if network.kinds() != _expected_kinds():
        raise FacerecError(f"{path}: not dlib's face recognition ResNet (other layers)")
    input_layer = network.layers[0].options
    size = (input_layer["nr"], input_layer["nc"])
    average = tuple(input_layer[key] for key in ("avg_red", "avg_green", "avg_blue"))
    if size != (CHIP_SIZE, CHIP_SIZE) or not np.allclose(average, DLIB_AVERAGE_RGB, atol=1e-4):
        raise FacerecError(f"{path}: the network takes {size} chips less {average}; dlib-resnet feeds others")
    cons = [layer for layer in network.layers if layer.kind == "con"]
    for layer, geometry in zip(cons, _conv_geometry(), strict=True):
        found = (layer.options["nr"], layer.options["stride_y"], layer.options["padding_y"])
        if found != geometry or layer.options["use_relu"] or "bias" not in layer.tensors:
            raise FacerecError(f"{path}: a convolution unlike dlib-resnet's (size, stride, padding or bias)")


def _conv_geometry() -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of the network's convolutions, from the input up."""
    convs = [(7, 2)] + [conv for _, stride in BLOCKS for conv in ((3, stride), (3, 1))]
    return [(kernel, stride, dlib_padding(kernel, stride)) for kernel, stride in convs]


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _conv_affine_weights(prefix: str, con: DlibLayer, affine: DlibLayer) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.conv.weight": _tensor(con.tensors["weight"]),
        f"{prefix}.conv.bias": _tensor(con.tensors["bias"]),
        f"{prefix}.affine.weight": _tensor(affine.tensors["gamma"]),
        f"{prefix}.affine.bias": _tensor(affine.tensors["beta"]),
    }


def _prefixes() -> list[str]:
    blocks = [f"blocks.{index}.{conv}" for index in range(len(BLOCKS)) for conv in ("conv1", "conv2")]
    return ["stem", *blocks]


def state_dict_from_dlib(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of DlibResnet holding the weights of dlib's network file `path`."""
    path = Path(path)
    network = read_network(path)
    _check_network(network, path)
    cons = [layer for layer in network.layers if layer.kind == "con"]
    affines = [layer for layer in network.layers if layer.kind == "affine"]
    state = {}
    for prefix, con, affine in zip(_prefixes(), cons, affines, strict=True):
        state.update(_conv_affine_weights(prefix, con, affine))
    fc = next(layer for layer in network.layers if layer.kind == "fc")
    state["embed.weight"] = _tensor(fc.tensors["weight"].T)  # dlib multiplies x @ W; torch x @ W.T
    return state


# The plugin.


class DlibResnetBackbone:
    """dlib's face recognition ResNet: 150x150 dlib face chips in, 128-d unit embeddings out."""

    recipe = InputRecipe(
        size=CHIP_SIZE,
        aligner="dlib-5point",
        aligner_options=MappingProxyType({"padding": 0.25}),
        mean=DLIB_AVERAGE_RGB,
        std=(DLIB_SCALE,) * 3,
        channels="RGB",
    )
    embedding_size = EMBEDDING_SIZE
    pretrained: ClassVar[Mapping[str, WeightFile]] = MappingProxyType({"dlib-v1": RESNET_V1})
    default_pretrained = "dlib-v1"
    thresholds: ClassVar[Mapping[str, float]] = MappingProxyType({"dlib-v1": THRESHOLD})

    def read_pretrained(self, path: str | Path) -> dict[str, torch.Tensor]:
        """The state dict of a dlib network file (a named pretrained file: dlib's format, not torch's)."""
        return state_dict_from_dlib(path)

    def build(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> DlibResnet:
        """The trainable network, randomly initialized or loaded from `state_dict`.

        The network takes the float32 tensors of `state_dict` as its own, without copying (as
        `load_state_dict(assign=True)` does): training it changes them. Pass a copy to keep the dict.
        """
        if state_dict is None:
            return DlibResnet()
        with torch.device("meta"):  # no initialization: the weights replace it
            network = DlibResnet()
        expected = {key: value.shape for key, value in network.state_dict().items()}
        check_fits(state_dict, expected, "dlib-resnet")
        network.load_state_dict({key: value.float() for key, value in state_dict.items()}, assign=True)
        return network

    def for_inference(self, module: nn.Module) -> FusedDlibResnet:
        """The fast inference network for a network made by `build`, weights copied as they are now."""
        if not isinstance(module, DlibResnet):
            raise TypeError(f"expected the network built by this backbone, got {type(module).__name__}")
        return FusedDlibResnet(module)

    def for_quantization(self, module: nn.Module) -> QuantizableDlibResnet:
        """The network `--precision int8` quantizes (see facerec.contract.parts.Backbone), weights as they are now."""
        if not isinstance(module, DlibResnet):
            raise TypeError(f"expected the network built by this backbone, got {type(module).__name__}")
        return QuantizableDlibResnet(module)


@hookimpl
def register_backbones(register: Register) -> None:
    register("dlib-resnet", DlibResnetBackbone)
