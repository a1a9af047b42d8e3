"""dlib's shape predictor (dlib/image_processing/shape_predictor.h): reading its file, running it.

The predictor (Kazemi and Sullivan 2014) is a cascade of forests of regression trees. Each level of the
cascade looks at the intensities of a few hundred pixels placed relative to the current shape estimate,
walks every tree by comparing pairs of those intensities, and adds the correction at each tree's leaf to
the shape. Shapes live in the detection rectangle's unit square, so the result follows the box given.

Running it matches dlib to the pixel: the same single-precision arithmetic where dlib uses floats, the
same rounding of feature points to pixels (out-of-image ones read 0), dlib's grey level of an RGB pixel
((r + g + b) // 3), and the trees' corrections added in the same order. The work is vectorized over the
faces (of one image, or of several) and the trees of a level: all node tests of a level at once, each
tree's packed into a 16-bit code that one table lookup turns into its leaf. Pixels are read from the
faces' surroundings only (see facerec_plugins.dlib.picture), converted once per image and grown if a
feature pixel falls outside.

The file stores 1.3 million floats as 3.2 million of dlib's variable-length integers (a float is two of
them); decoding them one by one in Python takes seconds, so the whole file, which holds nothing but such
integers, is split into them in one pass and decoded with numpy (under a second). Given the file's SHA-256,
`load_shape_predictor` also keeps the decoded arrays in the cache folder (a plain .npz written
atomically, read without pickle), so later processes load it in milliseconds.
"""

from __future__ import annotations

import math
import zipfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np

from facerec.plugin import FacerecError, cache_dir, write_atomically
from facerec_plugins.dlib.picture import Box, Picture
from facerec_plugins.dlib.serialization import EXPONENT_INF, DlibFormatError, DlibReader

VERSION = 1
CACHE_FORMAT = 1  # the layout of the cached arrays; a new layout gets a new file name
# How far each byte moves a reader that is at a dlib integer's control byte: itself plus its low nibble.
INTEGER_STEPS = bytes(1 + (byte & 0x0F) for byte in range(256))
CODE_BITS = 16  # node tests per tree in one code: trees of up to 15 nodes (depth 4, dlib's default)
REACH = 0.35  # how far outside its rectangle, in rectangle sizes, the predictor first reads pixels


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A trained predictor of P points: C cascade levels of N trees with S splits and S + 1 leaves each,
    every level reading K feature pixels."""

    initial_shape: np.ndarray  # (P, 2) float32: the mean shape, in the detection box's unit square
    anchors: np.ndarray  # (C, K) intp: the point each feature pixel is placed from
    deltas: np.ndarray  # (C, K, 2) float32: its offset from that point, in the mean shape's frame
    splits: np.ndarray  # (C, 2, N * S) intp: the two feature pixels compared at each node, breadth first
    thresholds: np.ndarray  # (C, N * S) float32: a node goes left when first - second > threshold
    leaves: np.ndarray  # (C, N * (S + 1), 2P) float32: the shape correction at each leaf

    def __post_init__(self) -> None:
        arrays = (self.initial_shape, self.anchors, self.deltas, self.splits, self.thresholds, self.leaves)
        if tuple(array.ndim for array in arrays) != (2, 2, 3, 3, 2, 3):
            raise ValueError("the predictor's arrays do not have the dimensions of one")
        points = len(self.initial_shape)
        levels, features = self.anchors.shape
        nodes = self.thresholds.shape[1]
        leaves = self.leaves.shape[1]
        trees = leaves - nodes
        consistent = (
            trees > 0
            and nodes % trees == 0
            and _power_of_two(leaves // trees)
            and self.initial_shape.shape == (points, 2)
            and self.deltas.shape == (levels, features, 2)
            and self.splits.shape == (levels, 2, nodes)
            and self.thresholds.shape == (levels, nodes)
            and self.leaves.shape == (levels, leaves, 2 * points)
            and 0 <= self.anchors.min(initial=0) <= self.anchors.max(initial=0) < points
            and 0 <= self.splits.min(initial=0) <= self.splits.max(initial=0) < features
        )
        if not consistent:
            raise ValueError("the predictor's arrays do not fit together")
        if leaves // trees > CODE_BITS:
            raise ValueError(
                f"trees of {leaves // trees} leaves; at most {CODE_BITS} (depth 4) are supported"
            )

    @property
    def trees(self) -> int:
        return self.leaves.shape[1] - self.thresholds.shape[1]

    @property
    def depth(self) -> int:
        return (self.leaves.shape[1] // self.trees).bit_length() - 1

    @cached_property
    def _turning(self) -> np.ndarray:
        """(2P, 2) float64: a shape's (x0, y0, x1, ...) times this, divided by the mean shape's spread,
        is s cos(a) and s sin(a) of the similarity transform from the mean shape to it (its matrix is
        [[s cos(a), -s sin(a)], [s sin(a), s cos(a)]]). Umeyama's closed form in two dimensions, which
        dlib's SVD of the covariance equals up to the last bits: with the mean shape centred, the
        target's mean drops out of both sums."""
        shape = self.initial_shape.astype(np.float64)
        x, y = (shape - shape.mean(axis=0)).T
        spread = (x * x + y * y).sum()
        return np.stack([np.stack([x, y], 1).ravel(), np.stack([-y, x], 1).ravel()], 1) / spread

    @cached_property
    def _offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, K) and (C, 2, K) float32: the x of `deltas`, and their y as (-y, y), so that each runs
        along the feature pixels and the turned offset is turn * x + turn reversed * (-y, y)."""
        dy = self.deltas[..., 1]
        return np.ascontiguousarray(self.deltas[..., 0]), np.stack([-dy, dy], axis=1)

    @cached_property
    def _node_tests(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, 2, N * 16) intp and (C, N * 16) int16: the feature pixels each node compares and its
        threshold, every tree padded to 16 nodes by ones that never go left (0 - 0 > 32767 is false), so
        that a tree's tests pack into one 16-bit code (see `_leaf_of_code`).

        For an integer difference d of grey levels, d > t exactly when d > floor(t), so the tests run
        on small integers (thresholds clipped past the reach of differences, -255 to 255)."""
        levels, nodes = self.thresholds.shape
        pad = ((0, 0), (0, 0), (0, CODE_BITS - nodes // self.trees))
        splits = np.pad(self.splits.reshape(levels, 2, self.trees, -1), ((0, 0), *pad))
        whole = np.clip(np.floor(self.thresholds), -256, 256).astype(np.int16)
        whole = np.pad(whole.reshape(levels, self.trees, -1), pad, constant_values=np.iinfo(np.int16).max)
        return splits.reshape(levels, 2, -1), whole.reshape(levels, -1)

    @cached_property
    def _leaf_of_code(self) -> np.ndarray:
        """(2**16,) uint8: the leaf a tree's walk reaches, for each code whose bit i says whether node i
        goes left. Nodes are stored breadth first: from node i a walk goes to node 2i + 1 (left) or
        2i + 2, and past the S nodes it is at leaf i - S. One lookup replaces a gather per depth (and
        bytes keep the table in cache)."""
        codes = np.arange(1 << CODE_BITS)
        node = np.zeros_like(codes)
        for _ in range(self.depth):
            node = 2 * node + 2 - ((codes >> node) & 1)
        return (node - (self.leaves.shape[1] // self.trees - 1)).astype(np.uint8)

    @cached_property
    def _first_leaves(self) -> np.ndarray:
        """(N,) intp: each tree's first leaf among the level's leaves."""
        return np.arange(self.trees) * (self.leaves.shape[1] // self.trees)

    def predict_all(self, requests: Sequence[tuple[Picture, np.ndarray]]) -> list[np.ndarray]:
        """For each (picture, rects) request, the points (F, P, 2), integer pixels as dlib rounds them,
        of its F dlib rectangles (F, 4) of (left, top, right, bottom), inclusive, in its picture.

        Each level is a few dozen numpy operations on all faces at once, laid out so that every one
        runs along a long axis (feature pixels, trees) rather than a short one (x and y); a photo's
        one face costs as many operations as a batch's dozens, so faces of several photos go together.
        """
        if not requests:
            return []
        rects = [np.asarray(found, dtype=np.float64).reshape(-1, 4) for _, found in requests]
        counts = [len(found) for found in rects]
        every = np.concatenate(rects)
        corner, extent = every[:, :2, None], (every[:, 2:] - every[:, :2])[:, :, None]
        shapes = np.repeat(self.initial_shape[None], len(every), axis=0)
        image = _Images([(picture, found) for (picture, _), found in zip(requests, rects, strict=True)])
        for level in range(len(self.anchors) if len(every) else 0):
            intensities = image.grey(self._feature_pixels(corner, extent, shapes, level))
            shapes = self._corrected(shapes, intensities, level)
        points = np.floor(extent * shapes.transpose(0, 2, 1) + corner + 0.5)
        return np.split(points.transpose(0, 2, 1).astype(np.int64), np.cumsum(counts)[:-1])

    def _feature_pixels(
        self, corner: np.ndarray, extent: np.ndarray, shapes: np.ndarray, level: int
    ) -> np.ndarray:
        """(F, 2, K) the level's feature pixels (x, then y) placed on the current shapes, in the image."""
        turn = (shapes.reshape(len(shapes), -1).astype(np.float64) @ self._turning).astype(np.float32)
        dx, dy = (offsets[level] for offsets in self._offsets)
        # dlib's float arithmetic: each coordinate m0 * dx + m1 * dy, plus the anchor point
        placed = turn[:, :, None] * dx
        placed += turn[:, ::-1, None] * dy
        placed += np.take(shapes.transpose(0, 2, 1), self.anchors[level], axis=2)
        pixels = extent * placed
        pixels += corner
        pixels += 0.5
        return np.floor(pixels, out=pixels).astype(np.intp)

    def _corrected(self, shapes: np.ndarray, intensities: np.ndarray, level: int) -> np.ndarray:
        """The shapes after every tree of the level has added the correction at the leaf it reaches."""
        splits, thresholds = self._node_tests
        pairs = np.take(intensities, splits[level], axis=1)
        goes_left = pairs[:, 0] - pairs[:, 1] > thresholds[level]
        codes = np.packbits(goes_left, axis=None, bitorder="little").view(np.uint16)
        leaves = np.take(self._leaf_of_code, codes).reshape(len(shapes), -1) + self._first_leaves
        # dlib adds the trees' corrections one after the other in single precision. numpy's sum along
        # an axis that is not the fastest in memory adds the rows in order, as dlib does (along the
        # fastest it would sum pairwise): the trees go along the first axis.
        terms = np.empty((1 + self.trees, len(shapes), shapes[0].size), dtype=np.float32)
        terms[0] = shapes.reshape(len(shapes), -1)
        np.take(self.leaves[level], leaves.T, axis=0, out=terms[1:], mode="clip")  # all in range
        return np.add.reduce(terms, axis=0).reshape(shapes.shape)


def _surroundings(rects: np.ndarray) -> Box:
    """The box around all `rects` (F, 4) that their feature pixels reach in practice (a third of the
    rectangle's size outside it holds those of every face in the benchmark's photos, and the chips cut
    from them); the predictor reads more only when a level needs it."""
    margin = REACH * (rects[:, 2:] - rects[:, :2])
    low = np.floor(rects[:, :2] - margin).min(axis=0)
    high = np.ceil(rects[:, 2:] + margin).max(axis=0)
    return int(low[0]), int(low[1]), int(high[0]), int(high[1])


class _Images:
    """Pictures' grey levels at feature pixels, each read from a region of it converted once: its faces'
    surroundings, grown when a feature pixel inside the picture falls outside them. Faces go in the
    order of the pictures, so each picture's faces are one slice of every array."""

    def __init__(self, requests: Sequence[tuple[Picture, np.ndarray]]) -> None:
        self.pictures = [picture for picture, found in requests]
        ends = np.cumsum([len(found) for _, found in requests])
        self.slices = [slice(end - len(found), end) for (_, found), end in zip(requests, ends, strict=True)]
        faces = int(ends[-1]) if len(ends) else 0
        self.size = np.empty((faces, 2, 1), dtype=np.uintp)  # each face's picture: width, height
        self.origin = np.empty((faces, 2, 1), dtype=np.intp)  # its region: left, top
        self.bounds = np.empty((faces, 2, 1), dtype=np.uintp)  # width, height
        self.width = np.empty((faces, 1), dtype=np.intp)
        self.boxes: list[Box | None] = []
        self.pixels: list[np.ndarray] = []
        for number, (picture, found) in enumerate(requests):
            self.size[self.slices[number]] = [[picture.width], [picture.height]]
            self.boxes.append(None)
            self.pixels.append(np.zeros(1, dtype=np.uint32))
            if len(found):
                self._read(number, _surroundings(found))

    def _read(self, number: int, box: Box) -> None:
        picture, faces = self.pictures[number], self.slices[number]
        self.boxes[number] = clipped = picture.clip(box)
        left, top, right, bottom = clipped or (0, 0, -1, -1)
        pixels = picture.region(clipped) if clipped else np.zeros((1, 1, 4), dtype=np.uint8)
        self.pixels[number] = np.ascontiguousarray(pixels).view(np.uint32).reshape(-1)
        self.width[faces] = right - left + 1
        self.origin[faces] = [[left], [top]]
        self.bounds[faces] = [[right - left + 1], [bottom - top + 1]]

    def grey(self, points: np.ndarray) -> np.ndarray:
        """(F, K) int16: dlib's grey level (r + g + b) // 3 at integer points (F, 2: x and y, K); 0 at
        points outside their picture, as dlib reads them."""
        local = points - self.origin
        inside = local.view(np.uintp) < self.bounds  # a negative coordinate wraps past any bound
        inside = inside[:, 0] & inside[:, 1]
        if not inside.all() and self._grown(points, inside):
            return self.grey(points)
        index = local[:, 1] * self.width
        index += local[:, 0]
        # a point outside the region reads some pixel of it ("clip"), and 0 in the end
        rgbx = np.empty(index.shape, dtype=np.uint32)
        for pixels, faces in zip(self.pixels, self.slices, strict=True):
            np.take(pixels, index[faces], out=rgbx[faces], mode="clip")
        rgbx = rgbx.view(np.uint8).reshape(*index.shape, 4)
        grey = (rgbx[..., 0].astype(np.int16) + rgbx[..., 1] + rgbx[..., 2]) // 3
        return np.where(inside, grey, np.int16(0))

    def _grown(self, points: np.ndarray, read: np.ndarray) -> bool:
        """Whether some of `points` lie in their picture but not in the region `read` covers; if so,
        those regions grow to cover them."""
        in_image = points.view(np.uintp) < self.size
        missing = in_image[:, 0] & in_image[:, 1] & ~read
        if not missing.any():
            return False
        for number, faces in enumerate(self.slices):
            here = missing[faces]
            if not here.any():
                continue
            xs, ys = points[faces, 0][here], points[faces, 1][here]
            left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
            if (box := self.boxes[number]) is not None:
                left, top = min(left, box[0]), min(top, box[1])
                right, bottom = max(right, box[2]), max(bottom, box[3])
            self._read(number, (left, top, right, bottom))
        return True


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def dlib_rectangle(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The dlib rectangle (left, top, right, bottom; inclusive) for a facerec box (x1, y1, x2, y2).

    A facerec box ends where the face's pixels end, a dlib rectangle at its last pixel: the box of dlib's
    rectangle (l, t, r, b) is (l, t, r + 1, b + 1), and this maps it back exactly. Any other box is
    rounded as dlib rounds a drectangle, so the predictor runs from any detector's box.
    """
    x1, y1, x2, y2 = (math.floor(v + 0.5) for v in box)
    return x1, y1, x2 - 1, y2 - 1


def read_shape_predictor(path: Path) -> ShapePredictor:
    """Parse a shape predictor file written by dlib; FacerecError naming the file when it is not one."""
    try:
        reader = DlibReader.open(path)
    except OSError as error:
        raise FacerecError(f"{path}: cannot read the shape predictor ({error.strerror or error})") from None
    numbers = _Integers(reader)
    version = numbers.one()
    if version != VERSION:
        raise numbers.error(0, f"shape predictor version {version}, expected {VERSION}")
    initial_shape = _initial_shape(numbers)
    levels = numbers.peek(0)
    splits, thresholds, leaves = _forests(numbers)
    anchors = _nested(numbers, levels, 1)[..., 0]
    deltas = _floats(numbers, _nested(numbers, levels, 4), "a feature offset")
    if not numbers.at_end():
        raise numbers.error(numbers.next, "data after the shape predictor")
    try:
        return ShapePredictor(
            initial_shape=initial_shape,
            anchors=anchors.astype(np.intp),
            deltas=deltas,
            splits=splits,
            thresholds=thresholds,
            leaves=leaves,
        )
    except ValueError as error:
        raise numbers.error(0, str(error)) from None


def load_shape_predictor(path: Path, sha256: str | None = None) -> ShapePredictor:
    """The predictor in `path`, from the cache folder's copy of its arrays when `sha256` is given and one
    was kept before (else parsed, then kept there; a damaged or unwritable copy only costs the parse)."""
    cached = cache_dir() / f"dlib-shape-predictor-{sha256}.v{CACHE_FORMAT}.npz" if sha256 else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as arrays:
                return ShapePredictor(**{f.name: arrays[f.name] for f in fields(ShapePredictor)})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
    predictor = read_shape_predictor(path)
    if cached is not None:
        arrays = {f.name: getattr(predictor, f.name) for f in fields(ShapePredictor)}
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cached, lambda out: np.savez(out, **arrays))
        except OSError:
            pass
    return predictor


class _Integers:
    """All the dlib integers a file is made of, decoded at once, then read in order.

    A shape predictor file holds nothing else (floats are a mantissa and an exponent, vector and matrix
    sizes are integers), so it is split into integers in one Python pass over the control bytes and the
    values are assembled with numpy: far faster than DlibReader.int() for each of ~3 million numbers.
    """

    def __init__(self, reader: DlibReader) -> None:
        self.reader = reader
        data = bytes(reader.data)
        steps = data.translate(INTEGER_STEPS)
        starts, offset, end = array("q"), 0, len(data)
        append = starts.append  # bound once: this loop runs once per number
        while offset < end:
            append(offset)
            offset += steps[offset]
        self.starts = np.frombuffer(starts, dtype=np.int64)
        if offset != end:
            raise self.error(len(self.starts) - 1, "the file ends inside a number")
        raw = np.frombuffer(data, dtype=np.uint8)
        control = raw[self.starts]
        bad = ((control & 0x70) != 0) | ((control & 0x0F) > 8)
        if bad.any():
            first = int(np.argmax(bad))
            raise self.error(first, f"bad integer control byte {control[first]:#04x}")
        self.values = _magnitudes(raw, self.starts, control & 0x0F)
        self.values[(control & 0x80) != 0] *= -1
        self.next = 0

    def error(self, index: int, what: str) -> DlibFormatError:
        self.reader.offset = int(self.starts[min(index, len(self.starts) - 1)]) if len(self.starts) else 0
        return self.reader.error(what)

    def take(self, count: int) -> np.ndarray:
        if count < 0 or self.next + count > len(self.values):
            raise self.error(len(self.values), "the file ends early")
        taken = self.values[self.next : self.next + count]
        self.next += count
        return taken

    def one(self) -> int:
        return int(self.take(1)[0])

    def peek(self, ahead: int) -> int:
        if self.next + ahead >= len(self.values):
            raise self.error(len(self.values), "the file ends early")
        return int(self.values[self.next + ahead])

    def at_end(self) -> bool:
        return self.next == len(self.values)


def _magnitudes(raw: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The little-endian magnitudes following each control byte, as int64."""
    values = np.zeros(len(starts), dtype=np.uint64)
    for byte in range(int(sizes.max(initial=0))):
        longer = np.flatnonzero(sizes > byte)
        values[longer] |= raw[starts[longer] + 1 + byte].astype(np.uint64) << np.uint64(8 * byte)
    return values.astype(np.int64)


def _floats(numbers: _Integers, pairs: np.ndarray, what: str) -> np.ndarray:
    """float32 values of dlib floats given as (..., 2k) integers: mantissa, exponent, mantissa, ..."""
    mantissas, exponents = pairs[..., 0::2], pairs[..., 1::2]
    if (exponents >= EXPONENT_INF).any():
        raise numbers.error(numbers.next, f"{what} that is infinite or not a number")
    return np.ldexp(mantissas.astype(np.float64), exponents.astype(np.int32)).astype(np.float32)


def _initial_shape(numbers: _Integers) -> np.ndarray:
    """The mean shape: a float column matrix of x, y pairs, as (P, 2)."""
    rows, columns = abs(numbers.one()), abs(numbers.one())
    if columns != 1 or rows == 0 or rows % 2:
        raise numbers.error(numbers.next, f"an initial shape of {rows} x {columns}")
    return _floats(numbers, numbers.take(2 * rows), "an initial shape").reshape(-1, 2)


def _nested(numbers: _Integers, outer: int, width: int) -> np.ndarray:
    """A vector of `outer` vectors of one length n, each item `width` integers, as (outer, n, width)."""
    if numbers.one() != outer:
        raise numbers.error(numbers.next - 1, f"not one entry per cascade level ({outer})")
    inner = numbers.peek(0)
    if inner < 0:
        raise numbers.error(numbers.next, f"a vector of {inner} items")
    table = numbers.take(outer * (1 + inner * width)).reshape(outer, 1 + inner * width)
    if (table[:, 0] != inner).any():
        raise numbers.error(numbers.next, "cascade levels of different sizes")
    return table[:, 1:].reshape(outer, inner, width)


def _forests(numbers: _Integers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trees of every cascade level, which dlib trains all alike: node pairs, thresholds, leaves.

    A tree is its splits (a count, then idx1, idx2, threshold each) and its leaves (a count, then a
    float column matrix each), with the nodes stored breadth first.
    """
    start = numbers.next
    levels, splits = numbers.peek(0), numbers.peek(2)
    leaves = numbers.peek(3 + 4 * splits) if splits > 0 else 0
    values = abs(numbers.peek(4 + 4 * splits)) * abs(numbers.peek(5 + 4 * splits)) if leaves > 0 else 0
    if min(levels, numbers.peek(1), splits, values) < 1 or leaves != splits + 1:
        raise numbers.error(start, "no regression trees, or trees that are not full binary trees")
    trees = _nested(numbers, levels, 2 + 4 * splits + leaves * (2 + 2 * values))
    split_block = trees[..., 1 : 1 + 4 * splits].reshape(levels, -1, splits, 4)
    leaf_block = trees[..., 2 + 4 * splits :].reshape(levels, -1, leaves, 2 + 2 * values)
    alike = (
        (trees[..., 0] == splits).all()
        and (trees[..., 1 + 4 * splits] == leaves).all()
        and (np.abs(leaf_block[..., 0]) * np.abs(leaf_block[..., 1]) == values).all()
    )
    if not alike:
        raise numbers.error(start, "regression trees of different shapes")
    return (
        np.moveaxis(split_block[..., :2].reshape(levels, -1, 2), -1, 1).astype(np.intp),
        _floats(numbers, split_block[..., 2:], "a split threshold").reshape(levels, -1),
        _floats(numbers, leaf_block[..., 2:], "a leaf value").reshape(levels, -1, values),
    )
