"""What a detector finds in an image, independent of any detector."""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One face: its box in pixels of the decoded image, the detector's confidence and five landmarks.

    `score` and `landmarks` are None for detectors that do not produce them (the `none` detector).
    Landmarks are left eye, right eye, nose, left mouth corner, right mouth corner.
    """

    box: tuple[float, float, float, float]
    score: float | None = None
    landmarks: tuple[Point, Point, Point, Point, Point] | None = None

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    def scaled(self, sx: float, sy: float) -> Face:
        """This face with its box and landmarks multiplied by (sx, sy): from a resized image's pixels
        to the original's."""
        x1, y1, x2, y2 = self.box
        landmarks = None if self.landmarks is None else tuple((x * sx, y * sy) for x, y in self.landmarks)
        return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), self.score, landmarks)

    def to_json(self) -> dict:
        """The FACE object of the JSON output (docs: README, "Usage"): box, score and landmarks as plain floats."""
        return {
            "box": [float(v) for v in self.box],
            "score": None if self.score is None else float(self.score),
            "landmarks": None
            if self.landmarks is None
            else [[float(x), float(y)] for x, y in self.landmarks],
        }


def largest_first(faces: list[Face]) -> list[Face]:
    """Faces ordered by box area, largest first, as every command reports them."""
    return sorted(faces, key=lambda face: face.area, reverse=True)
