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
geometry uses Python's `math` (the C library's sin, cos and atan2, as dlib's), pixel work numpy, on
four-byte pixels (see facerec_plugins.dlib.picture): the crop is read where it lies in the picture's
converted region, halved a band of rows at a time, and sampled with one gather per chip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facerec_plugins.dlib.picture import Picture

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

PYRAMID_PIXELS = 16384  # input pixels halved at a time (see pyramid_down)
LANE_BYTES = 0x00FF00FF00FF00FF  # the low byte of each 16-bit lane of a uint64
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


def extract_chip(picture: Picture, chip: ChipDetails) -> np.ndarray:
    """dlib's extract_image_chip of one chip from `picture`: (rows, cols, 3) uint8 RGB."""
    crop_box, level, rect = _source_of(chip, picture.height, picture.width)
    left, top, right, bottom = crop_box
    source = picture.region(crop_box) if left <= right and top <= bottom else np.zeros((0, 0, 4), np.uint8)
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
    """One level of dlib's pyramid_down<2> on an (H, W, 4) uint8 image of four-byte pixels (red, green,
    blue, one more; rows may be strided, such as a region of a larger image); empty when H or W is 8 or
    less. The result is (h, w, 4), contiguous: the fourth byte is filtered too, and never read.

    Sums of at most 16 x 16 x 255 fit 16 bits, so a pixel widened to four 16-bit lanes of one uint64
    is filtered whole: sums and products by 4 and 6 never carry from one lane into the next, and one
    operation does all four colours (half again as fast as colour planes, which also cost a transposing
    copy). Output rows are made a band at a time, each from the input rows it reads: arrays over a
    whole large crop would be megabytes, mapped fresh from the system (page faults) every time.
    """
    height, width = pixels.shape[:2]
    if height <= 8 or width <= 8:
        return np.zeros((0, 0, 4), dtype=np.uint8)
    rows, cols = (height - 3) // 2, (width - 3) // 2
    halved = np.empty((rows, cols, 4), dtype=np.uint8)
    band = max(8, PYRAMID_PIXELS // width)
    for first in range(0, rows, band):
        last = min(first + band, rows)
        lanes = pixels[2 * first : 2 * last + 3].astype(np.uint16).view(np.uint64)[..., 0]
        sums = _binomial_halving(_binomial_halving(lanes, cols, axis=1), last - first, axis=0)
        halved[first:last] = ((sums >> 8) & LANE_BYTES).view(np.uint16).reshape(last - first, cols, 4)
    return halved


def _binomial_halving(values: np.ndarray, count: int, axis: int) -> np.ndarray:
    """`count` sums v[2i] + 4 v[2i+1] + 6 v[2i+2] + 4 v[2i+3] + v[2i+4] along `axis`.

    The even and odd entries are copied apart first: sums of contiguous arrays run several times
    faster than sums of every other entry.
    """

    def along(array: np.ndarray, start: int, stop: int | None, step: int = 1) -> np.ndarray:
        return array[(slice(None),) * axis + (slice(start, stop, step),)]

    even = np.ascontiguousarray(along(values, 0, 2 * count + 3, 2))
    odd = np.ascontiguousarray(along(values, 1, 2 * count + 2, 2))
    total = along(even, 0, -2) + along(even, 2, None)
    total += (along(odd, 0, -1) + along(odd, 1, None)) << 2
    total += along(even, 1, -1) * 6
    return total


def sample_bilinear(pixels: np.ndarray, to_source: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's transform_image with interpolate_bilinear: chip pixel (c, r) takes the (H, W, 4) uint8
    four-byte `pixels` (rows may be strided) at to_source @ (c, r, 1), interpolated in double precision
    and truncated; black where the 2x2 neighbourhood leaves them. Returns (rows, cols, 3) uint8 RGB.

    dlib clamps to 0..255 before truncating; a weighted mean of values in 0..255 with weights in [0, 1]
    is never negative and passes 255 by a rounding at most, which truncates to 255: no clamp is needed.

    How, for speed: the four neighbours of every chip pixel are one gather of uint32 pixels, and each
    step of dlib's formula runs over all colours and pixels at once (see `_mixed_rows`). The colours
    are written into the chip one at a time: a transposing copy of the whole is several times slower.
    """
    height, width = pixels.shape[:2]
    if height < 2 or width < 2:  # no 2x2 neighbourhood anywhere
        return np.zeros((rows, cols, 3), dtype=np.uint8)
    flat, row_step = _flat_pixels(pixels)
    corner, right, lower, inside = _neighbourhoods(to_source, rows, cols, (height, width), row_step)
    quads = np.take(flat, corner + np.array([[0], [row_step], [1], [row_step + 1]]))  # tl, bl, tr, br
    chip = np.empty((rows * cols, 3), dtype=np.uint8)
    for colour, (upper, below) in enumerate(_mixed_rows(quads, right, lower)):
        chip[:, colour] = (upper + below).astype(np.uint8) * inside  # black outside
    return chip.reshape(rows, cols, 3)


def _neighbourhoods(
    to_source: np.ndarray, rows: int, cols: int, shape: tuple[int, int], row_step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each chip pixel, row by row: where the top-left of its 2x2 neighbourhood is in a flat image
    with rows `row_step` apart (0 where it is not inside), the weights of the right-hand column and the
    lower row, and whether the neighbourhood lies inside an image of `shape` (height, width)."""
    (m00, m01, b0), (m10, m11, b1) = to_source.tolist()
    column = np.arange(cols, dtype=np.float64)
    row = np.arange(rows, dtype=np.float64)[:, None]
    x = (m00 * column + m01 * row).ravel()  # (m00 c + m01 r) + b0, in dlib's order
    x += b0
    y = (m10 * column + m11 * row).ravel()
    y += b1
    left, top = np.floor(x), np.floor(y)
    x -= left  # now the weight of the right-hand column
    y -= top  # and of the lower row
    left, top = left.astype(np.intp), top.astype(np.intp)
    inside = (left.view(np.uintp) < shape[1] - 1) & (top.view(np.uintp) < shape[0] - 1)
    corner = top * row_step
    corner += left
    return np.where(inside, corner, 0), x, y, inside


def _mixed_rows(quads: np.ndarray, right: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """(3, 2, N) float64: dlib's (1 - ty) ((1 - tx) tl + tx tr) and ty ((1 - tx) bl + tx br), colour by
    colour, for the (4, N) uint32 pixels tl, bl, tr, br and the weights tx (`right`) and ty (`lower`).

    One array of doubles holds every colour of every neighbour and is worked in place: the weights
    broadcast along its last axis (numpy's fast case, a long contiguous inner loop), and no temporary
    the size of it is allocated (arrays of megabytes are mapped fresh from the system, page faults).
    """
    values = np.empty((3, 4, quads.shape[1]), dtype=np.float64)
    for colour in range(3):
        values[colour] = quads.view(np.uint8)[:, colour::4]
    values[:, :2] *= 1 - right
    values[:, 2:] *= right
    values[:, :2] += values[:, 2:]
    values[:, 0] *= 1 - lower
    values[:, 1] *= lower
    return values[:, :2]


def _flat_pixels(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """A 1-D uint32 view of the pixels an (H, W, 4) uint8 image spans, from its first, and the step in it
    from one row to the next (a region of a larger image is read where it lies, not copied)."""
    if pixels.strides[1:] != (4, 1) or pixels.strides[0] % 4:
        pixels = np.ascontiguousarray(pixels)
    row_step = pixels.strides[0] // 4
    span = (pixels.shape[0] - 1) * row_step + pixels.shape[1]
    flat = np.lib.stride_tricks.as_strided(
        pixels.view(np.uint32), shape=(span,), strides=(4,), writeable=False
    )
    return flat, row_step
