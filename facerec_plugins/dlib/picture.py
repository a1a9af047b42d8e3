"""A PIL image's RGB pixels for dlib's shape predictor and face chip, converted only where they are read.

Converting a whole photo to numpy (`np.asarray` of a PIL image packs every pixel to three bytes and
copies it twice) takes longer than the landmarks and the chip of a face in it: 18 ms for a 3-megapixel
photo, against about 1 ms for the surroundings of a face. A `Picture` converts the regions asked for,
as PIL's own four-byte pixels (red, green, blue, and a byte that is never read), which PIL's raw
encoder copies without repacking; to the shape predictor a pixel is then one uint32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom: inclusive pixel coordinates
# PIL modes whose pixels come out as four bytes, red first, and the raw mode that gives them so
RAW_MODES = {"RGB": "RGBX", "RGBX": "RGBX", "RGBA": "RGBA"}


class Picture:
    """An image read a region at a time; the last region converted is kept, and a region inside it is a
    view of it (the predictor converts the surroundings of all faces at once, the chips lie within)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.width, self.height = image.size
        self.kept: tuple[Box, np.ndarray] | None = None

    def region(self, box: Box) -> np.ndarray:
        """(h, w, 4) uint8: the pixels of `box`, which lies inside the image; the first three bytes of
        each are red, green and blue, as `image.convert("RGB")` gives them."""
        left, top, right, bottom = box
        if self.kept is not None:
            (kept_left, kept_top, kept_right, kept_bottom), pixels = self.kept
            if kept_left <= left and kept_top <= top and right <= kept_right and bottom <= kept_bottom:
                return pixels[
                    top - kept_top : bottom - kept_top + 1, left - kept_left : right - kept_left + 1
                ]
        pixels = _four_byte_pixels(self.image, box)
        self.kept = box, pixels
        return pixels

    def clip(self, box: Box) -> Box | None:
        """The part of `box` inside the image; None when there is none."""
        left, top = max(box[0], 0), max(box[1], 0)
        right, bottom = min(box[2], self.width - 1), min(box[3], self.height - 1)
        return (left, top, right, bottom) if left <= right and top <= bottom else None


def _four_byte_pixels(image: Image.Image, box: Box) -> np.ndarray:
    """(h, w, 4) uint8: the pixels of `box` in `image`, red, green and blue first.

    PIL's raw encoder writes the box's rows as four-byte pixels (no repacking to three bytes) straight
    from the image into one buffer, which numpy then reads in place: one copy, where `crop().tobytes()`
    makes three (the crop, the encoder's blocks, their join), three times slower. The encoder is the one
    `Image.tobytes` itself runs (`Image._getencoder`): PIL offers no public call for a region's bytes.
    Other modes are converted to RGB first, pixel by pixel, so the crop of the converted image is the
    conversion of the crop.
    """
    left, top, right, bottom = box
    extents = (left, top, right + 1, bottom + 1)
    if image.mode not in RAW_MODES:
        image = image.crop(extents).convert("RGB")
        extents = (0, 0, *image.size)
    image.load()
    width, height = right - left + 1, bottom - top + 1
    encoder = Image._getencoder(image.mode, "raw", RAW_MODES[image.mode])
    try:
        encoder.setimage(image.im, extents)
        blocks, status = [], 0
        while not status:  # one block: it is asked for all of the box's bytes at once
            _, status, block = encoder.encode(width * height * 4)
            blocks.append(block)
    finally:
        encoder.cleanup()
    if status < 0:
        raise RuntimeError(f"PIL's raw encoder failed with error {status}")
    return np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(height, width, 4)
