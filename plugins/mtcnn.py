"""The `mtcnn` detector: MTCNN (Zhang et al. 2016) with facenet-pytorch's weights, defaults and results.

Three cascaded networks: P-Net slides over an image pyramid and proposes boxes, R-Net refines them on
24x24 crops, O-Net scores them on 48x48 crops and places five landmarks; each stage regresses its boxes
and drops overlaps with non-maximum suppression. Every step follows facenet-pytorch's `detect_face` in
its arithmetic (area resampling, the `+1` box conventions, crops clipped to the image without padding,
"Min" overlap in the last suppression), which is what keeps boxes, scores and landmarks equal to its own.

What differs is how the work is done. Area resampling, for the pyramid levels as for the candidate
crops, is read from one summed-area table of the image: each output pixel is the exact integer sum of
its window divided by the window's size, which is what `interpolate(mode="area")` computes, but a
thousand crops cost a few gathers instead of a thousand resize calls. R-Net and O-Net see the candidates
of every image of a batch in one call. Non-maximum suppression is plain torch, so that a detection
does not pay for importing torchvision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facerec.errors import UsageError
from facerec.faces import Face, largest_first
from facerec.hookspecs import Register, hookimpl
from facerec.weights import WeightFile, fetch, load_state_dict

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
RNET_SIZE = 24
ONET_SIZE = 48
PYRAMID_NMS = 0.5  # within one pyramid level
CASCADE_NMS = 0.7  # across levels, after R-Net, and ("Min" overlap) after O-Net


class PNet(nn.Module):
    """The proposal network: fully convolutional, a face probability and box offsets every 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box offsets (N, 4, h, w) and face probabilities (N, h, w)."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


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

    def __init__(self, pixels: torch.Tensor) -> None:
        """`pixels`: (H, W, 3) uint8."""
        height, width, _ = pixels.shape
        dtype = torch.int32 if 255 * height * width < 2**31 else torch.int64
        table = torch.zeros((height + 1, width + 1, 3), dtype=dtype, device=pixels.device)
        table[1:, 1:] = pixels
        self.table = table.cumsum_(0).cumsum_(1)
        self.height, self.width = height, width

    def level(self, height: int, width: int) -> torch.Tensor:
        """(1, 3, height, width): the whole image area-resampled."""
        device = self.table.device
        row_start, row_stop = _window_bounds(
            torch.zeros(1, dtype=torch.long, device=device), self.height, height
        )
        col_start, col_stop = _window_bounds(
            torch.zeros(1, dtype=torch.long, device=device), self.width, width
        )
        rows = self.table.index_select(0, row_stop[0]) - self.table.index_select(0, row_start[0])
        sums = rows.index_select(1, col_stop[0]) - rows.index_select(1, col_start[0])
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

        sums = (
            corner(row_stop, col_stop)
            - corner(row_start, col_stop)
            - corner(row_stop, col_start)
            + corner(row_start, col_start)
        )
        return _means(sums, row_stop - row_start, col_stop - col_start)


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
    means = sums.float().div_(sizes[..., None])
    return means.sub_(127.5).mul_(0.0078125).permute(0, 3, 1, 2)


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


NMS_BLOCK = 256  # boxes settled together; bounds the overlap matrices at BLOCK x (kept + BLOCK)


def nms(
    boxes: torch.Tensor, threshold: float, overlap: Callable = iou, later_wins_ties: bool = False
) -> torch.Tensor:
    """Greedy non-maximum suppression of boxes (N, 5+: corners, score): kept indices, best first.

    A box is dropped when its `overlap` with a kept, higher-scoring box exceeds `threshold`. Of boxes with
    equal scores the first ranks higher (as torchvision's nms), or the last with `later_wins_ties` (as
    the numpy suppression facenet-pytorch runs after O-Net): boxes clipped by the image's edge can share
    a crop, hence a score, and which of them wins moves the face. Boxes go
    in blocks of decreasing score: first those a box kept earlier suppresses are dropped, then the block
    settles by iterating "kept unless a kept box before it suppresses it" to its fixed point. That
    fixed point is the greedy answer (each box depends only on those before it), reached with a few
    matrix operations instead of a Python step per box.
    """
    if later_wins_ties:
        order = torch.argsort(boxes[:, 4], stable=True).flip(0)
    else:
        order = torch.argsort(boxes[:, 4], descending=True, stable=True)
    ranked = boxes[order]
    kept = torch.zeros(0, dtype=torch.long, device=boxes.device)
    for start in range(0, len(ranked), NMS_BLOCK):
        block = ranked[start : start + NMS_BLOCK]
        alive = ~(overlap(ranked[kept], block) > threshold).any(0)
        beaten = (overlap(block, block) > threshold).triu_(1)
        survivors = alive
        while True:
            settled = alive & ~(beaten & survivors[:, None]).any(0)
            if torch.equal(settled, survivors):
                break
            survivors = settled
        kept = torch.cat([kept, survivors.nonzero()[:, 0] + start])
    return order[kept]


class ImageCandidates:
    """One image's state through the cascade: its summed-area table and current boxes (N, 5+)."""

    def __init__(self, image: Image.Image, device: torch.device) -> None:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).to(device)
        self.height, self.width = int(pixels.shape[0]), int(pixels.shape[1])
        self.table = SummedAreaTable(pixels)
        self.boxes = torch.zeros((0, 5), device=device)
        self.landmarks = torch.zeros((0, 5, 2), device=device)

    def crops(self, size: int) -> torch.Tensor:
        """The current boxes' pixels as the network's size x size input; boxes without pixels are dropped."""
        rects, usable = crop_rects(self.boxes, self.width, self.height)
        if not bool(usable.all()):
            self.boxes = self.boxes[usable]
            rects = rects[usable]
        return self.table.crops(rects, size)

    def faces(self) -> list[Face]:
        boxes = self.boxes.cpu().tolist()
        points = self.landmarks.cpu().tolist()
        faces = [
            Face(box=tuple(box[:4]), score=box[4], landmarks=tuple(tuple(p) for p in landmarks))
            for box, landmarks in zip(boxes, points, strict=True)
        ]
        return largest_first(faces)


class MTCNN:
    """The `mtcnn` detector with facenet-pytorch's defaults; weights are fetched on first use."""

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
        """The faces of each RGB image, largest first. Boxes may reach past the image's edges."""
        if not images:
            return []
        pnet, rnet, onet = self.nets
        with torch.inference_mode():
            states = [ImageCandidates(image, self.device) for image in images]
            for state in states:
                self._propose(pnet, state)
            self._refine(rnet, states)
            self._finish(onet, states)
        return [state.faces() for state in states]

    def _propose(self, pnet: PNet, state: ImageCandidates) -> None:
        """Stage one: P-Net over the pyramid, suppression per level then across levels, regression."""
        found = []
        for scale in pyramid_scales(state.height, state.width, self.min_face_size, self.factor):
            level = state.table.level(int(state.height * scale + 1), int(state.width * scale + 1))
            offsets, probs = pnet(level)
            boxes = _proposals(offsets[0], probs[0], scale, self.thresholds[0])
            found.append(boxes[nms(boxes, PYRAMID_NMS)])
        boxes = torch.cat(found) if found else torch.zeros((0, 9), device=self.device)
        boxes = boxes[nms(boxes, CASCADE_NMS)]
        width = boxes[:, 2] - boxes[:, 0]
        height = boxes[:, 3] - boxes[:, 1]
        corners = boxes[:, :4] + boxes[:, 5:9] * torch.stack([width, height, width, height], 1)
        state.boxes = rerec(torch.cat([corners, boxes[:, 4:5]], 1))

    def _refine(self, rnet: RNet, states: list[ImageCandidates]) -> None:
        """Stage two: R-Net on every image's candidates in one batch; threshold, suppression, regression."""
        offsets, probs = _run_on_crops(rnet, states, RNET_SIZE)
        for state, offset, prob in zip(states, offsets, probs, strict=True):
            passed = prob > self.thresholds[1]
            boxes = torch.cat([state.boxes[passed, :4], prob[passed, None]], 1)
            keep = nms(boxes, CASCADE_NMS)
            state.boxes = rerec(bbreg(boxes[keep], offset[passed][keep]))

    def _finish(self, onet: ONet, states: list[ImageCandidates]) -> None:
        """Stage three: O-Net scores, landmarks, regression, then "Min" suppression."""
        offsets, points, probs = _run_on_crops(onet, states, ONET_SIZE)
        for state, offset, point, prob in zip(states, offsets, points, probs, strict=True):
            passed = prob > self.thresholds[2]
            boxes = torch.cat([state.boxes[passed, :4], prob[passed, None]], 1)
            width = boxes[:, 2] - boxes[:, 0] + 1
            height = boxes[:, 3] - boxes[:, 1] + 1
            point = point[passed]
            xs = width[:, None] * point[:, :5] + boxes[:, 0:1] - 1
            ys = height[:, None] * point[:, 5:] + boxes[:, 1:2] - 1
            boxes = bbreg(boxes, offset[passed])
            keep = nms(boxes, CASCADE_NMS, min_overlap, later_wins_ties=True)
            state.boxes = boxes[keep]
            state.landmarks = torch.stack([xs, ys], 2)[keep]


def _proposals(offsets: torch.Tensor, probs: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
    """P-Net cells at or above threshold as boxes (N, 9: corners, score, four offsets) in image pixels."""
    mask = probs >= threshold
    cells = mask.nonzero().to(offsets.dtype).flip(1)
    start = ((PNET_STRIDE * cells + 1) / scale).floor()
    stop = ((PNET_STRIDE * cells + PNET_CELL) / scale).floor()
    return torch.cat([start, stop, probs[mask][:, None], offsets[:, mask].T], 1)


def _run_on_crops(net: nn.Module, states: list[ImageCandidates], size: int) -> list[list[torch.Tensor]]:
    """`net` on the crops of all images' boxes in one batch; each of its outputs split back per image."""
    crops = [state.crops(size) for state in states]
    outputs = net(torch.cat(crops))
    return [list(output.split([len(crop) for crop in crops])) for output in outputs]


def _checked(min_face_size: Any, thresholds: Any, factor: Any) -> tuple[float, tuple[float, ...], float]:
    """Options validated with one clear message each (they come from the command line as JSON)."""
    if isinstance(min_face_size, bool) or not isinstance(min_face_size, int | float) or min_face_size <= 0:
        raise UsageError(f"mtcnn: min_face_size must be a positive number of pixels, got {min_face_size!r}")
    if (
        isinstance(thresholds, str)
        or not isinstance(thresholds, Sequence)
        or len(thresholds) != 3
        or not all(isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)
    ):
        raise UsageError(f"mtcnn: thresholds must be three numbers between 0 and 1, got {thresholds!r}")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor < 1:
        raise UsageError(f"mtcnn: factor must be a number between 0 and 1, got {factor!r}")
    return min_face_size, tuple(thresholds), factor


@hookimpl
def register_detectors(register: Register) -> None:
    register("mtcnn", MTCNN)
