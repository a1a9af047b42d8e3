"""dlib's face chip: the geometry of `get_face_chip_details` and the pixels of `extract_image_chip`.

The arithmetic follows dlib (dlib/image_transforms/interpolation.h, image_pyramid.h,
geometry/drectangle.h) step by step, because dlib's ResNet was trained on chips cut exactly this way:

- The chip is the similarity transform (Umeyama's least squares) that best maps a fixed template of the
  five landmarks, padded by `padding` on every side and scaled to the chip size, onto the landmarks.
  dlib keeps it as a rectangle in the image (the chip's size times the transform's scale, centred where
  the chip's centre lands), an angle, and the chip's rows and columns.
- When the rectangle is much larger than the chip, dlib does not sample the photo directly (bilinear
  sampling would then skip pixels): it first halves a crop around the face with its 5x5 Gaussian pyramid
  (integer [1 4 6 4 1] filter, truncating division by 256, dropping alternate rows and columns) until
  one more halving would make the rectangle smaller than the chip.
- Each chip pixel maps through an affine transform into that image and is interpolated bilinearly in
  double precision; the result is truncated (not rounded) to 8 bits, and pixels whose 2x2 neighbourhood
  leaves the image are black.

Chips are cut one at a time, as dlib's `get_face_chip` and face_recognition's `face_encodings` do (given
several chips at once, dlib crops one region around all of them, which moves the pyramid's grid). Scalar
geometry uses Python's `math` (the C library's sin, cos and atan2, as dlib's), pixel work numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# dlib's mean positions of its five landmarks (eye corners, then the base of the nose) in a unit face box.
FIVE_POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

Rect = tuple[float, float, float, float]  # dlib's drectangle: left, top, right, bottom, all inclusive


@dataclass(frozen=True)
class ChipDetails:
    """dlib's chip_details: where a chip lies in the image (`rect`, turned by `angle`) and its size."""

    rect: Rect
    angle: float
    rows: int
    cols: int


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib's find_similarity_transform for point sets (..., N, 2): the (..., 2, 2) matrix and (..., 2)
    shift of the rotation, scale and translation best mapping `source` onto `target`.

    dlib solves Umeyama's equations with an SVD of the 2x2 covariance; in two dimensions the optimal
    rotation and scale have a closed form, which equals dlib's result up to the last bits and works on
    any number of point sets at once.
    """
    source_mean = source.mean(axis=-2, keepdims=True)
    target_mean = target.mean(axis=-2, keepdims=True)
    source, target = source - source_mean, target - target_mean
    spread = (source * source).sum(axis=(-2, -1))
    cosine = (source * target).sum(axis=(-2, -1)) / spread
    sine = (source[..., 0] * target[..., 1] - source[..., 1] * target[..., 0]).sum(axis=-1) / spread
    matrix = np.stack([cosine, -sine, sine, cosine], axis=-1).reshape(*cosine.shape, 2, 2)
    shift = target_mean[..., 0, :] - (matrix @ source_mean[..., 0, :, None])[..., 0]
    return matrix, shift


def face_chip_details(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's get_face_chip_details for the five points of dlib's 5-point shape predictor."""
    template = (padding + FIVE_POINT_TEMPLATE) * (1.0 / (2 * padding + 1)) * size
    matrix, shift = similarity_transform(template, np.asarray(landmarks, dtype=np.float64))
    (m00, m01), (m10, m11) = matrix.tolist()
    scale = math.sqrt(m00 * m00 + m10 * m10)
    half = size / 2.0
    centre_x = m00 * half + m01 * half + shift[0]
    centre_y = m10 * half + m11 * half + shift[1]
    reach = (size * scale - 1) / 2  # dlib's centered_drect: a width of w spans w - 1 between its edges
    rect = (centre_x - reach, centre_y - reach, centre_x + reach, centre_y + reach)
    return ChipDetails(rect=rect, angle=math.atan2(m10, m00), rows=size, cols=size)


def extract_chip(pixels: np.ndarray, chip: ChipDetails) -> np.ndarray:
    """dlib's extract_image_chip of one chip from an (H, W, 3) uint8 RGB array: (rows, cols, 3) uint8."""
    crop_box, level, rect = _source_of(chip, pixels.shape[0], pixels.shape[1])
    left, top, right, bottom = crop_box
    source = np.ascontiguousarray(np.moveaxis(pixels[top : bottom + 1, left : right + 1], -1, 0))
    for _ in range(level + 1):
        source = pyramid_down(source)
    corner, across, down = (_turned(rect, chip.angle, x, y) for x, y in ((0, 1), (2, 1), (0, 3)))
    to_source = np.array(
        [
            [(across[0] - corner[0]) / (chip.cols - 1), (down[0] - corner[0]) / (chip.rows - 1), corner[0]],
            [(across[1] - corner[1]) / (chip.cols - 1), (down[1] - corner[1]) / (chip.rows - 1), corner[1]],
        ]
    )
    return sample_bilinear(source, to_source, chip.rows, chip.cols)


def _source_of(chip: ChipDetails, height: int, width: int) -> tuple[tuple[int, int, int, int], int, Rect]:
    """What extract_image_chips samples for `chip`: the integer crop of the image it works in, the
    pyramid level to sample (-1: the crop itself) and the chip's rectangle in that level's pixels."""
    grow = 2.0
    rect = _rect_down(chip.rect)
    while _area(rect) > chip.rows * chip.cols:
        rect = _rect_down(rect)
        grow = grow * 2 + 2
    turned = [_turned(chip.rect, chip.angle, x, y) for x, y in ((0, 1), (2, 1), (0, 3), (2, 3))]
    xs, ys = [p[0] for p in turned], [p[1] for p in turned]
    grown = (
        max(min(xs) - grow, 0.0),
        max(min(ys) - grow, 0.0),
        min(max(xs) + grow, float(width - 1)),
        min(max(ys) + grow, float(height - 1)),
    )
    crop_box = tuple(math.floor(v + 0.5) for v in grown)
    if crop_box[0] > crop_box[2] or crop_box[1] > crop_box[3]:
        crop_box = (0, 0, -1, -1)
    left, top = crop_box[0], crop_box[1]
    rect = (chip.rect[0] - left, chip.rect[1] - top, chip.rect[2] - left, chip.rect[3] - top)
    level = -1
    while _area(_rect_down(rect)) > chip.rows * chip.cols:
        level += 1
        rect = _rect_down(rect)
    return crop_box, level, rect


def _rect_down(rect: Rect) -> Rect:
    """dlib's pyramid_down<2>::rect_down: where a rectangle lies one pyramid level down."""
    left, top, right, bottom = rect
    return (left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75)


def _area(rect: Rect) -> float:
    left, top, right, bottom = rect
    if left > right or top > bottom:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _turned(rect: Rect, angle: float, x: int, y: int) -> tuple[float, float]:
    """The corner (rect[x], rect[y]) turned by `angle` about the rectangle's centre (dlib's rotate_point)."""
    centre_x, centre_y = (rect[0] + rect[2]) / 2.0, (rect[1] + rect[3]) / 2.0
    dx, dy = rect[x] - centre_x, rect[y] - centre_y
    cosine, sine = math.cos(angle), math.sin(angle)
    return cosine * dx - sine * dy + centre_x, sine * dx + cosine * dy + centre_y


def pyramid_down(planes: np.ndarray) -> np.ndarray:
    """One level of dlib's pyramid_down<2> on (3, H, W) uint8 colour planes; empty when H or W is 8 or
    less. Sums of at most 16 x 16 x 255 fit 16 bits, so the integer filter runs in uint16."""
    height, width = planes.shape[1:]
    if height <= 8 or width <= 8:
        return np.zeros((3, 0, 0), dtype=np.uint8)
    across = _binomial_halving(planes, (width - 3) // 2, axis=2)
    return (_binomial_halving(across, (height - 3) // 2, axis=1) >> 8).astype(np.uint8)


def _binomial_halving(values: np.ndarray, count: int, axis: int) -> np.ndarray:
    """`count` uint16 sums v[2i] + 4 v[2i+1] + 6 v[2i+2] + 4 v[2i+3] + v[2i+4] along `axis`.

    The even and odd entries are copied apart first: sums of contiguous arrays run several times
    faster than sums of every other entry.
    """

    def along(array: np.ndarray, start: int, stop: int | None, step: int = 1) -> np.ndarray:
        return array[(slice(None),) * axis + (slice(start, stop, step),)]

    even = along(values, 0, 2 * count + 3, 2).astype(np.uint16)
    odd = along(values, 1, 2 * count + 2, 2).astype(np.uint16)
    total = along(even, 0, -2) + along(even, 2, None)
    total += (along(odd, 0, -1) + along(odd, 1, None)) << 2
    total += along(even, 1, -1) * np.uint16(6)
    return total


def sample_bilinear(planes: np.ndarray, to_source: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's transform_image with interpolate_bilinear: chip pixel (c, r) takes the (3, H, W) `planes`
    at to_source @ (c, r, 1), interpolated in double precision and truncated; black outside them."""
    height, width = planes.shape[1:]
    (m00, m01, b0), (m10, m11, b1) = to_source.tolist()
    column, row = np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64)[:, None]
    x = (m00 * column + m01 * row + b0).ravel()
    y = (m10 * column + m11 * row + b1).ravel()
    left, top = np.floor(x), np.floor(y)
    inside = (left >= 0) & (top >= 0) & (left + 1 < width) & (top + 1 < height)
    if not inside.any():
        return np.zeros((rows, cols, 3), dtype=np.uint8)
    corner = np.where(inside, top * width + left, 0).astype(np.intp)
    flat = planes.reshape(3, -1)
    across, down = x - left, y - top
    upper = (1 - across) * flat[:, corner] + across * flat[:, corner + 1]
    lower = (1 - across) * flat[:, corner + width] + across * flat[:, corner + width + 1]
    values = np.where(inside, np.clip((1 - down) * upper + down * lower, 0, 255), 0)
    return values.astype(np.uint8).T.reshape(rows, cols, 3)
