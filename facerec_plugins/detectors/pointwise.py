"""1 x 1 convolutions of float32 channels-last CPU pictures as BLAS matrix products.

torch's CPU convolutions run on oneDNN, which builds (compiles) a kernel for every layer at every new
input size: about a millisecond a layer, more than the layer's work at a photo's size, paid again for
each photo of a new size, and which costs some tens of microseconds a call even at one size, more than
a small layer's work. A 1 x 1 convolution of a float32 channels-last picture is a matrix product over
its pixels, which BLAS takes as the picture lies in memory, with no kernel to build: the same values,
to float32 rounding. The detectors' graphs read from files (onnx_graph, tflite_graph) run theirs so.
"""

from __future__ import annotations

import torch
from torch import nn


def is_pointwise(conv: nn.Conv2d) -> bool:
    """Whether the convolution is a plain 1 x 1 one (stride 1, no padding, one group, a bias)."""
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.groups == 1
        and conv.bias is not None
    )


def blas_takes(x: torch.Tensor) -> bool:
    """Whether `x` is a float32 channels-last CPU picture outside autocast, which BLAS's float32 matrix
    products take as it lies."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a pointwise `conv` (is_pointwise) and a picture BLAS takes (blas_takes), as one
    matrix product; channels-last, as oneDNN's output is."""
    n, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)  # a view: channels-last memory
    y = torch.addmm(conv.bias, pixels, conv.weight.view(conv.out_channels, channels).t())
    return y.view(n, height, width, -1).permute(0, 3, 1, 2)  # channels-last again, a view
