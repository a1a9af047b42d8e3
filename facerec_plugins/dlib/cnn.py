"""The `dlib-cnn` detector: dlib's MMOD CNN face detector, face_recognition's `model="cnn"`, in PyTorch.

dlib's Python binding (tools/python/src/cnn_face_detector.cpp) runs `mmod_human_face_detector.dat`:
the image is upsampled `upsample` times with `pyramid_up`, packed with all its pyramid levels into one
tiled image (see facerec_plugins.dlib.pyramid), and a fully convolutional network scores every
position of it: three 5x5 stride-2 convolutions, three 5x5 ones, each followed by batch norm (applied
with its running statistics, as dlib's `affine` layer does after loading the file's `bn_con`) and
ReLU, and a last 9x9 convolution whose output is the detection score. `loss_mmod_::to_label` keeps the
positions scoring above 0, centres the detector window (80x80) on each position's place in the tiled
image (`map_output_to_input` through the convolutions: x * stride - padding + kernel // 2), maps that
window to the image (`tiled_pyramid_to_image`), rounds it to whole pixels, and keeps the best-scoring
windows first, dropping any that overlaps one already kept (`test_box_overlap` with the file's
thresholds). The binding maps the kept windows back through the upsampling and returns them with
their scores: `confidence` is the network's raw output at that position.

Here the batch norm is folded into the convolutions, the network runs channels-last on the same tiled
image, and everything else is the arithmetic above. Boxes: dlib's rectangle (left, top, right,
bottom), inclusive, is the box (left, top, right + 1, bottom + 1), so face_recognition's
(top, right, bottom, left) is (y1, x2 - 1, y2 - 1, x1) clipped to the image as it clips it:
(max(y1, 0), min(x2 - 1, width), min(y2 - 1, height), max(x1, 0)). Boxes may reach past the edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from facerec.plugin import Face, FacerecError, Register, UsageError, fetch, hookimpl, largest_first
from facerec_plugins.dlib.dnn import DlibLayer, read_network
from facerec_plugins.dlib.models import MMOD_DETECTOR
from facerec_plugins.dlib.pyramid import TiledPyramid, pyramid_up, rect_down_2, round_half_up

MAX_UPSAMPLE = 4  # each doubles the image's sides: past 4 a photo becomes gigapixels
CNN_PIXELS = 5_000_000  # pixels of the upsampled image the CNN runs on, at most
SCORE_THRESHOLD = 0.0  # to_label's default adjust_threshold: positions scoring above it are detections
INPUT_SCALE = 256.0  # dlib's input layers divide (pixel - mean) by 256
COLOURS = ("red", "green", "blue")


@dataclass(frozen=True)
class MmodModel:
    """What detection needs from an MMOD network file.

    `network` maps the tiled image (1, 3, H, W) to one score map per detector window; `mean` is the
    input layer's average colour (3,); `padding` and `outer_padding` its tiling; `windows` (K, 2) the
    detector windows' (width, height); `to_input` (4,) the map of output positions to the network's
    input, x = to_input[0] * column + to_input[1], y = to_input[2] * row + to_input[3];
    `smallest_input` the fewest (rows, columns) of input the network gives any output for; `overlap`
    the suppression's (iou_thresh, percent_covered_thresh).
    """

    network: nn.Module
    mean: torch.Tensor
    padding: int
    outer_padding: int
    windows: np.ndarray
    to_input: np.ndarray
    smallest_input: tuple[int, int]
    overlap: tuple[float, float]


def load_model(path: str | Path) -> MmodModel:
    """The MMOD detector in dlib's file `path`: an `input_rgb_image_pyramid`, convolutions each
    optionally followed by batch norm (or affine) and ReLU, and `loss_mmod` without box regression."""
    layers = read_network(path).layers
    source, *body, loss = layers
    if source.kind != "input_rgb_image_pyramid" or loss.kind != "loss_mmod":
        raise FacerecError(f"{path}: not a dlib MMOD detector (an image pyramid input and an mmod loss)")
    if loss.options["use_bounding_box_regression"]:
        raise FacerecError(f"{path}: MMOD detectors with bounding box regression are not supported")
    modules, convolutions = _modules(body, path)
    windows = np.array([(w["width"], w["height"]) for w in loss.options["detector_windows"]], dtype=float)
    if convolutions[-1]["num_filters"] != len(windows):
        raise FacerecError(f"{path}: the network's last layer does not give one score per detector window")
    nms = loss.options["overlaps_nms"]
    rows = [(c["nr"], c["stride_y"], c["padding_y"]) for c in convolutions]
    columns = [(c["nc"], c["stride_x"], c["padding_x"]) for c in convolutions]
    network = nn.Sequential(*modules).eval().to(memory_format=torch.channels_last)
    return MmodModel(
        network=network,
        mean=torch.tensor([source.options[f"avg_{colour}"] for colour in COLOURS], dtype=torch.float32),
        padding=source.options["pyramid_padding"],
        outer_padding=source.options["pyramid_outer_padding"],
        windows=windows,
        to_input=np.array([*_output_to_input(rows), *_output_to_input(columns)]),
        smallest_input=(_smallest_input(rows), _smallest_input(columns)),
        overlap=(nms["iou_thresh"], nms["percent_covered_thresh"]),
    )


def _modules(layers: Sequence[DlibLayer], path: str | Path) -> tuple[list[nn.Module], list[dict]]:
    """The PyTorch layers for dlib's (input side first), batch norm and affine folded into the
    convolution before them; and the convolutions' options."""
    modules: list[nn.Module] = []
    convolutions: list[dict] = []
    for layer in layers:
        if layer.kind == "con":
            modules.append(_convolution(layer))
            convolutions.append(layer.options)
            if layer.options.get("use_relu"):  # con_6 can apply its ReLU itself
                modules.append(nn.ReLU(inplace=True))
        elif layer.kind in ("bn", "affine") and modules and isinstance(modules[-1], nn.Conv2d):
            _fold(modules[-1], *_scale_and_shift(layer, path))
        elif layer.kind == "relu":
            if not layer.options.get("disabled"):  # a disabled relu_ passes its input through
                modules.append(nn.ReLU(inplace=True))
        else:
            raise FacerecError(f"{path}: unsupported layer '{layer.kind}' in an MMOD detector")
    if not convolutions or not isinstance(modules[-1], nn.Conv2d):
        raise FacerecError(f"{path}: an MMOD detector must end with a convolution")
    return modules, convolutions


def _convolution(layer: DlibLayer) -> nn.Conv2d:
    """dlib's `con` (a cross-correlation, zero padding) with its weights."""
    options, tensors = layer.options, layer.tensors
    conv = nn.Conv2d(
        tensors["weight"].shape[1],
        options["num_filters"],
        kernel_size=(options["nr"], options["nc"]),
        stride=(options["stride_y"], options["stride_x"]),
        padding=(options["padding_y"], options["padding_x"]),
        bias=True,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(tensors["weight"]))
        if "bias" in tensors:
            conv.bias.copy_(torch.from_numpy(tensors["bias"]))
        else:
            conv.bias.zero_()
    return conv


def _scale_and_shift(layer: DlibLayer, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (gamma, beta) of an affine layer, or of a batch norm as dlib turns it into one
    when a network declared with `affine` loads it: gamma / sqrt(var + eps), beta - that * mean."""
    tensors = layer.tensors
    if layer.options.get("mode") != "conv" or layer.options.get("disabled"):
        raise FacerecError(f"{path}: a '{layer.kind}' layer that is not per channel")
    if layer.kind == "affine":
        return tensors["gamma"], tensors["beta"]
    scale = tensors["gamma"] / np.sqrt(tensors["running_var"] + np.float32(layer.options["eps"]))
    return scale, tensors["beta"] - scale * tensors["running_mean"]


def _fold(conv: nn.Conv2d, scale: np.ndarray, shift: np.ndarray) -> None:
    """Make `conv` compute scale * conv(x) + shift per output channel."""
    scale_t, shift_t = torch.from_numpy(scale), torch.from_numpy(shift)
    with torch.no_grad():
        conv.weight.mul_(scale_t[:, None, None, None])
        conv.bias.mul_(scale_t).add_(shift_t)


def _output_to_input(axis: Sequence[tuple[int, int, int]]) -> tuple[float, float]:
    """dlib's `output_tensor_to_input_tensor` along one axis, given each convolution's (kernel, stride,
    padding) along it, as (a, b) in p -> a p + b: through each convolution, from the last to the
    first, a position p of its output is p * stride - padding + kernel // 2 of its input."""
    scale, offset = 1, 0
    for kernel, stride, padding in reversed(axis):
        scale, offset = scale * stride, offset * stride - padding + kernel // 2
    return float(scale), float(offset)


def _smallest_input(axis: Sequence[tuple[int, int, int]]) -> int:
    """The fewest input pixels along one axis that leave at least one output position; a smaller
    input has no room for a face, and convolutions would have none for their kernels."""
    size = 1
    for kernel, stride, padding in reversed(axis):
        size = max((size - 1) * stride + kernel - 2 * padding, 1)
    return size


def detect_pixels(model: MmodModel, pixels: np.ndarray, upsample: int) -> list[Face]:
    """The faces dlib's `cnn_face_detection_model_v1(pixels, upsample)` finds in an (H, W, 3) uint8
    image, in its order (best score first)."""
    planes = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    for _ in range(upsample):
        planes = pyramid_up(planes)
    rects, scores = _candidates(model, planes)
    kept = suppress(rects, *model.overlap)
    rects = rect_down_2(rects[kept], upsample)
    return [
        Face(box=(left, top, right + 1.0, bottom + 1.0), score=score)
        for (left, top, right, bottom), score in zip(rects.tolist(), scores[kept].tolist(), strict=True)
    ]


def _candidates(model: MmodModel, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every window scoring above the threshold in an image given as uint8 colour planes (3, H, W), as
    whole-pixel rectangles (N, 4) of the image, and the scores (N,), best first."""
    _, height, width = planes.shape
    tiled = TiledPyramid.layout(height, width, model.padding, model.outer_padding)
    if tiled.height < model.smallest_input[0] or tiled.width < model.smallest_input[1]:
        return np.zeros((0, 4)), np.zeros(0)
    image = torch.from_numpy(planes).float().sub_(model.mean[:, None, None]).div_(INPUT_SCALE)
    with torch.inference_mode():
        scores = model.network(tiled.build(image))[0]
    window, row, column = (index.numpy() for index in torch.nonzero(scores > SCORE_THRESHOLD, as_tuple=True))
    values = scores[window, row, column].double().numpy()
    order = np.argsort(-values, kind="stable")
    window, row, column, values = window[order], row[order], column[order], values[order]
    a_x, b_x, a_y, b_y = model.to_input
    centres = np.stack([a_x * column + b_x, a_y * row + b_y], axis=1)
    half = (model.windows[window] - 1) / 2
    rects = np.concatenate([centres - half, centres + half], axis=1)
    return round_half_up(tiled.to_image(rects)), values


def suppress(rects: np.ndarray, iou_thresh: float, covered_thresh: float) -> np.ndarray:
    """Indices of the rectangles (N, 4, inclusive, ranked best first) that dlib's non-maximum
    suppression keeps: each is dropped when it overlaps one kept before it (`test_box_overlap`)."""
    kept: list[int] = []
    for index in range(len(rects)):
        if not overlaps(rects[kept], rects[index], iou_thresh, covered_thresh).any():
            kept.append(index)
    return np.array(kept, dtype=np.int64)


def overlaps(kept: np.ndarray, rect: np.ndarray, iou_thresh: float, covered_thresh: float) -> np.ndarray:
    """dlib's `test_box_overlap` of `rect` against each of `kept` (inclusive integer rectangles): the
    intersection over the area of the box bounding both, or over either one's area, is above its
    threshold."""
    inner = _area(np.maximum(kept[:, :2], rect[:2]), np.minimum(kept[:, 2:], rect[2:]))
    outer = _area(np.minimum(kept[:, :2], rect[:2]), np.maximum(kept[:, 2:], rect[2:]))
    own = _area(rect[None, :2], rect[None, 2:])
    kept_area = _area(kept[:, :2], kept[:, 2:])
    covered = np.maximum(inner / own, inner / kept_area)
    return (inner > 0) & ((inner / outer > iou_thresh) | (covered > covered_thresh))


def _area(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Areas of inclusive rectangles from their corners; empty ones have none."""
    sides = np.clip(high - low + 1, 0, None)
    return sides[:, 0] * sides[:, 1]


class DlibCnnDetector:
    """dlib's CNN face detector as face_recognition runs it; the model is fetched on first use."""

    def __init__(self, upsample: int = 1) -> None:
        if isinstance(upsample, bool) or not isinstance(upsample, int) or not 0 <= upsample <= MAX_UPSAMPLE:
            raise UsageError(
                f"detector 'dlib-cnn': -D upsample must be a whole number from 0 to {MAX_UPSAMPLE}, "
                f"got {upsample!r}"
            )
        self.upsample = upsample
        self.settings: dict[str, Any] = {"name": "dlib-cnn", "upsample": upsample}
        self._model: MmodModel | None = None

    @property
    def max_pixels(self) -> int:
        """The photo size it detects on: upsampling quadruples the pixels the CNN sees (about 140 bytes
        each), so 5 MP of CNN input (near 700 MB) bound the photo at 5 MP / 4**upsample."""
        return CNN_PIXELS // 4**self.upsample

    @property
    def model(self) -> MmodModel:
        """The MMOD network, read from the verified model file the first time it is needed."""
        if self._model is None:
            path, _ = fetch(MMOD_DETECTOR)
            self._model = load_model(path)
        return self._model

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each RGB image, largest first, one image at a time (sizes differ)."""
        return [
            largest_first(detect_pixels(self.model, np.array(image.convert("RGB")), self.upsample))
            for image in images
        ]


@hookimpl
def register_detectors(register: Register) -> None:
    register("dlib-cnn", DlibCnnDetector)
