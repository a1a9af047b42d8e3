"""Pictures of identify's answer: each face's box with its name (or "unknown") and distance drawn on it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facerec.gallery.identify import Identification
from facerec.pipeline.images import load_image

KNOWN = (46, 204, 64)
UNKNOWN = (255, 65, 54)
TEXT = (255, 255, 255)


def draw(image: Image.Image, faces: Sequence[Identification]) -> Image.Image:
    """A copy of `image` with every face boxed and labelled; sizes follow the picture's size."""
    picture = image.copy()
    pen = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, min(picture.size) // 30))
    width = max(2, min(picture.size) // 200)
    for found in faces:
        colour = KNOWN if found.identity is not None else UNKNOWN
        x1, y1, x2, y2 = found.face.box
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = found.identity if found.identity is not None else "unknown"
        if found.distance is not None:
            label += f" {found.distance:.2f}"
        _, top, _, bottom = pen.textbbox((0, 0), label, font=font)
        y = y2 if y2 + bottom + width <= picture.height else max(y1 - bottom - width, 0)  # below, else above
        left, top, right, bottom = pen.textbbox((x1, y), label, font=font)
        pen.rectangle((left - width, top - width, right + width, bottom + width), fill=colour)
        pen.text((x1, y), label, fill=TEXT, font=font)
    return picture


class AnnotatedFolder:
    """Where one run writes its annotated pictures: each under its own name, numbered if two share one.

    A later run overwrites the pictures of an earlier one rather than piling up copies.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.written: set[Path] = set()

    def save(self, source: str, faces: Sequence[Identification]) -> Path:
        """Write `source` with `faces` drawn on it; returns the path written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        original = Path(source)
        suffix = original.suffix.lower()
        if Image.registered_extensions().get(suffix) not in Image.SAVE:
            suffix = ".png"
        target = self.folder / f"{original.stem}{suffix}"
        number = 2
        while target in self.written:
            target = self.folder / f"{original.stem}-{number}{suffix}"
            number += 1
        draw(load_image(source), faces).save(target)
        self.written.add(target)
        return target
