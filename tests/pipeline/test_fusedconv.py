"""facerec_plugins.fusedconv: the convolution with its ReLU and residual sum in oneDNN's kernel computes what
the plain ops compute, writes the sum where it says, and leaves the calls it cannot take to the plain ops.
(tests/pipeline/test_backbone.py and tests/dlib_models/test_dlib_resnet.py check whole networks built on it
against their references.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facerec_plugins import fusedconv
from facerec_plugins.fusedconv import convolve

# bf16 keeps 8 bits of mantissa: the fused kernel rounds once where the plain ops round after each op.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def conv_and_input(dtype: torch.dtype, stride: int = 1, groups: int = 1):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, stride=stride, padding=1, groups=groups).eval().requires_grad_(False)
    conv = conv.to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(4, 32, 17, 17, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return conv, x


def plain(conv: nn.Conv2d, x: torch.Tensor, relu: bool, add_to: torch.Tensor | None) -> torch.Tensor:
    out = F.conv2d(
        x.float(), conv.weight.float(), conv.bias.float(), conv.stride, conv.padding, 1, conv.groups
    )
    if add_to is not None:
        out = out + add_to.float()
    return out.relu() if relu else out


def test_this_torch_has_the_fused_op():
    """The pinned torch is built with oneDNN: without the op every network here would take the slow path."""
    assert fusedconv.REGISTERED


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv_relu_equals_the_plain_ops(dtype, relu, groups):
    conv, x = conv_and_input(dtype, stride=2, groups=groups)
    with torch.inference_mode():
        assert fusedconv._fusable(conv.weight, x, None)
        out = convolve(conv, x, relu=relu)
    assert out.dtype == dtype and out.shape == (4, 32, 9, 9)
    torch.testing.assert_close(
        out.float(), plain(conv, x, relu, None), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
    )
    if relu:
        assert out.min() >= 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
def test_the_residual_sum_is_written_into_add_to(dtype, relu):
    conv, x = conv_and_input(dtype)
    add_to = torch.randn_like(x).contiguous(memory_format=torch.channels_last)
    expected = plain(conv, x, relu, add_to)
    with torch.inference_mode():
        assert fusedconv._fusable(conv.weight, x, add_to)
        out = convolve(conv, x, relu=relu, add_to=add_to)
    assert out.data_ptr() == add_to.data_ptr()
    torch.testing.assert_close(out.float(), expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_calls_the_kernel_cannot_take_go_to_the_plain_ops_with_the_same_values():
    conv, x = conv_and_input(torch.float32)
    add_to = torch.randn_like(x).contiguous()  # not channels-last: oneDNN would write another layout
    assert not fusedconv._fusable(conv.weight, x, add_to)
    assert not fusedconv._fusable(conv.weight, x.double(), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fusedconv._fusable(conv.weight, x, None)
    trained = x.clone().requires_grad_(True)
    assert not fusedconv._fusable(conv.weight, trained, None)
    expected = plain(conv, x, True, add_to)
    with torch.inference_mode():
        out = convolve(conv, x, relu=True, add_to=add_to)
    assert out.data_ptr() == add_to.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_the_plain_path():
    """A network trained while built on convolve learns: autograd never meets the inference-only op."""
    conv, x = conv_and_input(torch.float32)
    conv.requires_grad_(True)
    convolve(conv, x, relu=True).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
