"""The one place a path becomes an RGB image, for every command.

EXIF orientation is applied (boxes are reported in pixels of the image as decoded this way). Images are
refused with a one-line reason, before any pixels are decoded, when they are empty, not images, or too
large to be a photo (decompression bombs); and before the file is opened when it is not a regular file
(a FIFO would block the reader forever) or a symbolic link leads nowhere.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facerec.errors import FacerecError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # in lookup order
MAX_PIXELS = 100_000_000  # 10k x 10k: more than any camera; past this, refuse rather than allocate
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Set once, not per call: catch_warnings() changes process-wide state and is not safe across threads.
warnings.simplefilter("error", Image.DecompressionBombWarning)


class ImageError(FacerecError):
    """An image that cannot be used; `reason` is what the JSON `error` field carries."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_image(path: str | os.PathLike) -> Image.Image:
    """The image at `path` as 8-bit RGB, EXIF orientation applied; ImageError for anything unusable."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageError(path, problem)
    if path.stat().st_size == 0:
        raise ImageError(path, "cannot decode image: empty file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(path, f"refused: {width}x{height} pixels is more than {MAX_PIXELS}")
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "cannot decode image: not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(path, "refused: too many pixels (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(path, f"cannot decode image: {error}") from None


SPECIAL_FILES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def path_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file, found without opening it; None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link (its target is missing)" if os.path.islink(path) else "no such file"
    except NotADirectoryError:
        return "no such file"
    except OSError as error:
        return "symbolic link loop" if error.errno == errno.ELOOP else error.strerror
    if stat.S_ISDIR(mode):
        return "is a directory, not an image"
    if not stat.S_ISREG(mode):
        return f"{SPECIAL_FILES.get(stat.S_IFMT(mode), 'a special file')}, not a regular file"
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode. Alpha is dropped as PIL's convert does, as facenet-pytorch users get."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode != "F" and pixels.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")
