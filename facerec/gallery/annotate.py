"""Pictures of identify's answer: each face's box with its name (or "unknown") and distance drawn on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facerec.gallery.identify import Identification
from facerec.pipeline.images import load_image

KNOWN = (46, 204, 64)
UNKNOWN = (255, 65, 54)
TEXT = (255, 255, 255)


@dataclass(frozen=True)
class Label:
    """A box to draw and the text under it; known faces are drawn green, unknown ones red."""

    box: tuple[float, float, float, float]
    text: str
    known: bool


def label_of(found: Identification, prefix: str = "") -> Label:
    """How a face identify answered is labelled: its name (or "unknown") and its distance."""
    text = prefix + (found.identity if found.identity is not None else "unknown")
    if found.distance is not None:
        text += f" {found.distance:.2f}"
    return Label(found.face.box, text, found.identity is not None)


def draw(image: Image.Image, faces: Sequence[Identification]) -> Image.Image:
    """A copy of `image` with every face boxed and labelled; sizes follow the picture's size."""
    return draw_labels(image, [label_of(found) for found in faces])


def draw_labels(image: Image.Image, labels: Sequence[Label]) -> Image.Image:
    """A copy of `image` with every label's box and text drawn, the text below the box (else above)."""
    picture = image.copy()
    pen = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, min(picture.size) // 30))
    width = max(2, min(picture.size) // 200)
    for label in labels:
        colour = KNOWN if label.known else UNKNOWN
        x1, y1, x2, y2 = label.box
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        _, top, _, bottom = pen.textbbox((0, 0), label.text, font=font)
        y = y2 if y2 + bottom + width <= picture.height else max(y1 - bottom - width, 0)  # below, else above
        left, top, right, bottom = pen.textbbox((x1, y), label.text, font=font)
        pen.rectangle((left - width, top - width, right + width, bottom + width), fill=colour)
        pen.text((x1, y), label.text, fill=TEXT, font=font)
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
