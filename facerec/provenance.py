"""Which models made a gallery's vectors, and building exactly those again.

Vectors from different networks, weights, detectors or crops are not comparable, so a gallery records
all of them (`Provenance`) and every later `index` or `identify` embeds the same way. Options a user
gives explicitly (`ModelRequest`) must agree with the record; anything else is refused with one line
that says what differs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.errors import FacerecError
from facerec.weights import sha256_file

if TYPE_CHECKING:
    from facerec.engine import Pipeline

DEFAULT_BACKBONE = "inception-resnet"
DEFAULT_PRETRAINED = "vggface2"
DEFAULT_DETECTOR = "mtcnn"


@dataclass(frozen=True)
class Provenance:
    """What made a gallery's vectors; identify must embed with exactly the same to compare."""

    backbone: str
    pretrained: str | None
    weights_sha256: str | None  # None only for untrained (seeded) weights
    weights_file: str | None  # the --weights file, when the weights were not a named pretrained set
    detector: str
    detector_settings: dict[str, Any] = field(default_factory=dict)
    crop: dict[str, Any] = field(default_factory=dict)  # facerec.engine.CropSettings as a dict
    embedding_size: int = 512

    def describe(self) -> str:
        """One line: network, weights (and their SHA-256), detector, crop when not facenet-pytorch's."""
        weights = self.weights_file or self.pretrained
        digest = f", sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else ""
        facenet_pytorch = not self.crop.get("margin") and self.crop.get("align", "box") == "box"
        crop = "" if facenet_pytorch else f", crop {self.crop}"
        return f"{self.backbone} with weights {weights}{digest}, detector {self.detector}{crop}"

    def same_vectors(self, other: Provenance) -> bool:
        """Whether `other` makes vectors comparable with these (where the weights file lives is no matter)."""
        return replace(self, weights_file=None, pretrained=None) == replace(
            other, weights_file=None, pretrained=None
        )


@dataclass(frozen=True)
class ModelRequest:
    """The model options a user gave explicitly; None means "as the gallery records, else the default"."""

    backbone: str | None = None
    pretrained: str | None = None
    weights: str | os.PathLike | None = None
    detector: str | None = None
    detector_options: dict[str, Any] | None = None
    margin: float | None = None
    align: str | None = None
    device: str | None = "auto"


def check_request(recorded: Provenance, request: ModelRequest, gallery: Path) -> None:
    """Refuse, before any model loads, options that cannot make vectors comparable with the gallery's."""
    wanted = {
        "backbone": (request.backbone, recorded.backbone),
        "detector": (request.detector, recorded.detector),
        "--margin": (request.margin, recorded.crop.get("margin")),
        "--align": (request.align, recorded.crop.get("align")),
    }
    if request.weights is None:
        wanted["pretrained weights"] = (request.pretrained, recorded.pretrained)
    else:
        wanted["weights"] = (sha256_file(Path(request.weights)), recorded.weights_sha256)
    for what, (asked, made) in wanted.items():
        if asked is not None and asked != made:
            raise mismatch(gallery, recorded, f"{what} {asked}")


def mismatch(gallery: Path, recorded: Provenance, asked: str) -> FacerecError:
    return FacerecError(
        f"{gallery}: this gallery was made with {recorded.describe()}; it cannot be searched or extended "
        f"with {asked}; use another --gallery for these models"
    )


def open_pipeline(
    recorded: Provenance | None, request: ModelRequest, gallery: Path
) -> tuple[Pipeline, Provenance]:
    """The pipeline that embeds as the gallery did (or, for a new gallery, as requested), and its record.

    The record names the weights as this run found them (a moved --weights file, say), same bytes.
    """
    from facerec.engine import CropSettings, Pipeline, create_detector, load_backbone

    if recorded is not None:
        check_request(recorded, request, gallery)
    backbone = _choose(request.backbone, recorded and recorded.backbone, DEFAULT_BACKBONE)
    pretrained = _choose(request.pretrained, recorded and recorded.pretrained, DEFAULT_PRETRAINED)
    weights = request.weights or (recorded.weights_file if recorded else None)
    if weights is not None and not Path(weights).is_file():
        raise FacerecError(
            f"{weights}: the gallery's weights file is missing; pass --weights FILE with a copy"
        )
    loaded = load_backbone(backbone, pretrained=pretrained, weights=weights, device=request.device)
    detector_name = _choose(request.detector, recorded and recorded.detector, DEFAULT_DETECTOR)
    options = request.detector_options if request.detector_options is not None else _options_of(recorded)
    detector = create_detector(detector_name, options)
    crop = CropSettings(
        size=loaded.plugin.input_size,
        margin=_choose(request.margin, recorded and recorded.crop.get("margin"), CropSettings.margin),
        align=_choose(request.align, recorded and recorded.crop.get("align"), CropSettings.align),
    )
    made = Provenance(
        backbone=backbone,
        pretrained=None if weights else pretrained,
        weights_sha256=loaded.weights_sha256,
        weights_file=str(Path(weights).resolve()) if weights else None,
        detector=detector_name,
        detector_settings=dict(detector.settings),
        crop=asdict(crop),
        embedding_size=loaded.plugin.embedding_size,
    )
    if recorded is not None and not recorded.same_vectors(made):
        raise mismatch(gallery, recorded, made.describe())
    return Pipeline(detector=detector, backbone=loaded, crop=crop), made


def _choose(asked: Any, recorded: Any, default: Any) -> Any:
    for value in (asked, recorded):
        if value is not None:
            return value
    return default


def _options_of(recorded: Provenance | None) -> dict[str, Any]:
    """The detector's factory options from its recorded settings (settings name the detector too)."""
    if recorded is None:
        return {}
    return {key: value for key, value in recorded.detector_settings.items() if key != "name"}
