"""A convolution with the ReLU, or the residual sum and ReLU, that follow it done inside oneDNN's kernel.

Written as torch ops, each ReLU and each sum is one more pass over the convolution's output in memory.
At bf16 on a CPU with AMX, where the convolutions themselves are quick, those passes took 22% of
inception-resnet's time (2 cores of an Intel Xeon, 32 faces: 30 of 141 ms in ReLU). oneDNN applies them
while the kernel writes its output (its "post-ops"); torch reaches them through
`torch.ops.mkldnn._convolution_pointwise`, the op torch's own compiler (inductor) emits for these
patterns, so it is kept up with torch. It is not public API: `convolve` calls it only where it is
registered and takes the call as given (a CPU picture of float32 or bf16, the weight's type, no autograd,
no autocast that would change the type), else the plain ops, which compute the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSABLE = (torch.float32, torch.bfloat16)


def _registered() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn._convolution_pointwise_, "binary"
        )
    except (AttributeError, RuntimeError):
        return False


REGISTERED = _registered()


def convolve(
    conv: nn.Conv2d, x: torch.Tensor, relu: bool = False, add_to: torch.Tensor | None = None
) -> torch.Tensor:
    """relu(conv(x) + add_to), the ReLU when `relu`, the sum when `add_to` is given; the sum is written
    into `add_to` (which the caller gives up) rather than into a new tensor. `conv` is any module with a
    Conv2d's weight, bias, stride, padding, dilation and groups."""
    if _fusable(conv.weight, x, add_to):
        geometry = (conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        mkldnn = torch.ops.mkldnn
        if add_to is None:
            return mkldnn._convolution_pointwise(
                x, conv.weight, *geometry, "relu" if relu else "none", [], ""
            )
        unary = "relu" if relu else None
        return mkldnn._convolution_pointwise_.binary(
            add_to, x, conv.weight, *geometry, "add", 1.0, unary, [], ""
        )
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if add_to is not None:
        out = add_to.add_(out)
    return out.relu_() if relu else out


def _fusable(weight: torch.Tensor, x: torch.Tensor, add_to: torch.Tensor | None) -> bool:
    return (
        REGISTERED
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype == weight.dtype
        and x.dtype in FUSABLE
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != x.dtype)
        and (add_to is None or _same_layout(add_to, x))
    )


def _same_layout(add_to: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether oneDNN can sum into `add_to`: x's type, channels-last like the output it writes."""
    return add_to.dtype == x.dtype and add_to.is_contiguous(memory_format=torch.channels_last)
