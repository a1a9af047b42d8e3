"""The `mtcnn` detector: MTCNN (Zhang et al. 2016) with facenet-pytorch's weights, defaults and results.

Three cascaded networks: P-Net slides over an image pyramid and proposes boxes, R-Net refines them on
24x24 crops, O-Net scores them on 48x48 crops and places five landmarks; each stage regresses its boxes
and drops overlaps with non-maximum suppression. Every step follows facenet-pytorch's `detect_face` in
its arithmetic (area resampling, the `+1` box conventions, crops clipped to the image without padding,
"Min" overlap in the last suppression), which is what keeps boxes, scores and landmarks equal to its own.

What differs is how the work is done. Area resampling, for the pyramid levels as for the candidate
crops, is read from one summed-area table of the image: each output pixel is the exact integer sum of
its window divided by the window's size, which is what `interpolate(mode="area")` computes, but a
thousand crops cost a few gathers instead of a thousand resize calls. The networks run channels-last,
R-Net and O-Net on the candidates of all the images detected together (a group of images within the
detector's working size), in calls of a fixed number of crops. Non-maximum suppression is plain torch,
so that a detection does not pay for importing torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facerec.plugin import (
    Face,
    Register,
    UsageError,
    WeightFile,
    fetch,
    hookimpl,
    largest_first,
    load_state_dict,
)

WEIGHTS_URL = "https://github.com/timesler/facenet-pytorch/raw/master/data/{}.pt"
WEIGHTS = {
    "pnet": WeightFile(
        WEIGHTS_URL.format("pnet"),
        "pnet.pt",
        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    ),
    "rnet": WeightFile(
        WEIGHTS_URL.format("rnet"),
        "rnet.pt",
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    ),
    "onet": WeightFile(
        WEIGHTS_URL.format("onet"),
        "onet.pt",
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    ),
}
PNET_STRIDE = 2  # P-Net's output grid step in pixels of its input
PNET_CELL = 12  # the window each P-Net output sees
CUMSUM_ROWS = 64  # rows cumulated at a time: one cumsum down a whole image thrashes the TLB, 2x slower
PNET_BAND_ROWS = 128  # P-Net output rows computed at a time (see _in_bands)
RNET_SIZE = 24
ONET_SIZE = 48
RNET_CHUNK = 64  # R-Net crops per call (see _outputs); a small crop, a call of overhead
ONET_CHUNK = 16  # O-Net crops per call: fewer candidates reach it, each eight times R-Net's work
PYRAMID_NMS = 0.5  # within one pyramid level
CASCADE_NMS = 0.7  # across levels, after R-Net, and ("Min" overlap) after O-Net
NMS_BLOCK = 512  # boxes compared at a time; bounds the overlap matrices at BLOCK x (kept + BLOCK)
# The pyramid's first level is the image scaled by 12 / min_face_size and each next one by `factor`.
# Below this floor the first level outgrows the image (1.5x its sides at 8 px: 2.25x its memory); toward a
# factor of 1 the levels run into the hundreds (a 600 px side: 66 levels at 0.95, 338 at 0.99). Past
# either bound a detection runs out of memory or time.
MIN_FACE_SIZE_FLOOR = 8
MAX_FACTOR = 0.95


class PNet(nn.Module):
    """The proposal network: fully convolutional, a face probability and box offsets every 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        self._fold()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._fold())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box offsets (N, 4, h, w) and face probabilities (N, h, w)."""
        x = self.prelu2(self.conv2(self.first_layer(x)))
        x = self.prelu3(self.conv3(x))
        heads = F.conv2d(x, self.heads_weight, self.heads_bias)
        return heads[:, :4], F.softmax(heads[:, 4:], dim=1)[:, 1]

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """2x2 max-pooling (ceil mode) of prelu1(conv1(x)), computed as one stride-2 convolution.

        A pooling window takes conv1 at four offsets. A 4x4 stride-2 convolution whose 40 output channels
        are conv1's kernel placed at those four offsets computes them all at once; PReLU then runs on 40
        channels, where its vectorized path applies (on 10 it is several times slower), and the pooling
        is a maximum over the four groups. The values are the same. Where conv1's output has an odd
        side, ceil mode makes the last windows one row (or column) deep: the input is padded to even
        sides and, in those windows, the phases that fall outside are replaced by ones inside.
        """
        height, width = x.shape[2:]
        x = F.pad(x, (0, width % 2, 0, height % 2))
        phases = F.conv2d(x, self.phase_weight, self.phase_bias, stride=2)
        top_left, top_right, bottom_left, bottom_right = F.prelu(phases, self.phase_slope).chunk(4, 1)
        if height % 2:
            bottom_left[:, :, -1] = top_left[:, :, -1]
            bottom_right[:, :, -1] = top_right[:, :, -1]
        if width % 2:
            top_right[..., -1] = top_left[..., -1]
            bottom_right[..., -1] = bottom_left[..., -1]
        return torch.maximum(torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right))

    def _fold(self) -> None:
        """The first layer's stride-2 kernel (see first_layer) and the two heads as one convolution,
        built from the weights once, at construction and after each load, instead of at every call."""
        with torch.no_grad():
            weight = self.conv1.weight
            kernel = weight.new_zeros(2, 2, *weight.shape[:2], 4, 4)
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                kernel[dy, dx, :, :, dy : dy + 3, dx : dx + 3] = weight
            folded = {
                "phase_weight": kernel.flatten(0, 2),
                "phase_bias": self.conv1.bias.repeat(4),
                "phase_slope": self.prelu1.weight.repeat(4),
                "heads_weight": torch.cat([self.conv4_2.weight, self.conv4_1.weight]),
                "heads_bias": torch.cat([self.conv4_2.bias, self.conv4_1.bias]),
            }
        for name, tensor in folded.items():
            self.register_buffer(name, tensor, persistent=False)


class RNet(nn.Module):
    """The refinement network on 24x24 crops: a face probability and box offsets per crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box offsets (N, 4) and face probabilities (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """The output network on 48x48 crops: probability, box offsets and five landmarks per crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box offsets (N, 4), landmarks (N, 10: five x then five y, relative) and probabilities (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) flattened in (W, H, C) order: the layout the published dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)


class SummedAreaTable:
    """Exact window sums of an RGB image, so area resampling of the whole image or of any rectangle is cheap.

    `interpolate(mode="area")` averages, for each output pixel, the input window
    [floor(i * n / m), ceil((i + 1) * n / m)) along each axis. Here the same averages come from integer
    sums, which are exact: pyramid levels by two separable differences, many crops at once by gathers.
    Results are standardized as MTCNN takes them, `(mean - 127.5) / 128`, channels-last (N, 3, H, W)
    float32: the layout the convolutions run fastest on.
    """

    def __init__(self, image: Image.Image, device: torch.device) -> None:
        pixels = np.array(image if image.mode == "RGB" else image.convert("RGB"))
        height, width, _ = pixels.shape
        dtype = torch.int32 if 255 * height * width < 2**31 else torch.int64
        table = torch.zeros((height + 1, width + 1, 3), dtype=dtype, device=device)
        table[1:, 1:] = torch.from_numpy(pixels)
        for top in range(1, height + 1, CUMSUM_ROWS):  # down the rows a block at a time: cache-friendly
            block = table[top : top + CUMSUM_ROWS]
            block.cumsum_(0).add_(table[top - 1])
        self.table = table.cumsum_(1)
        self.height, self.width = height, width

    def level(self, height: int, width: int) -> torch.Tensor:
        """(1, 3, height, width): the whole image area-resampled."""
        whole = torch.zeros(1, dtype=torch.long, device=self.table.device)
        row_start, row_stop = _window_bounds(whole, self.height, height)
        col_start, col_stop = _window_bounds(whole, self.width, width)
        rows = _differences(self.table, 0, row_start[0], row_stop[0])
        sums = _differences(rows, 1, col_start[0], col_stop[0])
        return _means(sums[None], row_stop - row_start, col_stop - col_start)

    def crops(self, rects: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 3, size, size): rectangles (N, 4: top, bottom, left, right) each area-resampled."""
        top, bottom, left, right = rects.unbind(1)
        row_start, row_stop = _window_bounds(top, bottom, size)
        col_start, col_stop = _window_bounds(left, right, size)
        flat = self.table.view(-1, 3)

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            index = rows[:, :, None] * (self.width + 1) + cols[:, None, :]
            return flat.index_select(0, index.flatten()).view(*index.shape, 3)

        sums = corner(row_stop, col_stop).sub_(corner(row_start, col_stop))
        sums.sub_(corner(row_stop, col_start)).add_(corner(row_start, col_start))
        return _means(sums, row_stop - row_start, col_stop - col_start)


def _differences(table: torch.Tensor, dim: int, start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Sums over windows [start, stop) along `dim` of a table cumulated along `dim`."""
    return table.index_select(dim, stop).sub_(table.index_select(dim, start))


def _window_bounds(start: torch.Tensor, stop, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` area-resampling windows of each [start, stop): (N, count) first and past-last index."""
    length = (stop - start)[:, None]
    steps = torch.arange(count, device=start.device)[None, :]
    first = start[:, None] + (steps * length) // count
    past_last = start[:, None] + ((steps + 1) * length + count - 1) // count
    return first, past_last


def _means(sums: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Window sums (N, H, W, 3) over window sizes (N, H) x (N, W), standardized, channels-last (N, 3, H, W)."""
    sizes = (heights[:, :, None] * widths[:, None, :]).float()
    return torch.div(sums, sizes[..., None]).sub_(127.5).mul_(0.0078125).permute(0, 3, 1, 2)


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """facenet-pytorch's scales: the smallest face maps to P-Net's 12-pixel cell, down to 12 pixels."""
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 5+) squared around their centres to their longer side, in place."""
    height = boxes[:, 3] - boxes[:, 1]
    width = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(width, height)
    boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def bbreg(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 5+) moved by regressed offsets (N, 4) in units of their `+1` width and height, in place."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = boxes[:, :4] + offsets * torch.stack([width, height, width, height], 1)
    return boxes


def crop_rects(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel rectangles (top, bottom, left, right) R-Net and O-Net see for boxes, and which are usable.

    As facenet-pytorch's `pad`: coordinates truncated, clipped to the image, no padding outside it.
    A box wholly outside the image has no pixels and is dropped.
    """
    corners = boxes[:, :4].trunc().int()
    left = corners[:, 0].clamp(min=1) - 1
    top = corners[:, 1].clamp(min=1) - 1
    right = corners[:, 2].clamp(max=width)
    bottom = corners[:, 3].clamp(max=height)
    rects = torch.stack([top, bottom, left, right], 1).long()
    return rects, (bottom > top) & (right > left)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, N) intersection over union of boxes a (M, 4+) and b (N, 4+), as torchvision's nms computes it."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = _intersection(a, b, 0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def min_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, N) intersection over the smaller box, pixel-inclusive (`+1`): O-Net's last suppression."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return _intersection(a, b, 1) / torch.minimum(area_a[:, None], area_b[None, :])


def _intersection(a: torch.Tensor, b: torch.Tensor, inclusive: int) -> torch.Tensor:
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:4], b[None, :, 2:4])
    sides = (high - low + inclusive).clamp_(min=0)
    return sides[..., 0] * sides[..., 1]


def stable_ranking(scores: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing score, equal scores in index order: torchvision's nms order."""
    return torch.argsort(scores, descending=True, stable=True)


def numpy_ranking(scores: torch.Tensor) -> torch.Tensor:
    """Indices by decreasing score, ties as numpy's argsort leaves them, taken from the end: the order of
    the numpy suppression facenet-pytorch runs after O-Net."""
    ascending = np.argsort(scores.cpu().numpy())
    return torch.from_numpy(ascending[::-1].copy()).to(scores.device)


def nms(
    boxes: torch.Tensor, threshold: float, overlap: Callable = iou, ranking: Callable = stable_ranking
) -> torch.Tensor:
    """Greedy non-maximum suppression of boxes (N, 5+: corners, score): kept indices, best first.

    A box is dropped when its `overlap` with a kept box ranked before it exceeds `threshold`. Boxes are
    ranked by score; equal scores are common (boxes whose crops truncate to the same pixels get the
    same score) and which of them wins moves the face, so `ranking` orders ties as the suppression
    being matched does. Overlaps are computed a block of boxes at a time, against the boxes kept so
    far and within the block, which bounds memory; only the walk down a block is a loop.
    """
    order = ranking(boxes[:, 4])
    ranked = boxes[order]
    kept = torch.zeros(0, dtype=torch.long, device=boxes.device)
    for start in range(0, len(ranked), NMS_BLOCK):
        block = ranked[start : start + NMS_BLOCK]
        alive = ~(overlap(ranked[kept], block) > threshold).any(0)
        conflicts = overlap(block, block) > threshold
        survivors = _greedy_walk(alive.cpu().numpy(), conflicts.cpu().numpy())
        kept = torch.cat([kept, torch.from_numpy(survivors).to(boxes.device) + start])
    return order[kept]


def _greedy_walk(alive: np.ndarray, conflicts: np.ndarray) -> np.ndarray:
    """Down the ranked block: each box still alive is kept and drops the later boxes it conflicts with."""
    alive = alive.copy()
    for index in range(len(alive)):
        if alive[index]:
            alive[index + 1 :] &= ~conflicts[index, index + 1 :]
    return np.flatnonzero(alive)


def batched_nms(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """What facenet-pytorch's calls to torchvision's `batched_nms` keep for one image, in the same order.

    That is `nms`, except that past 4000 coordinates (1000 boxes; 100000 on a GPU) torchvision takes
    the kept indices in index order and sorts them by score with torch's unstable sort, which orders
    equal scores differently; the next suppression breaks ties by that order, so it is kept here too.
    """
    keep = nms(boxes, threshold)
    if 4 * len(boxes) > (4000 if boxes.device.type == "cpu" else 100_000):
        keep = keep.sort().values
        keep = keep[torch.argsort(boxes[keep, 4], descending=True)]
    return keep


class MTCNN:
    """The `mtcnn` detector with facenet-pytorch's defaults; weights are fetched on first use."""

    # About 55 bytes a pixel at the default min_face_size (the summed-area table and the pyramid): 4 MP
    # keeps a detection near 250 MB; larger photos are scaled down to it by the pipeline.
    max_pixels = 4_000_000

    def __init__(
        self,
        min_face_size: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str = "cpu",
    ) -> None:
        self.min_face_size, self.thresholds, self.factor = _checked(min_face_size, thresholds, factor)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise UsageError(f"mtcnn: unknown device '{device}'") from None
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"mtcnn: device '{device}' is not available here")
        self.settings: dict[str, Any] = {
            "name": "mtcnn",
            "min_face_size": self.min_face_size,
            "thresholds": list(self.thresholds),
            "factor": self.factor,
        }
        self._nets: tuple[PNet, RNet, ONet] | None = None

    @property
    def nets(self) -> tuple[PNet, RNet, ONet]:
        """P-, R- and O-Net with the published weights, downloaded (and verified) when first needed."""
        if self._nets is None:
            nets = (PNet(), RNet(), ONet())
            for net, weight in zip(nets, WEIGHTS.values(), strict=True):
                path, _ = fetch(weight)
                net.load_state_dict(load_state_dict(path))
                net.to(self.device).eval()
            self._nets = nets
        return self._nets

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each RGB image, largest first. Boxes may reach past the image's edges.

        Images go through the cascade a group at a time, groups of at most `max_pixels` pixels (one
        image at least): P-Net runs on each image's pyramid in turn, then R-Net on the candidates of
        every image of the group at once, and O-Net likewise. Memory stays near one large image's (the
        group's summed-area tables, one pyramid level), and an image's faces are the same whether it
        is detected alone or with others (see _outputs).
        """
        if not images:
            return []
        nets = self.nets
        found: list[list[Face]] = []
        with torch.inference_mode():
            for group in _groups(images, self.max_pixels):
                found += self._detect_group(nets, group)
        return found

    def _detect_group(self, nets: tuple[PNet, RNet, ONet], images: Sequence[Image.Image]) -> list[list[Face]]:
        pnet, rnet, onet = nets
        tables = [SummedAreaTable(image, self.device) for image in images]
        boxes = [self._propose(pnet, table) for table in tables]
        boxes = self._refine(rnet, tables, boxes)
        return [
            largest_first(
                [
                    Face(box=tuple(box[:4]), score=box[4], landmarks=tuple(map(tuple, points)))
                    for box, points in zip(found.cpu().tolist(), landmarks.cpu().tolist(), strict=True)
                ]
            )
            for found, landmarks in self._finish(onet, tables, boxes)
        ]

    def _propose(self, pnet: PNet, table: SummedAreaTable) -> torch.Tensor:
        """Stage one: P-Net over the pyramid, suppression per level then across levels, regression."""
        found = [torch.zeros((0, 9), device=self.device)]
        for scale in pyramid_scales(table.height, table.width, self.min_face_size, self.factor):
            level = table.level(int(table.height * scale + 1), int(table.width * scale + 1))
            offsets, probs = _in_bands(pnet, level)
            boxes = _proposals(offsets[0], probs[0], scale, self.thresholds[0])
            found.append(boxes[batched_nms(boxes, PYRAMID_NMS)])
        boxes = torch.cat(found)
        boxes = boxes[batched_nms(boxes, CASCADE_NMS)]
        width = boxes[:, 2] - boxes[:, 0]
        height = boxes[:, 3] - boxes[:, 1]
        corners = boxes[:, :4] + boxes[:, 5:9] * torch.stack([width, height, width, height], 1)
        return rerec(torch.cat([corners, boxes[:, 4:5]], 1))

    def _refine(
        self, rnet: RNet, tables: Sequence[SummedAreaTable], candidates: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Stage two: R-Net on the candidates of every image at once; then, image by image, threshold,
        suppression, regression."""
        usable, crops = zip(*map(_crops, tables, candidates, [RNET_SIZE] * len(tables)), strict=True)
        refined = []
        for boxes, (offsets, probs) in zip(usable, _outputs(rnet, crops, RNET_CHUNK), strict=True):
            passed = probs > self.thresholds[1]
            boxes = torch.cat([boxes[passed, :4], probs[passed, None]], 1)
            keep = batched_nms(boxes, CASCADE_NMS)
            refined.append(rerec(bbreg(boxes[keep], offsets[passed][keep])))
        return refined

    def _finish(
        self, onet: ONet, tables: Sequence[SummedAreaTable], candidates: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Stage three: O-Net scores and landmarks for the candidates of every image at once; then,
        image by image, regression and "Min" suppression: each image's boxes and landmarks."""
        usable, crops = zip(*map(_crops, tables, candidates, [ONET_SIZE] * len(tables)), strict=True)
        finished = []
        for boxes, (offsets, points, probs) in zip(usable, _outputs(onet, crops, ONET_CHUNK), strict=True):
            passed = probs > self.thresholds[2]
            boxes = torch.cat([boxes[passed, :4], probs[passed, None]], 1)
            width = boxes[:, 2] - boxes[:, 0] + 1
            height = boxes[:, 3] - boxes[:, 1] + 1
            points = points[passed]
            xs = width[:, None] * points[:, :5] + boxes[:, 0:1] - 1
            ys = height[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
            boxes = bbreg(boxes, offsets[passed])
            keep = nms(boxes, CASCADE_NMS, min_overlap, numpy_ranking)
            finished.append((boxes[keep], torch.stack([xs, ys], 2)[keep]))
        return finished


def _groups(images: Sequence[Image.Image], max_pixels: int) -> list[Sequence[Image.Image]]:
    """Consecutive runs of `images` of at most `max_pixels` pixels in all (one image at least)."""
    groups: list[Sequence[Image.Image]] = []
    start, pixels = 0, 0
    for index, image in enumerate(images):
        size = image.width * image.height
        if index > start and pixels + size > max_pixels:
            groups.append(images[start:index])
            start, pixels = index, 0
        pixels += size
    groups.append(images[start:])
    return groups


def _outputs(net: nn.Module, crops: Sequence[torch.Tensor], chunk: int) -> list[tuple[torch.Tensor, ...]]:
    """`net`'s outputs for each image's crops (N_i, 3, S, S), all images' crops run together.

    They run in calls of exactly `chunk` crops, the last one padded with zeros: torch's CPU kernels
    split a batch among threads, and pick their inner loops, by its size, which moves the last bits
    of a crop's results from one batch size to another; at one size, a crop's results are the same
    wherever it sits in the batch, so an image's faces do not depend on the images detected with it.
    """
    counts = [len(part) for part in crops]
    together = torch.cat(crops)
    padding = together.new_zeros(-len(together) % chunk, *together.shape[1:])
    together = torch.cat([together, padding]).contiguous(memory_format=torch.channels_last)
    calls = [net(part) for part in together.split(chunk)]  # one empty part when there are no crops
    outputs = [torch.cat(parts)[: sum(counts)] for parts in zip(*calls, strict=True)]
    return list(zip(*(output.split(counts) for output in outputs), strict=True))


def _in_bands(
    pnet: PNet, level: torch.Tensor, rows: int = PNET_BAND_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over a pyramid level in horizontal bands of `rows` output rows: the same outputs, faster.

    Each output row sees 12 input rows from row 2i, so a band of outputs [i, i + rows) needs input rows
    [2i, 2i + 2 rows + 10): an even count, so no pooling window is cut. The last band runs to the level's
    bottom edge, where P-Net's ceil-mode pooling treats the edge as on the whole level. Small bands keep
    the wide intermediate maps (10 to 32 channels per pixel) in cache and out of peak memory.
    """
    height = level.shape[2]
    bands = []
    for top in range(0, height, 2 * rows):
        bottom = top + 2 * rows + PNET_CELL - PNET_STRIDE
        bands.append(pnet(level[:, :, top : min(bottom, height)]))
        if bottom >= height:
            break
    offsets, probs = zip(*bands, strict=True)
    return torch.cat(offsets, 2), torch.cat(probs, 1)


def _proposals(offsets: torch.Tensor, probs: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
    """P-Net cells at or above threshold as boxes (N, 9: corners, score, four offsets) in image pixels."""
    mask = probs >= threshold
    cells = mask.nonzero().to(offsets.dtype).flip(1)
    start = ((PNET_STRIDE * cells + 1) / scale).floor()
    stop = ((PNET_STRIDE * cells + PNET_CELL) / scale).floor()
    return torch.cat([start, stop, probs[mask][:, None], offsets[:, mask].T], 1)


def _crops(table: SummedAreaTable, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes that have pixels in the image, and those pixels as the next network's size x size input."""
    rects, usable = crop_rects(boxes, table.width, table.height)
    if not bool(usable.all()):
        boxes, rects = boxes[usable], rects[usable]
    return boxes, table.crops(rects, size)


def _checked(min_face_size: Any, thresholds: Any, factor: Any) -> tuple[float, tuple[float, ...], float]:
    """Options validated with one clear message each (they come from the command line as JSON)."""
    if (
        isinstance(min_face_size, bool)
        or not isinstance(min_face_size, int | float)
        or not MIN_FACE_SIZE_FLOOR <= min_face_size < math.inf
    ):
        raise UsageError(
            f"mtcnn: min_face_size must be a positive number of pixels, at least {MIN_FACE_SIZE_FLOOR}, "
            f"got {min_face_size!r}"
        )
    if (
        isinstance(thresholds, str)
        or not isinstance(thresholds, Sequence)
        or len(thresholds) != 3
        or not all(isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)
    ):
        raise UsageError(f"mtcnn: thresholds must be three numbers between 0 and 1, got {thresholds!r}")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= MAX_FACTOR:
        raise UsageError(
            f"mtcnn: factor must be a number between 0 and 1, at most {MAX_FACTOR}, got {factor!r}"
        )
    return min_face_size, tuple(thresholds), factor


@hookimpl
def register_detectors(register: Register) -> None:
    register("mtcnn", MTCNN)
