"""Which models made a gallery's vectors: the record every store keeps (facerec.gallery.models builds
those models again).

Vectors from different networks, weights, detectors or input recipes are not comparable, so a gallery
records all of them, and every later `index` or `identify` embeds the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from facerec.pipeline.precision import BF16, FP32, INT8, interchangeable

FACENET_PYTORCH_RECIPE = {"size": 160, "mean": [127.5] * 3, "std": [128.0] * 3, "channels": "RGB"}


@dataclass(frozen=True)
class Provenance:
    """What made a gallery's vectors; identify must embed with exactly the same to compare.

    `recipe` is the backbone's input recipe as used (facerec.contract.parts.InputRecipe.to_json: size, aligner
    and its options, mean, std, channels). `threshold` is the same-person distance of the weights, the
    default of `identify`; it does not change the vectors. `precision` is the backbone's arithmetic
    that made the vectors (facerec.pipeline.precision: fp32, bf16, or int8 for its calibrated quantized
    network; never auto, which is resolved first); galleries written before it was recorded were made
    in fp32. Another precision may extend or search the gallery when its embeddings stand in for these
    (`accepts`: fp32 and bf16 for each other, and for an int8 network measured within cosine 0.9995 of
    fp32); the record keeps the gallery's own. `int8_network` says which int8 network made the vectors
    (the checksum of its cached file, `xxh3_128`, the photos it was calibrated on, `calibration`, its
    `scheme` and its `agreement` with fp32): two calibrations of the same weights on other photos are
    other networks, whose vectors differ; None for fp32 and bf16, and for int8 galleries written before
    it was recorded (their network cannot be checked). `detector_precision` is bf16 when the detector's
    networks ran in bf16 (`--precision bf16` on the gallery's first run), else fp32: their boxes differ.
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
    precision: str = FP32
    int8_network: dict[str, Any] | None = None
    detector_precision: str = FP32

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
        precision = f", precision {self.precision}" if self.precision != FP32 else ""
        if self.int8_network is not None:
            precision += f" (int8 network {self.int8_network['xxh3_128'][:12]})"
        detector = f"{self.detector} (bf16)" if self.detector_precision == BF16 else self.detector
        return (
            f"{self.backbone} with weights {weights}{digest}{precision}, detector {detector}, "
            f"aligner {describe_aligner(self.recipe)}"
        )

    @property
    def cosine_to_fp32(self) -> float | None:
        """The worst cosine of these vectors to FP32's, as measured: 1 at fp32, an int8 network's as
        foreseen from its calibration for faces it was not calibrated on (facerec.pipeline.int8); None
        when not measured (bf16, an int8 network recorded before it was)."""
        if self.precision == FP32:
            return 1.0
        if self.precision == INT8 and self.int8_network is not None:
            return (self.int8_network.get("agreement") or {}).get("cosine_unseen")
        return None

    def accepts(self, precision: str) -> bool:
        """Whether embeddings made at `precision` may be compared with these (facerec.pipeline.precision
        .interchangeable)."""
        return interchangeable(self.precision, self.cosine_to_fp32, precision)

    def same_vectors(self, other: Provenance) -> bool:
        """Whether `other` makes vectors comparable with these (where the weights file lives, and the
        threshold, are no matter; nor where the int8 calibration photos lie; precisions that stand in for
        each other, `accepts`, are the same). An int8 network recorded by one side only cannot be
        compared: the other was written before networks were recorded."""
        ignored = {
            "weights_file": None, "pretrained": None, "threshold": None, "int8_network": None, "precision": FP32
        }  # fmt: skip
        networks = [
            p.int8_network["xxh3_128"] for p in (self, other) if p.precision == INT8 and p.int8_network
        ]
        comparable = self.accepts(other.precision) or other.accepts(self.precision)
        return (
            replace(self, **ignored) == replace(other, **ignored) and comparable and len(set(networks)) <= 1
        )


def same_person_distance(recorded: Provenance | None, made: Provenance) -> float | None:
    """The same-person distance between embeddings for a gallery: the one it recorded, else (galleries
    written before thresholds were recorded, or none yet) what its weights declare now, as `made` says."""
    if recorded is not None and recorded.threshold is not None:
        return recorded.threshold
    return made.threshold


def describe_aligner(recipe: Mapping[str, Any]) -> str:
    options = ", ".join(f"{key}={value}" for key, value in recipe.get("aligner_options", {}).items())
    return f"{recipe.get('aligner')}" + (f" ({options})" if options else "")
