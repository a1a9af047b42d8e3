"""Augmentations that keep a face a face: a mirror flip, a slightly smaller crop, colour jitter.

Parameters are drawn from an explicit generator (one per image, from the run's seeds) and applied with
torchvision's functional transforms, so an image is augmented the same way in every process of a run and
after a resume. They run on PIL images: single-threaded, they stay fast while torch's threads are busy. Rotations and strong crops are left out: the crops are aligned, and the network was
trained on aligned faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image


@dataclass(frozen=True)
class FaceAugment:
    """Flip with probability `flip`; crop a square of `min_area`..1 of the area, resized back; scale
    brightness, contrast and saturation by a factor within 1 +- `jitter`.
    """

    flip: float = 0.5
    min_area: float = 0.8
    jitter: float = 0.2

    def __call__(self, face: Image.Image, draw: torch.Generator) -> Image.Image:
        """An augmented copy of `face`."""
        flip, area, top, left, *jitter = torch.rand(7, generator=draw).tolist()
        if flip < self.flip:
            face = F.horizontal_flip(face)
        face = self._crop(face, area, top, left)
        brightness, contrast, saturation = (1 + self.jitter * (2 * u - 1) for u in jitter)
        face = F.adjust_brightness(face, brightness)
        face = F.adjust_contrast(face, contrast)
        return F.adjust_saturation(face, saturation)

    def _crop(self, face: Image.Image, area: float, top: float, left: float) -> Image.Image:
        width, height = face.size
        scale = (self.min_area + (1 - self.min_area) * area) ** 0.5
        crop_height, crop_width = max(1, round(height * scale)), max(1, round(width * scale))
        y = round(top * (height - crop_height))
        x = round(left * (width - crop_width))
        return F.resized_crop(face, y, x, crop_height, crop_width, [height, width], antialias=True)
