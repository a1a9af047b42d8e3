"""Every command reads images through facerec.pipeline.images.load_image: modes, EXIF and bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerec.pipeline.images import ImageError, load_image
from support import SHARED

PHOTO = SHARED / "faces" / "knn" / "test" / "obama1.jpg"


def _rgb_pixels(size=(64, 48)) -> Image.Image:
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray(gradient.astype(np.uint8), "RGB")


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("CMYK", ".jpg"), ("L", ".png"), ("P", ".png"), ("RGBA", ".png"), ("LA", ".png"), ("RGB", ".webp")],
)
def test_every_mode_becomes_8bit_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"image{suffix}"
    _rgb_pixels().convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (64, 48)


def test_16bit_grayscale_keeps_its_range(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 32 * 16).reshape(16, 32).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (16, 32, 3)
    assert pixels.min() == 0 and pixels.max() == 255  # scaled, not clipped to white


def test_32bit_png_with_alpha_from_shared():
    image = load_image(SHARED / "faces" / "photos" / "32bit.png")
    assert image.mode == "RGB" and image.size == (626, 1200)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _rgb_pixels((64, 48)).save(path, exif=exif)
    assert load_image(path).size == (48, 64)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _write(d / "empty.jpg", b""), "empty file"),
        (lambda d: _write(d / "notes.jpg", b"these are not pixels\n" * 10), "not an image file"),
        (lambda d: _write(d / "cut.jpg", PHOTO.read_bytes()[:4000]), "cannot decode image"),
        (lambda d: _write(d / "bomb.png", _png_header_only(40_000, 40_000)), "refused"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "missing.jpg", "no such file"),
    ],
    ids=["empty", "text", "truncated", "bomb", "directory", "missing"],
)
def test_bad_paths_give_one_line_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and reason in message
    assert "\n" not in message
