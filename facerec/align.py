"""Turning a detected face into the network's input tensor.

The default crop is facenet-pytorch's `extract_face`: the box (widened by `margin` pixels of the output,
as facenet-pytorch does) truncated to int, cropped from the RGB image, resized with PIL bilinear, then
standardized as `(pixel - 127.5) / 128`. Matching it exactly keeps embeddings equal to facenet-pytorch's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from facerec.faces import Face


def standardize(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 tensor of `(pixel - 127.5) / 128` from an RGB image."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return ((pixels - 127.5) / 128.0).permute(2, 0, 1).contiguous()


def crop_box(image: Image.Image, face: Face, size: int, margin: float = 0) -> tuple[int, int, int, int]:
    """The integer crop box facenet-pytorch uses for `face` at output `size` with `margin`."""
    x1, y1, x2, y2 = face.box
    grow_x = margin * (x2 - x1) / (size - margin)
    grow_y = margin * (y2 - y1) / (size - margin)
    width, height = image.size
    return (
        int(max(x1 - grow_x / 2, 0)),
        int(max(y1 - grow_y / 2, 0)),
        int(min(x2 + grow_x / 2, width)),
        int(min(y2 + grow_y / 2, height)),
    )


def crop_face(image: Image.Image, face: Face, size: int = 160, margin: float = 0) -> Image.Image:
    """The face cropped and resized to `size` x `size`, as facenet-pytorch's MTCNN extracts it."""
    return image.crop(crop_box(image, face, size, margin)).resize((size, size), Image.BILINEAR)
