"""Contact sheets: one PNG per person, a grid of its face thumbnails, to look at before naming."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from facerec.atomic import write_atomically
from facerec.pipeline.images import ImageError, load_image

THUMB = 112
COLUMNS = 8
MOST = 64  # faces shown per sheet


def write_sheets(records: Sequence[dict[str, Any]], folder: Path) -> Iterator[Path]:
    """Write `folder/<person>.png` for every person of `records` (`folder/unassigned.png` for the rest)."""
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        if not record["faces"]:
            continue
        name = record["person"] or "unassigned"
        target = folder / f"{name}.png"
        sheet = _sheet(record, name)
        write_atomically(target, lambda file, sheet=sheet: sheet.save(file, format="PNG"))
        yield target


def _sheet(record: dict[str, Any], name: str) -> Image.Image:
    faces = record["faces"][:MOST]
    rows = (len(faces) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * THUMB, 24 + rows * THUMB), "white")
    pen = ImageDraw.Draw(sheet)
    title = f"{name}  {record['name'] or ''}  ({len(record['faces'])} faces)"
    pen.text((6, 4), title, fill="black", font=ImageFont.load_default(size=14))
    pictures: dict[str, Image.Image] = {}
    for number, face in enumerate(faces):
        try:
            picture = pictures.get(face["image"]) or pictures.setdefault(
                face["image"], load_image(face["image"])
            )
        except ImageError:
            continue  # the photo is gone: its place stays blank
        x1, y1, x2, y2 = face["box"]
        thumb = picture.crop((int(x1), int(y1), int(x2), int(y2)))
        thumb.thumbnail((THUMB - 4, THUMB - 4))
        sheet.paste(thumb, ((number % COLUMNS) * THUMB + 2, 24 + (number // COLUMNS) * THUMB + 2))
    return sheet
