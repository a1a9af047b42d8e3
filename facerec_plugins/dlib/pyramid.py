"""dlib's image pyramids as its MMOD face detector uses them, and the maps between their coordinates.

Three pieces of dlib, reproduced so that boxes land on the same pixels as dlib's:

- `pyramid_up` (dlib/image_transforms/interpolation.h with `pyramid_down<2>`), what the Python binding's
  `upsample_num_times` does to the image first: it is resized bilinearly (corners aligned) to
  (2 * rows + 1) x (2 * columns + 2), the size `pyramid_down<2>::rect_up` gives the image's rectangle,
  and its 8-bit values are truncated. `rect_down_2` maps the found rectangles back.
- The tiled pyramid of `input_rgb_image_pyramid<pyramid_down<6>>` (dlib/dnn/input.h, `create_tiled_
  pyramid` and `compute_tiled_image_pyramid_details` in dlib/image_transforms/image_pyramid.h): every
  level, each 5/6 the size of the previous one down to 5 rows, is packed into ONE image, the first
  column of tiles under one another, the remaining ones bottom-up along the right edge, `padding`
  pixels apart and `outer_padding` from the border; gaps are zero (the mean colour, after the input
  layer subtracts it). Each level is resized bilinearly (corners aligned) from the previous level's
  normalized values. The network runs once on that image, so windows near a tile's edge see the
  neighbouring tiles and the gaps exactly as dlib's do.
- `TiledPyramid.to_image`: dlib's `tiled_pyramid_to_image`, a rectangle of the tiled image to the
  original image: the tile nearest its (rounded) centre says the level, then each level up maps a point
  p to 1.2 p + 0.3 (`pyramid_down<6>::point_up`).

Rectangles are dlib's: (left, top, right, bottom), inclusive, as float64 arrays of shape (N, 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LEVEL_RATE = 5 / 6  # pyramid_down<6>: each level is 5/6 the size of the previous one
MIN_LEVEL_ROWS = 5  # compute_tiled_image_pyramid_details stops before levels shorter than this
POINT_UP_SCALE = 6 / 5  # pyramid_down<6>::point_up: p * N / (N - 1) + 0.3
POINT_UP_SHIFT = 0.3
UPSAMPLE_SHIFT = np.array([1.25, 0.75, 1.25, 0.75])  # pyramid_down<2>::point_down: p / 2 - (1.25, 0.75)
RESIZE_BAND_ROWS = 256  # output rows resized at a time


def round_half_up(values: np.ndarray) -> np.ndarray:
    """dlib's conversion of real coordinates to integer ones: floor(x + 0.5)."""
    return np.floor(values + 0.5)


def pyramid_up(planes: np.ndarray) -> np.ndarray:
    """dlib's `pyramid_up(image)` of a uint8 image as colour planes (3, H, W): (3, 2H + 1, 2W + 2)."""
    _, height, width = planes.shape
    return resize_bilinear(planes, 2 * height + 1, 2 * width + 2)


def resize_bilinear(planes: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """dlib's bilinear `resize_image` of an RGB uint8 image, bit for bit, as colour planes (3, H, W).

    Source positions are output positions times (in - 1) / (out - 1), corners aligned, and values are
    truncated. dlib computes most columns four at a time in float32, each group's positions advanced
    from the previous group's in float32, and finishes the row, from the first group that would read
    past the right edge, in float64; truncation makes those roundings visible, so both are followed.
    The work goes a band of rows at a time, which bounds the memory of the gathers.
    """
    _, height, width = planes.shape
    top, row_fraction = _row_positions(height, rows)
    bottom = np.minimum(top + 1, height - 1)
    split, left, column_fraction = _column_positions(width, columns)
    right = np.minimum(left + 1, width - 1)
    out = np.empty((3, rows, columns), dtype=np.uint8)
    for start in range(0, rows, RESIZE_BAND_ROWS):
        band = slice(start, start + RESIZE_BAND_ROWS)
        lines = (planes[:, top[band]], planes[:, bottom[band]])
        corners = [np.take(line, c, axis=2) for line in lines for c in (left, right)]
        vectorized = [corner[..., :split].astype(np.float32) for corner in corners]
        out[:, band, :split] = _blend_float32(vectorized, row_fraction[band], column_fraction[:split])
        scalar = [corner[..., split:].astype(np.float64) for corner in corners]
        out[:, band, split:] = _blend_float64(scalar, row_fraction[band], column_fraction[split:])
    return out


def _row_positions(height: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Each output row's source row above it and the fraction of the way to the next one (float64,
    advanced row by row as dlib does)."""
    step = (height - 1) / max(rows - 1, 1)
    positions = np.cumsum(np.concatenate([[-step], np.full(rows, step)]))[1:]
    top = np.floor(positions).astype(np.int64)
    return top, positions - top


def _column_positions(width: int, columns: int) -> tuple[int, np.ndarray, np.ndarray]:
    """How many leading columns dlib computes in float32 groups of four, and each output column's source
    column to its left and the fraction of the way to the next one."""
    step = (width - 1) / max(columns - 1, 1)
    groups = columns // 4 + 2
    increments = np.empty((groups + 1, 4), dtype=np.float32)
    increments[0] = [-4 * step + lane * step for lane in range(4)]
    increments[1:] = np.float32(4 * step)
    lanes = np.cumsum(increments, axis=0, dtype=np.float32)[1:]
    lane_left = lanes.astype(np.int64)  # truncation, as dlib's float-to-int conversion
    split = min(4 * int(np.argmax(lane_left[:, 3] + 1 >= width)), columns)
    tail = np.cumsum(np.concatenate([[-step + split * step], np.full(columns - split, step)]))[1:]
    tail_left = np.floor(tail).astype(np.int64)
    left = np.concatenate([lane_left.reshape(-1)[:split], tail_left])
    fraction = np.concatenate([lanes.reshape(-1)[:split] - lane_left.reshape(-1)[:split], tail - tail_left])
    return split, left, fraction


def _blend_float32(corners: list[np.ndarray], rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """dlib's four-column loop: float32 weights and a left-to-right float32 sum, truncated."""
    top_left, top_right, bottom_left, bottom_right = corners
    down = rows.astype(np.float32)[:, None]
    up = (1 - rows).astype(np.float32)[:, None]
    across = columns.astype(np.float32)[None, :]
    back = np.float32(1) - across
    total = (up * back) * top_left + (up * across) * top_right
    total += (down * back) * bottom_left
    total += (down * across) * bottom_right
    return total.astype(np.int64)


def _blend_float64(corners: list[np.ndarray], rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """dlib's loop over the remaining columns: float64, interpolated along rows last, truncated."""
    top_left, top_right, bottom_left, bottom_right = corners
    down, across = rows[:, None], columns[None, :]
    upper = (1 - across) * top_left + across * top_right
    lower = (1 - across) * bottom_left + across * bottom_right
    return ((1 - down) * upper + down * lower).astype(np.int64)


def rect_down_2(rects: np.ndarray, levels: int) -> np.ndarray:
    """Rectangles of an image `pyramid_up` `levels` times mapped back to the image (then rounded)."""
    for _ in range(levels):
        rects = rects / 2.0 - UPSAMPLE_SHIFT
    return round_half_up(rects)


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(rows, columns) of every pyramid level, the image first."""
    sizes = [(height, width)]
    while True:
        height, width = int(np.floor(LEVEL_RATE * height)), int(np.floor(LEVEL_RATE * width))
        if height * width == 0 or height < MIN_LEVEL_ROWS:
            return sizes
        sizes.append((height, width))


@dataclass(frozen=True)
class TiledPyramid:
    """Where each pyramid level of an image lies in the tiled image: `tiles` (levels, 4) inclusive
    (left, top, right, bottom), and the tiled image's `height` and `width`."""

    tiles: np.ndarray
    height: int
    width: int

    @classmethod
    def layout(cls, height: int, width: int, padding: int, outer_padding: int) -> TiledPyramid:
        """The tiles of an image of `height` x `width`, placed as dlib places them."""
        sizes = level_sizes(height, width)
        column_height = _first_column_height(sizes, padding)
        tiles: list[tuple[int, int, int, int]] = []
        y = outer_padding
        for rows, columns in sizes:  # the first column, top-down
            if y >= column_height + outer_padding:
                break
            tiles.append((outer_padding, y, outer_padding + columns - 1, y + rows - 1))
            y += rows + padding
        bottom, right = y - padding - 1, outer_padding + width - 1
        for rows, columns in sizes[len(tiles) :]:  # the rest up the right edge, while clear of the image
            top = bottom - rows + 1
            if bottom >= outer_padding and top < outer_padding + height:
                break
            tiles.append((right - columns + 1, top, right, bottom))
            bottom = top - 1 - padding
        return cls(
            np.array(tiles, dtype=np.int64), column_height + 2 * outer_padding, width + 2 * outer_padding
        )

    def build(self, image: torch.Tensor) -> torch.Tensor:
        """The tiled image (1, 3, height, width), channels-last, of a normalized image (3, H, W), each
        level resized bilinearly from the previous one (channels-last throughout: faster, same values)."""
        tiled = image.new_zeros(1, self.height, self.width, 3).permute(0, 3, 1, 2)
        level = image[None].contiguous(memory_format=torch.channels_last)
        for index, (left, top, right, bottom) in enumerate(self.tiles.tolist()):
            if index:
                size = (bottom - top + 1, right - left + 1)
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=True)
            tiled[:, :, top : bottom + 1, left : right + 1] = level
        return tiled

    def to_image(self, rects: np.ndarray) -> np.ndarray:
        """Rectangles (N, 4) of the tiled image mapped to the original image, not yet rounded."""
        centres = round_half_up((rects[:, :2] + rects[:, 2:]) / 2)
        level = self._nearest_tile(centres)
        rects = rects - np.tile(self.tiles[level, :2], 2)
        for step in range(1, int(level.max(initial=0)) + 1):
            up = level >= step
            rects[up] = rects[up] * POINT_UP_SCALE + POINT_UP_SHIFT
        return rects

    def _nearest_tile(self, points: np.ndarray) -> np.ndarray:
        """For each point (N, 2), the index of the tile nearest it (the first, on ties), as dlib's
        `nearest_rect`: a tile containing the point is at distance 0."""
        low, high = self.tiles[None, :, :2], self.tiles[None, :, 2:]
        nearest = np.clip(points[:, None, :], low, high)
        distances = np.linalg.norm(nearest - points[:, None, :], axis=2)
        return distances.argmin(axis=1)


def _first_column_height(sizes: list[tuple[int, int]], padding: int) -> int:
    """How far down the first column of tiles goes: until the next tile fits beside the previous one
    and the first column is tall enough for the rest to come back up the right edge."""
    first_rows, first_columns = sizes[0]
    total = sum(rows + padding for rows, _ in sizes) - 2 * padding
    height, previous_columns = 0, 0
    for rows, columns in sizes:
        fits_beside = columns <= first_columns - previous_columns - padding
        if fits_beside and (height - first_rows) * 2 >= total - first_rows:
            break
        height += rows + padding
        previous_columns = columns
    return height - padding
