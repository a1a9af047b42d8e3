"""Deterministic, RNG-free weights that stand in for the pretrained ones when checking against facenet-pytorch.

No pretrained recognition weights can be fetched in every place the tests run, and a network that matches
facenet-pytorch's outputs under arbitrary weights matches them under the real vggface2 ones too. Every
tensor is filled from a hash of (state-dict key, element index) computed in float64, so the same tensors
come out on any machine and torch version with no random generator involved: the references remade in a
fresh clone equal the ones in ../shared. Values are spread like unit-variance noise and scaled so that
activations stay sane through deep residual stacks. (The same recipe as ../shared/tools/seeded_weights.py,
bit for bit; tests/downloads/test_material.py holds the two together.)
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

WaveScale = tuple[float, float]  # (offset, factor): the tensor is offset + factor * wave


def _wave(key: str, count: int, salt: int) -> torch.Tensor:
    """`count` float32 values with mean 0 and variance 1, fixed by `key` and `salt` alone."""
    phase = (zlib.crc32(key.encode()) % 100_000) / 1000.0 + salt * 0.37
    index = torch.arange(count, dtype=torch.float64)
    uniform = torch.frac(torch.abs(torch.sin(index * 12.9898 + phase * 78.233) * 43758.5453))
    return ((uniform - 0.5) * math.sqrt(12.0)).to(torch.float32)


def _scale(key: str, shape: list[int]) -> WaveScale:
    """How a tensor of this kind is made from the wave, so that each looks like what training leaves."""
    if key.endswith("running_var"):
        return 1.0, 0.2
    if key.endswith("running_mean"):
        return 0.0, 0.05
    if len(shape) > 1:  # convolution or linear weight: keeps the variance of activations
        return 0.0, math.sqrt(2.0 / math.prod(shape[1:]))
    if key.endswith("weight"):  # batch-norm gamma or PReLU slope
        return 1.0, 0.2
    return 0.0, 0.05  # biases and batch-norm beta


def seeded_tensor(key: str, shape: list[int], salt: int = 0) -> torch.Tensor:
    """The seeded tensor for one state-dict entry (`num_batches_tracked` counters are zero)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    wave = _wave(key, math.prod(shape), salt).reshape(shape)
    offset, factor = _scale(key, shape)
    return wave * factor if offset == 0.0 else offset + factor * wave


def seeded_state_dict(shapes: dict[str, list[int]], salt: int = 0) -> dict[str, torch.Tensor]:
    """A whole state dict with the keys and shapes of `shapes` (in that order)."""
    return {key: seeded_tensor(key, shape, salt) for key, shape in shapes.items()}


def make_seeded_weights(path: Path, salt: int = 0, with_logits: bool = True) -> Path:
    """Write facenet-pytorch-layout seeded weights (see tests/support/seeded_weights.py) to `path`."""
    import json

    from support import SHAPES

    shapes = json.loads(SHAPES.read_text())
    if not with_logits:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("logits.")}
    torch.save(seeded_state_dict(shapes, salt), path)
    return path
