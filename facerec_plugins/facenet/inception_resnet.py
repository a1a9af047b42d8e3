"""The `inception-resnet` backbone: Inception-ResNet-v1 (Szegedy et al. 2016) as FaceNet uses it.

The trainable network keeps facenet-pytorch's module names, so its state dicts (the published `vggface2`
and `casia-webface` files included) load as they are and come out the same, and its outputs equal
facenet-pytorch's. `for_inference` builds a second, faster network from it for embedding only: batch norm
and the residual scales folded into the convolutions, channels-last memory (oneDNN's fast path on CPU) and
no autograd bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_weights

from facerec.plugin import InputRecipe, Register, WeightFile, check_fits, hookimpl, require_state_dict
from facerec_plugins.fusedconv import convolve

RELEASES = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
EMBEDDING_SIZE = 512
FEATURE_SIZE = 1792
BN_EPS = 0.001  # TensorFlow's value, kept by facenet-pytorch; part of what makes outputs equal


class ConvBnRelu(nn.Module):
    """Convolution without bias, batch norm, ReLU: facenet-pytorch's BasicConv2d (same key names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def chain(*layers: tuple) -> nn.Sequential:
    """A branch of ConvBnRelu layers, each given as its (in, out, kernel, stride, padding) arguments."""
    return nn.Sequential(*(ConvBnRelu(*layer) for layer in layers))


class InceptionBranches(nn.Module):
    """Parallel branches `branch0`, `branch1`, ... on one input, concatenated along channels."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        self.branch_count = len(branches)
        for index, branch in enumerate(branches):
            self.add_module(f"branch{index}", branch)

    def branches(self) -> list[nn.Module]:
        return [getattr(self, f"branch{index}") for index in range(self.branch_count)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches()], 1)


class ResidualInception(InceptionBranches):
    """An Inception-ResNet block: branches, a 1x1 projection `conv2d`, scaled and added to the input."""

    def __init__(self, channels: int, branches: Sequence[nn.Module], scale: float, relu: bool = True):
        super().__init__(branches)
        branch_width = sum(last_conv(branch).out_channels for branch in branches)
        self.conv2d = nn.Conv2d(branch_width, channels, kernel_size=1)
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(super().forward(x)) * self.scale + x
        return F.relu(out) if self.relu else out


def last_conv(branch: nn.Module) -> nn.Conv2d:
    return (branch[-1] if isinstance(branch, nn.Sequential) else branch).conv


def block35(scale: float = 0.17) -> ResidualInception:
    """Inception-ResNet-A on the 35x35 grid (17x17 for 160x160 faces)."""
    return ResidualInception(
        256,
        [
            ConvBnRelu(256, 32, 1),
            chain((256, 32, 1), (32, 32, 3, 1, 1)),
            chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1)),
        ],
        scale,
    )


def block17(scale: float = 0.10) -> ResidualInception:
    """Inception-ResNet-B on the 17x17 grid, with factorized 1x7 and 7x1 convolutions."""
    return ResidualInception(
        896,
        [
            ConvBnRelu(896, 128, 1),
            chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)), (128, 128, (7, 1), 1, (3, 0))),
        ],
        scale,
    )


def block8(scale: float = 0.20, relu: bool = True) -> ResidualInception:
    """Inception-ResNet-C on the 8x8 grid, with factorized 1x3 and 3x1 convolutions."""
    return ResidualInception(
        1792,
        [
            ConvBnRelu(1792, 192, 1),
            chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)), (192, 192, (3, 1), 1, (1, 0))),
        ],
        scale,
        relu,
    )


def mixed_6a() -> InceptionBranches:
    """Reduction-A: 256 channels to 896, grid halved."""
    return InceptionBranches(
        [
            ConvBnRelu(256, 384, 3, 2),
            chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2)),
            nn.MaxPool2d(3, stride=2),
        ]
    )


def mixed_7a() -> InceptionBranches:
    """Reduction-B: 896 channels to 1792, grid halved."""
    return InceptionBranches(
        [
            chain((896, 256, 1), (256, 384, 3, 2)),
            chain((896, 256, 1), (256, 256, 3, 2)),
            chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2)),
            nn.MaxPool2d(3, stride=2),
        ]
    )


class InceptionResnetV1(nn.Module):
    """The trainable network, module for module facenet-pytorch's InceptionResnetV1.

    `forward` returns unit-length 512-d embeddings (facenet-pytorch's `classify=False`); `features` the
    embedding before normalization and `classify` the logits of the optional `logits` layer, which the
    published weight files carry for their training identities.
    """

    def __init__(self, num_classes: int | None = None, dropout: float = 0.6):
        super().__init__()
        self.conv2d_1a = ConvBnRelu(3, 32, 3, 2)
        self.conv2d_2a = ConvBnRelu(32, 32, 3)
        self.conv2d_2b = ConvBnRelu(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBnRelu(64, 80, 1)
        self.conv2d_4a = ConvBnRelu(80, 192, 3)
        self.conv2d_4b = ConvBnRelu(192, 256, 3, 2)
        self.repeat_1 = nn.Sequential(*(block35() for _ in range(5)))
        self.mixed_6a = mixed_6a()
        self.repeat_2 = nn.Sequential(*(block17() for _ in range(10)))
        self.mixed_7a = mixed_7a()
        self.repeat_3 = nn.Sequential(*(block8() for _ in range(5)))
        self.block8 = block8(scale=1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(FEATURE_SIZE, EMBEDDING_SIZE, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_SIZE, eps=BN_EPS, momentum=0.1)
        self.logits = nn.Linear(EMBEDDING_SIZE, num_classes) if num_classes else None

    def grid_layers(self) -> list[nn.Module]:
        """The convolutional layers in order, from the image to the 1792-channel 3x3 grid."""
        return [
            self.conv2d_1a,
            self.conv2d_2a,
            self.conv2d_2b,
            self.maxpool_3a,
            self.conv2d_3b,
            self.conv2d_4a,
            self.conv2d_4b,
            *self.repeat_1,
            self.mixed_6a,
            *self.repeat_2,
            self.mixed_7a,
            *self.repeat_3,
            self.block8,
        ]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.grid_layers():
            x = layer(x)
        x = self.dropout(self.avgpool_1a(x).flatten(1))
        return self.last_bn(self.last_linear(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), p=2, dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            raise ValueError("this network has no logits layer (its weights came without logits.*)")
        return self.logits(self.features(x))


# Inference network: the same function with batch norm and residual scales folded into convolutions.


class FoldedConv(nn.Module):
    """A convolution with bias standing for a convolution times `gain` plus `bias` (batch norm, scale),
    and the ReLU after it when `relu`, done inside the convolution's kernel (facerec_plugins.fusedconv).

    The weight is written once, channels-last: with both input and weight in that layout oneDNN takes
    its fast path and needs no reordering per call.
    """

    def __init__(self, like: nn.Conv2d, gain: torch.Tensor | float, bias: torch.Tensor, relu: bool = False):
        super().__init__()
        weight = torch.empty_like(like.weight, memory_format=torch.channels_last, requires_grad=False)
        torch.mul(like.weight, gain, out=weight)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = (
            like.stride,
            like.padding,
            like.dilation,
            like.groups,
        )
        self.relu = relu

    def forward(self, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """relu(conv(x) + add_to), ReLU if `relu`, written into `add_to` when it is given."""
        return convolve(self, x, self.relu, add_to)

    def conv2d(self) -> nn.Conv2d:
        """The same convolution as a Conv2d module (what quantization recognizes), its weight in the
        default layout, where quantization's per-channel ranges are quick to find."""
        out_channels, in_channels, *kernel = self.weight.shape
        with torch.device("meta"):  # no initialization: the weights replace it
            conv = nn.Conv2d(in_channels, out_channels, tuple(kernel), self.stride, self.padding)
        conv.weight = nn.Parameter(self.weight.contiguous(), requires_grad=False)
        conv.bias = self.bias
        return conv


def fused(layer: nn.Module) -> nn.Module:
    """The inference form of a layer of InceptionResnetV1 (call under torch.no_grad)."""
    if isinstance(layer, ConvBnRelu):
        bn = layer.bn
        gain = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return FoldedConv(layer.conv, gain.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * gain, relu=True)
    if isinstance(layer, nn.Sequential):
        return nn.Sequential(*map(fused, layer))
    if isinstance(layer, ResidualInception):
        return FusedResidual(layer)
    if isinstance(layer, InceptionBranches):
        return InceptionBranches([fused(branch) for branch in layer.branches()])
    return layer  # max pooling


class FusedResidual(InceptionBranches):
    """A ResidualInception block with its scale folded into the projection: relu(x + up(branches(x)))."""

    def __init__(self, block: ResidualInception):
        super().__init__([fused(branch) for branch in block.branches()])
        projection = block.conv2d
        self.up = FoldedConv(projection, block.scale, projection.bias * block.scale, relu=block.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sum is written into `x`, which no other layer reads."""
        return self.up(super().forward(x), add_to=x)


class FusedInceptionResnetV1(nn.Module):
    """Inference-only Inception-ResNet-v1: the unit embeddings of the source network in eval mode.

    It holds folded copies of the weights, not the trainable network: train and save that one. Its
    outputs are inference tensors (no autograd); clone one before changing it in place.
    """

    def __init__(self, source: InceptionResnetV1):
        super().__init__()
        with torch.no_grad():
            self.grid = nn.Sequential(*map(fused, source.grid_layers()))
            bn = source.last_bn
            self.embed = nn.Linear(FEATURE_SIZE, EMBEDDING_SIZE)
            self.embed.weight, self.embed.bias = fuse_linear_bn_weights(
                source.last_linear.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
        self.requires_grad_(False)
        self.eval()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid(x.contiguous(memory_format=torch.channels_last))
        return F.normalize(self.embed(grid.mean((2, 3))), p=2, dim=1)


# The form int8 quantization starts from (facerec.pipeline.precision).


def quantizable(layer: nn.Module) -> nn.Module:
    """A layer of FusedInceptionResnetV1 as torch.fx can trace and quantize it: plain Conv2d modules
    followed by ReLU modules (which fuse into quantized conv-relu), sums out of place."""
    if isinstance(layer, FoldedConv):
        return nn.Sequential(layer.conv2d(), nn.ReLU()) if layer.relu else layer.conv2d()
    if isinstance(layer, nn.Sequential):
        return nn.Sequential(*map(quantizable, layer))
    if isinstance(layer, FusedResidual):
        return QuantizableResidual(layer)
    if isinstance(layer, InceptionBranches):
        return QuantizableBranches(layer)
    return layer  # max pooling


class QuantizableBranches(nn.Module):
    def __init__(self, block: InceptionBranches):
        super().__init__()
        self.branches = nn.ModuleList(quantizable(branch) for branch in block.branches())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class QuantizableResidual(QuantizableBranches):
    def __init__(self, block: FusedResidual):
        super().__init__(block)
        self.up, self.relu = block.up.conv2d(), block.up.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(super().forward(x)) + x
        return F.relu(out) if self.relu else out


class QuantizableInceptionResnetV1(nn.Module):
    """FusedInceptionResnetV1 in a form torch.fx traces and quantizes; every layer goes to int8 (the
    embeddings stay within cosine 0.9994 of FP32 on facerec's test photos)."""

    float_modules = ()

    def __init__(self, source: FusedInceptionResnetV1):
        super().__init__()
        self.grid = nn.Sequential(*map(quantizable, source.grid))
        self.average = nn.AdaptiveAvgPool2d(1)
        self.embed = source.embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(torch.flatten(self.average(self.grid(x)), 1)), p=2, dim=1)


# The plugin.


def _class_count(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes of the `logits.*` layer in `state_dict`, or None when it has none."""
    weight = state_dict.get("logits.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


class InceptionResnetV1Backbone:
    """Inception-ResNet-v1 for 160x160 faces, 512-d embeddings, in facenet-pytorch's weight layout.

    Its recipe is facenet-pytorch's: the detected box cropped (margin 0) and resized to 160 px, RGB,
    `(pixel - 127.5) / 128`. Both published weights separate same from different people at a Euclidean
    distance of about 1.0 between unit embeddings (same person usually 0.6-0.9, others above 1.1).
    """

    recipe = InputRecipe(size=160, aligner="box", aligner_options=MappingProxyType({"margin": 0.0}))
    embedding_size = EMBEDDING_SIZE
    default_pretrained = "vggface2"
    thresholds: ClassVar[Mapping[str, float]] = MappingProxyType({"vggface2": 1.0, "casia-webface": 1.0})
    pretrained: ClassVar[Mapping[str, WeightFile]] = MappingProxyType(
        {
            "vggface2": WeightFile(RELEASES + "20180402-114759-vggface2.pt", "20180402-114759-vggface2.pt"),
            "casia-webface": WeightFile(
                RELEASES + "20180408-102900-casia-webface.pt", "20180408-102900-casia-webface.pt"
            ),
        }
    )

    def build(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> InceptionResnetV1:
        """The trainable network, randomly initialized or loaded from `state_dict` (with or without logits).

        The network takes the float32 tensors of `state_dict` as its own, without copying (as
        `load_state_dict(assign=True)` does): training it changes them. Pass a copy to keep the dict.
        """
        if state_dict is None:
            return InceptionResnetV1()
        require_state_dict(state_dict)
        with torch.device("meta"):  # no initialization: the weights replace it
            network = InceptionResnetV1(num_classes=_class_count(state_dict))
        own = network.state_dict()
        expected = {key: value.shape for key, value in own.items()}
        # `num_batches_tracked` counters may be missing: files saved before torch 0.4.1 have none
        check_fits(
            state_dict, expected, "Inception-ResNet-v1", lambda key: key.endswith("num_batches_tracked")
        )
        tensors = {
            key: torch.zeros((), dtype=torch.long) for key in expected if key.endswith("num_batches_tracked")
        }
        tensors.update(
            {
                key: value.float() if own[key].is_floating_point() else value
                for key, value in state_dict.items()
            }
        )
        network.load_state_dict(tensors, assign=True)
        return network

    def for_inference(self, module: nn.Module) -> FusedInceptionResnetV1:
        """The fast inference network for a network made by `build`, weights copied as they are now."""
        if not isinstance(module, InceptionResnetV1):
            raise TypeError(f"expected the network built by this backbone, got {type(module).__name__}")
        return FusedInceptionResnetV1(module)

    def for_quantization(self, module: nn.Module) -> QuantizableInceptionResnetV1:
        """The network `--precision int8` quantizes (see facerec.contract.parts.Backbone), weights as they are now."""
        return QuantizableInceptionResnetV1(self.for_inference(module))


@hookimpl
def register_backbones(register: Register) -> None:
    register("inception-resnet", InceptionResnetV1Backbone)
