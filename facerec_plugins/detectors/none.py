"""The `none` detector: the whole image is the face, for photos that are already aligned face crops.

Use it with images like facenet-pytorch's 160x160 aligned faces or dlib's 150x150 chips (`--detector
none`): the box is the image, there is no score and there are no landmarks. Its faces are `aligned`, so
the pipeline uses each picture as it is, resized to the backbone's input size, for every backbone: the
backbone's aligner does not run on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from facerec.plugin import Face, Register, hookimpl


class WholeImage:
    """A detector that finds exactly one face per image: all of it, already aligned."""

    aligned = True
    max_pixels = None  # it allocates nothing per pixel: no image is scaled down for it

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {"name": "none"}

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        return [[Face(box=(0.0, 0.0, float(image.width), float(image.height)))] for image in images]


@hookimpl
def register_detectors(register: Register) -> None:
    register("none", WholeImage)
