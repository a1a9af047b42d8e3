"""The `dlib-5point` aligner: dlib's 5-point shape predictor on the detector's box, then dlib's face chip.

This is how face_recognition (and dlib's own examples) cut the 150 x 150 picture dlib's ResNet embeds:
`shape_predictor_5_face_landmarks.dat` places two corners of each eye and the base of the nose inside the
detected box, then `get_face_chip` rotates and scales the face so those points land on dlib's template,
with `padding` (0.25 in face_recognition) of the template's size around it. Both steps match dlib to the
pixel (see dlib_shape and dlib_chip). The model file is fetched and read once per process, on first use.

Boxes become dlib rectangles as `dlib_shape.dlib_rectangle` says: a box (l, t, r + 1, b + 1) is dlib's
rectangle (l, t, r, b), the one face_recognition passes to the predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from facerec.plugin import Face, Point, Register, UsageError, fetch, hookimpl
from facerec_plugins.dlib.chip import extract_chip, face_chip_details
from facerec_plugins.dlib.models import SHAPE_PREDICTOR_5
from facerec_plugins.dlib.picture import Picture
from facerec_plugins.dlib.shape import ShapePredictor, dlib_rectangle, load_shape_predictor


@cache
def shape_predictor() -> ShapePredictor:
    """dlib's 5-point shape predictor, fetched (installed copy, cache or download) and read once."""
    return load_shape_predictor(*fetch(SHAPE_PREDICTOR_5))


def _landmarks(requests: Sequence[tuple[Picture, Sequence[Face]]]) -> list[np.ndarray]:
    """The points of each picture's faces: all the faces of all the pictures go through the predictor
    together (its cost is per level of its cascade, not per face)."""
    rects = [np.array([dlib_rectangle(face.box) for face in faces]).reshape(-1, 4) for _, faces in requests]
    return shape_predictor().predict_all(
        [(picture, found) for (picture, _), found in zip(requests, rects, strict=True)]
    )


def five_point_landmarks(image: Image.Image, faces: Sequence[Face]) -> list[tuple[Point, ...]]:
    """dlib's five points for each face, in dlib's order: the outer and inner corner of the eye on the
    image's right, the outer and inner corner of the other eye, the base of the nose. Whole pixels, as
    dlib returns them. (Not facerec's `Face.landmarks`, which are eye centres, nose tip, mouth corners.)"""
    (points,) = _landmarks([(Picture(image), faces)])
    return [tuple((float(x), float(y)) for x, y in face) for face in points]


class DlibFivePoint:
    """The aligner: dlib's landmarks on each box, then dlib's chip of `size` with `padding` around."""

    def __init__(self, padding: float = 0.25) -> None:
        try:
            self.padding = float(padding)
        except (TypeError, ValueError):
            raise UsageError(f"aligner 'dlib-5point': padding must be a number, not {padding!r}") from None
        if not self.padding >= 0:
            raise UsageError(f"aligner 'dlib-5point': padding must be 0 or more, not {padding!r}")
        self.settings: dict[str, Any] = {"name": "dlib-5point", "padding": self.padding}

    def align(self, image: Image.Image, faces: Sequence[Face], size: int) -> list[Image.Image]:
        return self.align_all([(image, faces)], size)[0]

    def align_all(
        self, items: Sequence[tuple[Image.Image, Sequence[Face]]], size: int
    ) -> list[list[Image.Image]]:
        """`align` for several images at once: their landmarks in one run of the predictor."""
        requests = [(Picture(image), faces) for image, faces in items]
        return [
            [
                Image.fromarray(extract_chip(picture, face_chip_details(face, size, self.padding)))
                for face in points
            ]
            for (picture, _), points in zip(requests, _landmarks(requests), strict=True)
        ]


@hookimpl
def register_aligners(register: Register) -> None:
    register("dlib-5point", DlibFivePoint)
