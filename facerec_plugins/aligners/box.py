"""The `box` aligner: facenet-pytorch's crop of the detected box, the default of `inception-resnet`.

As facenet-pytorch's `extract_face`: the box (widened by `margin` pixels of the output, as facenet-pytorch
counts them) truncated to int, cropped from the RGB image and resized with PIL bilinear. Matching it
exactly keeps embeddings equal to facenet-pytorch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from facerec.plugin import Face, Register, UsageError, hookimpl


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


def crop_face(image: Image.Image, face: Face, size: int, margin: float = 0) -> Image.Image:
    """The face cropped and resized to `size` x `size`, as facenet-pytorch's MTCNN extracts it."""
    return image.crop(crop_box(image, face, size, margin)).resize((size, size), Image.BILINEAR)


class BoxCrop:
    """Crops each detected box (with `margin` output pixels around it) and resizes it to the input size."""

    def __init__(self, margin: float = 0) -> None:
        if not isinstance(margin, (int, float)) or margin < 0:
            raise UsageError(f"aligner 'box': margin must be a number >= 0, not {margin!r}")
        self.margin = float(margin)
        self.settings: dict[str, Any] = {"name": "box", "margin": self.margin}

    def align(self, image: Image.Image, faces: Sequence[Face], size: int) -> list[Image.Image]:
        return [crop_face(image, face, size, self.margin) for face in faces]


@hookimpl
def register_aligners(register: Register) -> None:
    register("box", BoxCrop)
