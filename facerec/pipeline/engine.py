"""Composition: the engine builds a detector, an aligner and a backbone from the registry and runs
images through them.

It knows no concrete model. `load_backbone` resolves weights (a file, a named pretrained download, or
none) and asks the backbone plugin to build its network; the backbone's input recipe names the aligner
and the standardization; `Pipeline` streams image paths through load -> detect -> align -> standardize
-> embed in small batches, so memory stays bounded however many images come.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from facerec import defaults
from facerec.contract.faces import Face, largest_first
from facerec.contract.parts import Aligner, Backbone, Detector, InputRecipe
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.pipeline.autoprecision import choose
from facerec.pipeline.images import ImageError, load_image
from facerec.pipeline.int8 import Calibration, FaceSource, calibration_faces, int8_network
from facerec.pipeline.precision import (
    AUTO,
    BF16,
    FP32,
    INT8,
    Bfloat16Network,
    check_precision,
    int8_device,
    int8_weight_bits,
    networks_in_bf16,
    note_emulated_bf16,
    stderr_note,
    this_cpu,
)
from facerec.pipeline.standardize import standardize_pictures
from facerec.pipeline.weights import fetch, load_state_dict, sha256_file

NO_WEIGHTS = "none"
UNIT_TOLERANCE = 1e-3  # int8 and bf16 embeddings are normalized in float32 too


def resolve_device(device: str | None) -> torch.device:
    """`auto` (or None) means CUDA when available, else the CPU. A CUDA device this machine does not
    have is refused here, in one line, before any model is moved to it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device: unknown device '{device}'") from None
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
        if (found.index or 0) >= count:
            raise UsageError(
                f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    return found


def backbone_plugin(name: str) -> Backbone:
    """The registered backbone `name` (its recipe and weights list; no network is built)."""
    return registry().create("backbone", name)


def default_threshold(plugin: Backbone, pretrained: str | None) -> float | None:
    """The same-person distance for `pretrained` weights: their own, else the default weights'."""
    thresholds = plugin.thresholds
    return thresholds.get(pretrained or "", thresholds.get(plugin.default_pretrained or ""))


@dataclass
class LoadedBackbone:
    """A backbone plugin with its network built and its weights identified by SHA-256."""

    name: str
    plugin: Backbone
    module: torch.nn.Module  # trainable, unfused
    weights_sha256: str | None  # None for untrained (seeded random) weights
    device: torch.device
    pretrained: str | None = None  # the named weights loaded (`none`: untrained), None for a file
    precision: str = FP32  # FP32, INT8 or BF16; AUTO until `resolve` chooses (facerec.pipeline.precision)
    recipe: InputRecipe | None = None  # how its faces are made, when not the plugin's own (--aligner)
    calibration: FaceSource | None = None  # int8, auto: faces to calibrate on (default: the demo's)
    checked_on: FaceSource | None = None  # auto: the command's own faces, to check bf16 on (not calibrate)
    int8_weight_bits: int = field(default_factory=lambda: int8_weight_bits(this_cpu()[1]))  # or a gallery's
    _inference: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def inference(self) -> torch.nn.Module:
        """The inference form of `module` at this precision, built (int8: loaded or calibrated) once."""
        precision = self.resolve()  # auto: may build the network while measuring
        if self._inference is None:
            if precision == BF16:
                note_emulated_bf16(self.device)
            self._inference = self.network_at(precision)
        return self._inference

    def resolve(self, allowed: Sequence[str] | None = None) -> str:
        """The precision this runs at: under AUTO, chosen now (measured, or read from the record of an
        earlier measurement: facerec.pipeline.autoprecision) among `allowed` (None: any)."""
        if self.precision == AUTO:
            self.precision, self._inference = choose(self, allowed, stderr_note)
            if self.precision == INT8 and self.device.type != "cpu":  # a gallery's int8 on a GPU machine
                self.device = torch.device("cpu")
                self.module = self.module.to(self.device)
        return self.precision

    def network_at(self, precision: str, faces: FaceSource | None = None) -> torch.nn.Module:
        """A new inference network of `module` at `precision` (int8: calibrated on `faces`, else on
        this backbone's own calibration faces, when not cached)."""
        if precision == INT8:
            recipe = self.recipe or self.plugin.recipe
            return int8_network(
                self, recipe, faces or self.faces_source(), stderr_note, self.int8_weight_bits
            )
        network = self.plugin.for_inference(self.module.eval()).to(self.device)
        return Bfloat16Network(network) if precision == BF16 else network

    def faces_source(self) -> FaceSource:
        return self.calibration or public_calibration(self.recipe or self.plugin.recipe)

    @property
    def threshold(self) -> float | None:
        return default_threshold(self.plugin, self.pretrained)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N, D) on the CPU of standardized faces (N, 3, S, S).

        A vector that is not of unit length (all zeros, or not finite) is refused: it comes from weights
        that do not work (random or damaged ones), and searched or enrolled it would answer nonsense
        with exit 0.
        """
        with torch.inference_mode():
            vectors = self.inference(faces.to(self.device)).float().cpu()
        norms = vectors.norm(dim=1)
        bad = ~torch.isfinite(norms) | ((norms - 1).abs() > UNIT_TOLERANCE)
        if bad.any():
            weights = f"weights {self.pretrained}" if self.pretrained else "the --weights file"
            digest = f" (sha256 {self.weights_sha256[:12]})" if self.weights_sha256 else ""
            raise FacerecError(
                f"backbone '{self.name}' with {weights}{digest} gave an embedding of length "
                f"{norms[bad][0].item():.3g}, not 1: these weights do not work"
            )
        return vectors


def _state_dict_for(plugin: Backbone, name: str, pretrained: str | None, weights: Path | None):
    if weights is not None:
        return (*_loaded_and_hashed(weights), str(weights))
    if pretrained in (None, NO_WEIGHTS):
        return None, None, "untrained weights"
    if pretrained not in plugin.pretrained:
        known = ", ".join([*plugin.pretrained, NO_WEIGHTS])
        raise UsageError(
            f"--pretrained: backbone '{name}' has no weights '{pretrained}' (available: {known})"
        )
    path, digest = fetch(plugin.pretrained[pretrained])
    read = getattr(plugin, "read_pretrained", load_state_dict)  # for published files that are not torch's
    return read(path), digest, str(path)


def _loaded_and_hashed(weights: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A --weights file's state dict and SHA-256, the hash computed on another thread while the file loads.

    The SHA-256 names the weights (in galleries, in the precision records), it verifies nothing: the
    file is the user's own, checked against its checksum when one is recorded beside it. Hashing
    releases the interpreter's lock, so it runs on the other core beside torch's unpickling: for
    inception-resnet's 94 MB, 85 ms that no longer add to every process's start-up (Intel Xeon with
    AMX, 2 cores). Published weights are verified by their SHA-256 before they load (fetch)."""
    with ThreadPoolExecutor(1, thread_name_prefix="facerec-sha256") as pool:
        digest = pool.submit(sha256_file, weights)
        state = load_state_dict(weights)
        return state, digest.result()


def load_backbone(
    name: str,
    pretrained: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | None = "cpu",
    precision: str = FP32,
) -> LoadedBackbone:
    """Build backbone `name` with `weights` (a state-dict file) or the named `pretrained` weights.

    `pretrained` None means the backbone's default weights; `none` means untrained, initialised from a
    fixed seed so that two runs agree. `precision` int8 runs on the CPU; `auto` is chosen when the
    network is first needed (facerec.pipeline.precision). The library defaults to fp32, the commands to
    auto (facerec.defaults.PRECISION).
    """
    plugin = backbone_plugin(name)
    check_precision(precision, plugin, name)
    target = resolve_device(int8_device(device) if precision == INT8 else device)
    if weights is None and pretrained is None:
        pretrained = plugin.default_pretrained
    state, digest, source = _state_dict_for(plugin, name, pretrained, Path(weights) if weights else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            module = plugin.build(state)
        except ValueError as error:
            raise FacerecError(f"{source}: does not fit backbone '{name}': {error}") from None
    named = None if weights is not None else pretrained
    return LoadedBackbone(name, plugin, module.to(target), digest, target, named, precision)


def public_calibration(recipe: InputRecipe) -> FaceSource:
    """int8 calibration faces for a backbone loaded alone: the demo photos, found by the default
    detector and aligned by the recipe's aligner."""

    def faces() -> Calibration:
        aligner, _ = create_aligner(recipe)
        return calibration_faces(create_detector(defaults.DETECTOR), aligner, recipe, None)

    return faces


def with_aligner(
    recipe: InputRecipe, aligner: str | None = None, options: Mapping[str, Any] | None = None
) -> InputRecipe:
    """`recipe` with the user's aligner (`--aligner`) and options (`-A`); options alone adjust the
    recipe's own aligner."""
    if aligner is not None and aligner != recipe.aligner:
        return replace(recipe, aligner=aligner, aligner_options=dict(options or {}))
    return replace(recipe, aligner_options={**recipe.aligner_options, **(options or {})})


def create_aligner(recipe: InputRecipe) -> tuple[Aligner, InputRecipe]:
    """The recipe's aligner, and the recipe with the options as the aligner reports them (normalized:
    `margin=0` and `margin=0.0` crop alike and must record alike)."""
    aligner = registry().create("aligner", recipe.aligner, **recipe.aligner_options)
    options = {key: value for key, value in aligner.settings.items() if key != "name"}
    return aligner, replace(recipe, aligner_options=options)


@dataclass
class ImageResult:
    """What the pipeline found in one image: faces (largest first) and their embeddings, or an error."""

    path: str
    faces: list[Face] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON Lines object `detect` and `embed` print for this image (with embeddings when computed)."""
        if self.error is not None:
            return {"image": self.path, "error": self.error}
        faces = [face.to_json() for face in self.faces]
        if self.embeddings is not None:
            for record, vector in zip(faces, self.embeddings.tolist(), strict=True):
                record["embedding"] = vector
        return {"image": self.path, "faces": faces}


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class Pipeline:
    """Streams images through a detector, an aligner and, when given, a backbone, a few at a time."""

    detector: Detector
    detector_name: str
    aligner: Aligner
    recipe: InputRecipe
    backbone: LoadedBackbone | None = None
    detector_precision: str = FP32  # or BF16: the detector's networks under bf16 autocast
    images_per_batch: int = 8
    faces_per_batch: int = 32

    def run(self, paths: Iterable[str | os.PathLike]) -> Iterator[ImageResult]:
        """One result per path, in order; unreadable images give a result with `error` and the run goes on."""
        for chunk in batched(paths, self.images_per_batch):
            yield from self._run_batch([str(path) for path in chunk])

    def _run_batch(self, paths: Sequence[str]) -> list[ImageResult]:
        results = [ImageResult(path) for path in paths]
        images: dict[int, Image.Image] = {}
        for index, result in enumerate(results):
            try:
                images[index] = load_image(result.path)
            except ImageError as error:
                result.error = error.reason
        for index, faces in zip(images, self.find(list(images.values())), strict=True):
            results[index].faces = faces
        with_faces = [index for index in images if results[index].faces]
        items = [(images[index], results[index].faces) for index in with_faces]
        for index, crops in zip(
            with_faces, cut(self.detector, self.aligner, items, self.recipe), strict=True
        ):
            results[index].crops = crops
        if self.backbone is not None:
            self._embed(results)
        return results

    def find(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of each decoded image, largest first (video frames come here as well as photos)."""
        if self.detector_precision == BF16:
            with networks_in_bf16():
                found = detect_bounded(self.detector, images)
        else:
            found = detect_bounded(self.detector, images)
        return [largest_first(faces) for faces in found]

    def pictures(self, image: Image.Image, faces: Sequence[Face]) -> list[Image.Image]:
        """The backbone's input picture of each of `faces` in `image`."""
        return cut(self.detector, self.aligner, [(image, faces)], self.recipe)[0]

    def embed_pictures(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """Unit embeddings (N, D) of input pictures, a batch of `faces_per_batch` at a time."""
        vectors = [
            self.backbone.embed(standardize_pictures(chunk, self.recipe))
            for chunk in batched(pictures, self.faces_per_batch)
        ]
        return torch.cat(vectors) if vectors else torch.empty(0, self.backbone.plugin.embedding_size)

    def _embed(self, results: list[ImageResult]) -> None:
        flat = self.embed_pictures([crop for result in results for crop in result.crops])
        start = 0
        for result in results:
            if result.error is None:
                result.embeddings = flat[start : start + len(result.faces)]
                start += len(result.faces)


def detect_bounded(detector: Detector, images: Sequence[Image.Image]) -> list[list[Face]]:
    """`detector.detect` on images no larger than the detector's working size, boxes in the originals'
    pixels.

    A detector's memory grows with the pixels it looks at (MTCNN's pyramid, dlib's upsampled CNN), so
    an image over its `max_pixels` (the detector's declaration, else facerec.defaults.DETECTION_PIXELS;
    None: unbounded) is scaled down for detection alone, keeping its aspect, and the faces found are
    mapped back: aligners then cut them from the original, at full resolution. Faces that are small in
    a huge image may be missed, as in any downscaled run."""
    limit = getattr(detector, "max_pixels", defaults.DETECTION_PIXELS)
    working = [_within(image, limit) for image in images]
    found = detector.detect(working)
    return [
        faces
        if small is image
        else [face.scaled(image.width / small.width, image.height / small.height) for face in faces]
        for image, small, faces in zip(images, working, found, strict=True)
    ]


def _within(image: Image.Image, limit: int | None) -> Image.Image:
    """`image`, or a copy scaled down to at most `limit` pixels (PIL's reducing resize: fast, antialiased)."""
    pixels = image.width * image.height
    if limit is None or pixels <= limit:
        return image
    factor = math.sqrt(limit / pixels)
    size = (max(1, math.floor(image.width * factor)), max(1, math.floor(image.height * factor)))
    return image.resize(size, Image.BILINEAR, reducing_gap=2.0)


def cut(
    detector: Detector,
    aligner: Aligner,
    items: Sequence[tuple[Image.Image, Sequence[Face]]],
    recipe: InputRecipe,
) -> list[list[Image.Image]]:
    """The backbone's input pictures of the faces of each image in `items`: cut by the recipe's aligner
    (all images in one call when it has `align_all`), except from a detector whose faces are already
    aligned pictures (`aligned = True`, as `--detector none`): those are used as they are, resized to
    the recipe's size. Aligning an aligned chip again would move it (dlib's chip cut from a chip is not
    the chip)."""
    if getattr(detector, "aligned", False):
        return [
            [image.resize((recipe.size, recipe.size), Image.BILINEAR) for _ in faces]
            for image, faces in items
        ]
    if hasattr(aligner, "align_all"):
        return aligner.align_all(items, recipe.size)
    return [aligner.align(image, faces, recipe.size) for image, faces in items]


def create_detector(name: str, options: Mapping[str, Any] | None = None) -> Detector:
    """The registered detector `name` built with `options` (from `-D KEY=VALUE` on the command line)."""
    return registry().create("detector", name, **(options or {}))


def build_pipeline(
    detector: str = defaults.DETECTOR,
    detector_options: Mapping[str, Any] | None = None,
    backbone: str = defaults.BACKBONE,
    aligner: str | None = None,
    aligner_options: Mapping[str, Any] | None = None,
    embed: bool = True,
    pretrained: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | None = "auto",
    precision: str = FP32,
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    allowed: Sequence[str] | None = None,
    detector_precision: str | None = None,
    int8_weight_bits: int | None = None,
    photos: Sequence[str | os.PathLike] | None = None,
) -> Pipeline:
    """The one place a pipeline is composed: detector, the backbone's recipe (its aligner, or the one
    asked for), and with `embed` the backbone's network with its weights at `precision`.

    Parts are built before any weights are fetched, so a bad option is reported before a download. An
    int8 network is calibrated, when not cached, on the faces this pipeline finds in the photos of
    `calibration` (a folder, or a list of photos), else in the demo photos; `int8_weight_bits` (7 or 8)
    overrides this CPU's choice (for a gallery's network). `auto` is chosen now, among `allowed` (None:
    any); the faces of the first MEASURED_PHOTOS of `photos` (the command's own, when it has some) are
    those bf16 is checked on, so that a command offline does not need the demo photos for that. The
    detector runs at `detector_precision`: by default bf16 when bf16 is asked for by name, else fp32
    (auto chooses for the backbone only: at bf16 MTCNN's boxes move, see facerec.pipeline.precision).
    """
    found = create_detector(detector, detector_options)
    plugin = backbone_plugin(backbone)
    check_precision(precision, plugin, backbone)
    recipe = with_aligner(plugin.recipe, aligner, aligner_options)
    part, recipe = create_aligner(recipe)
    loaded = load_backbone(backbone, pretrained, weights, device, precision) if embed else None
    if loaded is not None:
        calibrating = _calibration_photos(calibration)
        loaded.recipe = recipe
        loaded.calibration = lambda: calibration_faces(found, part, recipe, calibrating)
        if photos:
            checking = [Path(photo) for photo in photos[: defaults.MEASURED_PHOTOS]]
            loaded.checked_on = lambda: calibration_faces(found, part, recipe, checking)
        if int8_weight_bits is not None:
            loaded.int8_weight_bits = int8_weight_bits
        loaded.resolve(allowed)
    return Pipeline(
        detector=found,
        detector_name=detector,
        aligner=part,
        recipe=recipe,
        backbone=loaded,
        detector_precision=detector_precision or (BF16 if precision == BF16 else FP32),
    )


def _calibration_photos(calibration: str | os.PathLike | Sequence | None) -> Path | list[Path] | None:
    if calibration is None or isinstance(calibration, str | os.PathLike):
        return Path(calibration) if calibration is not None else None
    return [Path(photo) for photo in calibration]
