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
geometry uses Python's `math` (the C library's sin, cos and atan2, as dlib's), pixel work numpy: the
crop is read where it lies in the photo, and worked on a band of rows at a time (arrays the size of a
chip or a crop, allocated and freed for every step, cost more in page faults than in arithmetic).
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

BAND_PIXELS = 2048  # chip pixels sampled at a time (see sample_bilinear)
PYRAMID_PIXELS = 16384  # input pixels halved at a time (see pyramid_down)
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
    source = pixels[top : bottom + 1, left : right + 1]  # a view: sampled in place, or halved
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


def pyramid_down(pixels: np.ndarray) -> np.ndarray:
    """One level of dlib's pyramid_down<2> on an (H, W, 3) uint8 image (any strides, such as a crop of
    a larger one); empty when H or W is 8 or less. The result is an (h, w, 3) view of colour planes.

    Sums of at most 16 x 16 x 255 fit 16 bits, so the integer filter runs in uint16, on colour planes
    (on interleaved pixels numpy's loops would run three values long). Output rows are made a band at
    a time, each from the input rows it reads: arrays over a whole large crop would be megabytes,
    mapped fresh from the system (page faults) every time.
    """
    height, width = pixels.shape[:2]
    if height <= 8 or width <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    rows, cols = (height - 3) // 2, (width - 3) // 2
    halved = np.empty((3, rows, cols), dtype=np.uint8)
    band = max(8, PYRAMID_PIXELS // width)
    for first in range(0, rows, band):
        last = min(first + band, rows)
        planes = np.ascontiguousarray(np.moveaxis(pixels[2 * first : 2 * last + 3], -1, 0))
        across = _binomial_halving(planes, cols, axis=2)
        halved[:, first:last] = _binomial_halving(across, last - first, axis=1) >> 8
    return halved.transpose(1, 2, 0)


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


def sample_bilinear(pixels: np.ndarray, to_source: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's transform_image with interpolate_bilinear: chip pixel (c, r) takes the (H, W, 3) uint8
    `pixels` at to_source @ (c, r, 1), interpolated in double precision and truncated; black where
    the 2x2 neighbourhood leaves them.

    dlib clamps to 0..255 before truncating; a weighted mean of values in 0..255 with weights in [0, 1]
    is never negative and passes 255 by a rounding at most, which truncates to 255: no clamp is needed.

    How, for speed: `pixels` may be a crop (a view into a larger image) and is read where it lies,
    with `take` on one flat view of its memory (along an axis of a larger array, `take` copies the array
    first). A band of chip rows (about BAND_PIXELS pixels) is sampled at a time, since arrays of
    doubles over a whole chip are hundreds of kilobytes each and the allocator maps such blocks fresh
    from the system every time, paying their page faults again (a chip cost more in faults than in
    arithmetic). The three colours of a band lie side by side in one flat array, weights repeated for
    each, since numpy runs an operation between arrays of one shape and type in a plain loop but
    buffers one that broadcasts or mixes types.
    """
    height, width = pixels.shape[:2]
    chip = np.zeros((3, rows, cols), dtype=np.uint8)
    if height < 2 or width < 2:  # no 2x2 neighbourhood anywhere
        return chip.transpose(1, 2, 0).copy()
    flat = _flat_view(pixels)
    down, across, colour = pixels.strides  # steps in `flat` to the next row, column, colour
    (m00, m01, b0), (m10, m11, b1) = to_source.tolist()
    column = np.arange(cols, dtype=np.float64)
    across_columns, down_columns = m00 * column, m10 * column
    band = max(1, BAND_PIXELS // cols)
    for first in range(0, rows, band):
        row = np.arange(first, min(first + band, rows), dtype=np.float64)[:, None]
        x = (across_columns + m01 * row).ravel()  # (m00 c + m01 r) + b0, in dlib's order
        x += b0
        y = (down_columns + m11 * row).ravel()
        y += b1
        left, top = np.floor(x), np.floor(y)
        x -= left  # now the weight of the right-hand column
        y -= top  # and of the lower row
        left, top = left.astype(np.intp), top.astype(np.intp)
        inside = (left.view(np.uintp) < width - 1) & (top.view(np.uintp) < height - 1)
        corner = top * down
        corner += left * across
        corner = np.where(inside, corner, 0)
        corner = np.concatenate([corner, corner + colour, corner + 2 * colour])  # red, green, blue
        right, lower = np.tile(x, 3), np.tile(y, 3)
        values = _weighted_pair(flat, corner, 0, across, right)
        values *= 1 - lower
        below = _weighted_pair(flat, corner, down, down + across, right)
        below *= lower
        values += below
        values = values.astype(np.uint8)
        values *= np.tile(inside.view(np.uint8), 3)  # black outside
        chip[:, first : first + len(row)] = values.reshape(3, len(row), cols)
    return chip.transpose(1, 2, 0).copy()


def _flat_view(pixels: np.ndarray) -> np.ndarray:
    """A 1-D uint8 view of the memory an (H, W, 3) image spans, from its first pixel: pixel (r, c)
    colour k is at r s0 + c s1 + k s2 for its strides s (copied first if a stride is negative)."""
    if min(pixels.strides) < 0:
        pixels = np.ascontiguousarray(pixels)
    span = sum((size - 1) * stride for size, stride in zip(pixels.shape, pixels.strides, strict=True)) + 1
    return np.lib.stride_tricks.as_strided(pixels, shape=(span,), strides=(1,), writeable=False)


def _weighted_pair(
    flat: np.ndarray, corner: np.ndarray, first: int, second: int, weight: np.ndarray
) -> np.ndarray:
    """(1 - w) a + w b, in that order, for the pixels a and b at `first` and `second` past `corner`,
    each converted to doubles whole (arithmetic that mixes uint8 and doubles is buffered)."""
    values = np.take(flat, corner + first).astype(np.float64)
    values *= 1 - weight
    other = np.take(flat, corner + second).astype(np.float64)
    other *= weight
    values += other
    return values
