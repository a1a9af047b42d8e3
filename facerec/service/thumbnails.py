"""A small JPEG of one face of the gallery, cut from its photo, for the page's people.

A library's photos are often large (12 megapixels and more) and the page asks for a few faces of every
person, so a JPEG is decoded at the smallest of its built-in reduced scales (1/2, 1/4, 1/8: PIL's
`draft`) that still gives the face THUMBNAIL pixels; the other formats are decoded whole. The guards of
facerec.pipeline.images apply (regular files only, no decompression bombs), EXIF orientation is
applied as the boxes assume, and the decoded pixels hold room in the server's pixel budget while the
face is cut, as an upload's do.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageOps

from facerec.gallery.records import Entry
from facerec.pipeline.images import MAX_PIXELS, path_problem
from facerec.service.errors import ServiceError
from facerec.service.limits import PixelBudget

THUMBNAIL = 128  # pixels of the longer side
MARGIN = 0.2  # of the face's size, around it on every side
QUALITY = 85


def thumbnail(entry: Entry, pixels: PixelBudget) -> bytes:
    """The JPEG of the face `entry` (with a margin, at most THUMBNAIL pixels a side); ServiceError 404
    when its photo is gone or cannot be read."""
    face = entry.face_id
    path = entry.file
    if entry.moment.startswith("#t="):
        raise ServiceError(404, f"face {face} comes from a video ({path}): no thumbnail")
    problem = path_problem(path)
    if problem is not None:
        raise ServiceError(404, f"face {face}: its photo {path} is gone ({problem})")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ServiceError(404, f"face {face}: its photo {path} has too many pixels to read")
            box = entry.box
            side = (
                max(box[2] - box[0], box[3] - box[1], 1.0) * (1 + 2 * MARGIN) if box else max(width, height)
            )
            scale = min(1.0, THUMBNAIL / side)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            factor = image.size[0] / width  # of the decoded pixels, 1 unless the JPEG was drafted
            with pixels.reserve(path, image.size):
                cut = _cut(ImageOps.exif_transpose(image), box, factor)
    except ServiceError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServiceError(404, f"face {face}: its photo {path} cannot be read") from None
    out = io.BytesIO()
    cut.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def _cut(image: Image.Image, box: tuple[float, ...] | None, factor: float) -> Image.Image:
    """The square around `box` (in pixels of the full-size image; `factor` scales them to `image`'s),
    with the margin, kept inside the image, as RGB of at most THUMBNAIL pixels a side; the whole image
    for a face without a box (one enrolled as an aligned crop)."""
    x1, y1, x2, y2 = (v * factor for v in box) if box else (0, 0, image.width, image.height)
    half = max(x2 - x1, y2 - y1, 1.0) * (0.5 + MARGIN)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    area = (
        max(0, round(cx - half)),
        max(0, round(cy - half)),
        min(image.width, round(cx + half)),
        min(image.height, round(cy + half)),
    )
    cut = image.crop(area).convert("RGB")
    cut.thumbnail((THUMBNAIL, THUMBNAIL))
    return cut
