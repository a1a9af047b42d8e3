"""Composition: the engine builds a backbone and a detector from the registry and runs images through them.

It knows no concrete model. `load_backbone` resolves weights (a file, a named pretrained download, or
none) and asks the backbone plugin to build its network; `Pipeline` streams image paths through
load -> detect -> crop -> embed in small batches, so memory stays bounded however many images come.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from facerec import align
from facerec.errors import FacerecError, UsageError
from facerec.faces import Face, largest_first
from facerec.images import ImageError, load_image
from facerec.parts import Backbone, Detector
from facerec.registry import registry
from facerec.weights import fetch, load_state_dict, sha256_file

NO_WEIGHTS = "none"


def resolve_device(device: str | None) -> torch.device:
    """`auto` (or None) means CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device: unknown device '{device}'") from None


@dataclass
class LoadedBackbone:
    """A backbone plugin with its network built and its weights identified by SHA-256."""

    name: str
    plugin: Backbone
    module: torch.nn.Module  # trainable, unfused
    weights_sha256: str | None  # None for untrained (seeded random) weights
    device: torch.device
    _inference: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def inference(self) -> torch.nn.Module:
        """The plugin's inference form of `module`, built once on first use."""
        if self._inference is None:
            self._inference = self.plugin.for_inference(self.module.eval()).to(self.device)
        return self._inference

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N, D) on the CPU of standardized faces (N, 3, S, S)."""
        with torch.inference_mode():
            return self.inference(faces.to(self.device)).float().cpu()


def _state_dict_for(plugin: Backbone, name: str, pretrained: str | None, weights: Path | None):
    if weights is not None:
        return load_state_dict(weights), sha256_file(weights), str(weights)
    if pretrained in (None, NO_WEIGHTS):
        return None, None, "untrained weights"
    if pretrained not in plugin.pretrained:
        known = ", ".join([*plugin.pretrained, NO_WEIGHTS])
        raise UsageError(
            f"--pretrained: backbone '{name}' has no weights '{pretrained}' (available: {known})"
        )
    path, digest = fetch(plugin.pretrained[pretrained])
    return load_state_dict(path), digest, str(path)


def load_backbone(
    name: str,
    pretrained: str | None = "vggface2",
    weights: str | os.PathLike | None = None,
    device: str | None = "cpu",
) -> LoadedBackbone:
    """Build backbone `name` with `weights` (a state-dict file) or the named `pretrained` weights.

    Without weights the network is initialised from a fixed seed, so two runs agree.
    """
    target = resolve_device(device)
    plugin = registry().create("backbone", name)
    state, digest, source = _state_dict_for(plugin, name, pretrained, Path(weights) if weights else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            module = plugin.build(state)
        except ValueError as error:
            raise FacerecError(f"{source}: does not fit backbone '{name}': {error}") from None
    return LoadedBackbone(name, plugin, module.to(target), digest, target)


@dataclass(frozen=True)
class CropSettings:
    """How a detected face becomes the network's input; recorded with galleries."""

    size: int = 160
    margin: float = 0
    align: str = "box"  # "box": facenet-pytorch's crop; "landmarks": similarity alignment

    def crop(self, image: Image.Image, face: Face) -> Image.Image:
        if self.align == "landmarks" and face.landmarks is not None:
            return align.align_by_landmarks(image, face.landmarks, self.size)
        return align.crop_face(image, face, self.size, self.margin)


@dataclass
class ImageResult:
    """What the pipeline found in one image: faces (largest first) and their embeddings, or an error."""

    path: str
    faces: list[Face] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON Lines object of DESIGN.md for this image (with embeddings when computed)."""
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
    """Streams images through a detector and, when given, a backbone, a few images at a time."""

    detector: Detector
    backbone: LoadedBackbone | None = None
    crop: CropSettings = field(default_factory=CropSettings)
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
        detections = self.detector.detect(list(images.values())) if images else []
        for (index, image), faces in zip(images.items(), detections, strict=True):
            results[index].faces = largest_first(faces)
            results[index].crops = [self.crop.crop(image, face) for face in results[index].faces]
        if self.backbone is not None:
            self._embed(results)
        return results

    def _embed(self, results: list[ImageResult]) -> None:
        crops = [crop for result in results for crop in result.crops]
        vectors = [
            self.backbone.embed(torch.stack([align.standardize(crop) for crop in chunk]))
            for chunk in batched(crops, self.faces_per_batch)
        ]
        flat = torch.cat(vectors) if vectors else torch.empty(0, self.backbone.plugin.embedding_size)
        start = 0
        for result in results:
            if result.error is None:
                result.embeddings = flat[start : start + len(result.faces)]
                start += len(result.faces)


def create_detector(name: str, options: dict[str, Any] | None = None) -> Detector:
    """The registered detector `name` built with `options` (from `-D KEY=VALUE` on the command line)."""
    return registry().create("detector", name, **(options or {}))
