"""Which models made a gallery's vectors, and building exactly those again.

Vectors from different networks, weights, detectors or input recipes are not comparable, so a gallery
records all of them (`Provenance`) and every later `index` or `identify` embeds the same way. Options a
user gives explicitly (`ModelRequest`) must agree with the record; anything else is refused with one
line that says what differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.errors import FacerecError
from facerec.weights import sha256_file

if TYPE_CHECKING:
    from facerec.engine import Pipeline

DEFAULT_BACKBONE = "inception-resnet"
DEFAULT_DETECTOR = "mtcnn"
FACENET_PYTORCH_RECIPE = {"size": 160, "mean": [127.5] * 3, "std": [128.0] * 3, "channels": "RGB"}


@dataclass(frozen=True)
class Provenance:
    """What made a gallery's vectors; identify must embed with exactly the same to compare.

    `recipe` is the backbone's input recipe as used (facerec.parts.InputRecipe.to_json: size, aligner
    and its options, mean, std, channels). `threshold` is the same-person distance of the weights, the
    default of `identify`; it does not change the vectors. `precision` is the backbone's arithmetic
    (facerec.precision: fp32, or int8 for its calibrated quantized network); galleries written before it
    was recorded were made in fp32.
    """

    backbone: str
    pretrained: str | None
    weights_sha256: str | None  # None only for untrained (seeded) weights
    weights_file: str | None  # the --weights file, when the weights were not a named pretrained set
    detector: str
    detector_settings: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 512
    threshold: float | None = None
    precision: str = "fp32"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Provenance:
        """A provenance as a gallery stored it, galleries written before input recipes included: their
        `crop` (size, margin, align) was facenet-pytorch's standardization with the box or landmarks
        aligner."""
        record = dict(record)
        crop = record.pop("crop", None)
        if crop is not None and "recipe" not in record:
            landmarks = crop.get("align") == "landmarks"
            record["recipe"] = {
                **FACENET_PYTORCH_RECIPE,
                "size": crop.get("size", 160),
                "aligner": "landmarks" if landmarks else "box",
                "aligner_options": {} if landmarks else {"margin": float(crop.get("margin", 0))},
            }
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})

    def describe(self) -> str:
        """One line: network, weights (and their SHA-256), precision when not fp32, detector, aligner."""
        weights = self.weights_file or self.pretrained
        digest = f", sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else ""
        precision = f", precision {self.precision}" if self.precision != "fp32" else ""
        return (
            f"{self.backbone} with weights {weights}{digest}{precision}, detector {self.detector}, "
            f"aligner {describe_aligner(self.recipe)}"
        )

    def same_vectors(self, other: Provenance) -> bool:
        """Whether `other` makes vectors comparable with these (where the weights file lives, and the
        threshold, are no matter)."""
        ignored = {"weights_file": None, "pretrained": None, "threshold": None}
        return replace(self, **ignored) == replace(other, **ignored)


def same_person_distance(recorded: Provenance | None, made: Provenance) -> float | None:
    """The same-person distance between embeddings for a gallery: the one it recorded, else (galleries
    written before thresholds were recorded, or none yet) what its weights declare now, as `made` says."""
    if recorded is not None and recorded.threshold is not None:
        return recorded.threshold
    return made.threshold


def describe_aligner(recipe: Mapping[str, Any]) -> str:
    options = ", ".join(f"{key}={value}" for key, value in recipe.get("aligner_options", {}).items())
    return f"{recipe.get('aligner')}" + (f" ({options})" if options else "")


@dataclass(frozen=True)
class ModelRequest:
    """The model options a user gave explicitly; None means "as the gallery records, else the default"."""

    backbone: str | None = None
    pretrained: str | None = None
    weights: str | os.PathLike | None = None
    detector: str | None = None
    detector_options: dict[str, Any] | None = None
    aligner: str | None = None
    aligner_options: dict[str, Any] | None = None
    device: str | None = "auto"
    precision: str | None = None
    calibration: str | os.PathLike | None = None  # int8: photos to calibrate on when not cached yet


def check_request(recorded: Provenance, request: ModelRequest, gallery: Path) -> None:
    """Refuse, before any model loads, options that cannot make vectors comparable with the gallery's."""
    wanted = {
        "backbone": (request.backbone, recorded.backbone),
        "detector": (request.detector, recorded.detector),
        "aligner": (request.aligner, recorded.recipe.get("aligner")),
        "precision": (request.precision, recorded.precision),
    }
    if request.weights is None:
        wanted["pretrained weights"] = (request.pretrained, recorded.pretrained)
    else:
        wanted["weights"] = (sha256_file(Path(request.weights)), recorded.weights_sha256)
    for what, (asked, made) in wanted.items():
        if asked is not None and asked != made:
            raise mismatch(gallery, recorded, f"{what} {asked}")
    options = recorded.recipe.get("aligner_options", {})
    if request.aligner_options is not None and {**options, **request.aligner_options} != options:
        asked = {"aligner": recorded.recipe.get("aligner"), "aligner_options": request.aligner_options}
        raise mismatch(gallery, recorded, f"aligner {describe_aligner(asked)}")


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
    from facerec.engine import build_pipeline

    if recorded is not None:
        check_request(recorded, request, gallery)
    weights = request.weights or (recorded.weights_file if recorded else None)
    if weights is not None and not Path(weights).is_file():
        raise FacerecError(
            f"{weights}: the gallery's weights file is missing; pass --weights FILE with a copy"
        )
    recipe = recorded.recipe if recorded else {}
    aligner = _choose(request.aligner, recipe.get("aligner"))
    pipeline = build_pipeline(
        detector=_choose(request.detector, recorded and recorded.detector, DEFAULT_DETECTOR),
        detector_options=_choose(request.detector_options, _options_of(recorded)),
        backbone=_choose(request.backbone, recorded and recorded.backbone, DEFAULT_BACKBONE),
        aligner=aligner,
        aligner_options=_choose(
            request.aligner_options,
            recipe.get("aligner_options") if aligner == recipe.get("aligner") else None,
        ),
        pretrained=None if weights else _choose(request.pretrained, recorded and recorded.pretrained),
        weights=weights,
        device=request.device,
        precision=_choose(request.precision, recorded and recorded.precision, "fp32"),
        calibration=request.calibration,
    )
    loaded = pipeline.backbone
    made = Provenance(
        backbone=loaded.name,
        pretrained=loaded.pretrained,
        weights_sha256=loaded.weights_sha256,
        weights_file=str(Path(weights).resolve()) if weights else None,
        detector=pipeline.detector_name,
        detector_settings=dict(pipeline.detector.settings),
        recipe=pipeline.recipe.to_json(),
        embedding_size=loaded.plugin.embedding_size,
        threshold=loaded.threshold,
        precision=loaded.precision,
    )
    if recorded is not None and not recorded.same_vectors(made):
        raise mismatch(gallery, recorded, made.describe())
    return pipeline, made


def _choose(*values: Any) -> Any:
    """The first value that is not None (the user's, then the gallery's, then the default)."""
    return next((value for value in values if value is not None), None)


def _options_of(recorded: Provenance | None) -> dict[str, Any] | None:
    """The detector's factory options from its recorded settings (settings name the detector too)."""
    if recorded is None:
        return None
    return {key: value for key, value in recorded.detector_settings.items() if key != "name"}
