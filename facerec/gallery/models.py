"""Building again exactly the models that made a gallery's vectors, and refusing what cannot match.

Options a user gives explicitly (`ModelRequest`) must agree with the gallery's record (`Provenance`);
anything else is refused with one line that says what differs, before any model loads. The precision is
the one exception: a gallery may be searched and extended at another precision whose embeddings stand
in for its own (Provenance.accepts: fp32 and bf16, say), so that a gallery indexed on one CPU stays fast
on another; by default (`auto`) the fastest of those this machine runs. An int8 gallery searched at int8
uses the very int8 network that made its vectors, which only loading it can tell
(facerec.pipeline.int8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec import defaults
from facerec.errors import FacerecError, UsageError
from facerec.gallery.provenance import Provenance, describe_aligner
from facerec.pipeline.int8 import cache_path, identity, recorded_photos, weight_bits_of
from facerec.pipeline.precision import AUTO, BF16, FP32, INT8, default_precision
from facerec.pipeline.weights import sha256_file

if TYPE_CHECKING:
    from facerec.pipeline.engine import Pipeline


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
    precision: str | None = None  # fp32, int8, bf16 or auto; None: FACEREC_PRECISION, else auto
    calibration: str | os.PathLike | None = None  # int8 and auto: photos to calibrate on when not cached yet
    photos: tuple[str | os.PathLike, ...] = ()  # auto: the command's own photos, bf16 is checked on a few


def check_request(recorded: Provenance, request: ModelRequest, gallery: Path) -> None:
    """Refuse, before any model loads, options that cannot make vectors comparable with the gallery's."""
    wanted = {
        "backbone": (request.backbone, recorded.backbone),
        "detector": (request.detector, recorded.detector),
        "aligner": (request.aligner, recorded.recipe.get("aligner")),
    }
    if request.precision not in (None, AUTO) and not recorded.accepts(request.precision):
        raise mismatch(gallery, recorded, f"precision {request.precision}")
    if request.weights is None:
        wanted["pretrained weights"] = (request.pretrained, recorded.pretrained)
    else:
        wanted["weights"] = (sha256_file(Path(request.weights)), recorded.weights_sha256)
    for what, (asked, made) in wanted.items():
        if asked is not None and asked != made:
            raise mismatch(gallery, recorded, f"{what} {asked}")
    settings = with_options_added_since(recorded).detector_settings  # what the detector recorded
    other = {k: v for k, v in (request.detector_options or {}).items() if k in settings and settings[k] != v}
    if other:  # options it does not record (a device) do not change the vectors
        raise mismatch(gallery, recorded, f"detector {recorded.detector} -D {other}")
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
    from facerec.pipeline.engine import build_pipeline

    if recorded is not None:
        recorded = with_options_added_since(recorded)
        check_request(recorded, request, gallery)
    weights = request.weights or (recorded.weights_file if recorded else None)
    if weights is not None and not Path(weights).is_file():
        raise FacerecError(
            f"{weights}: the gallery's weights file is missing; pass --weights FILE with a copy"
        )
    recipe = recorded.recipe if recorded else {}
    aligner = _choose(request.aligner, recipe.get("aligner"))
    precision, allowed = _precision(recorded, request)
    network = recorded.int8_network if recorded else None
    photos = recorded_photos(network["calibration"]) if network else None
    pipeline = build_pipeline(
        detector=_choose(request.detector, recorded and recorded.detector, defaults.DETECTOR),
        detector_options=_choose(request.detector_options, _options_of(recorded)),
        backbone=_choose(request.backbone, recorded and recorded.backbone, defaults.BACKBONE),
        aligner=aligner,
        aligner_options=_choose(
            request.aligner_options,
            recipe.get("aligner_options") if aligner == recipe.get("aligner") else None,
        ),
        pretrained=None if weights else _choose(request.pretrained, recorded and recorded.pretrained),
        weights=weights,
        device=request.device,
        precision=precision,
        calibration=photos or request.calibration,  # a gallery's network is made from its own photos
        photos=list(request.photos),
        allowed=allowed,
        detector_precision=recorded.detector_precision if recorded else None,
        int8_weight_bits=weight_bits_of(network["scheme"]) if network and network.get("scheme") else None,
    )
    loaded = pipeline.backbone
    found = _int8_network(recorded, pipeline, gallery, photos)
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
        int8_network=found,
        detector_precision=pipeline.detector_precision,
    )
    if recorded is not None:
        if not recorded.same_vectors(made):
            raise mismatch(gallery, recorded, made.describe() + _other_settings(recorded, made))
        made = replace(made, precision=recorded.precision, int8_network=network or found)  # the gallery's own
    return pipeline, made


def _precision(recorded: Provenance | None, request: ModelRequest) -> tuple[str, list[str] | None]:
    """The precision to build at and, under auto, those it may choose from (None: any). For a gallery:
    the one asked for (check_request refused any it does not accept), else the default when the gallery
    accepts it, else the gallery's own; auto chooses among the precisions the gallery accepts, its own
    first."""
    preferred = request.precision or default_precision()
    if recorded is None:
        return preferred, None
    allowed = [recorded.precision] + [
        p for p in (FP32, BF16) if p != recorded.precision and recorded.accepts(p)
    ]
    if preferred == AUTO:
        return AUTO, allowed
    return (preferred if preferred in allowed else recorded.precision), None


def _int8_network(
    recorded: Provenance | None, pipeline: Pipeline, gallery: Path, photos: list[Path] | None
) -> dict[str, Any] | None:
    """The identity of the pipeline's int8 network (None when it does not run at int8), built now (from
    its cache, or calibrated: for a gallery that recorded its network, on the gallery's calibration
    `photos` when they are still there, which makes the same network on the same kind of CPU). A gallery
    is searched only with the very network that made its vectors: any other is refused in one line."""
    loaded = pipeline.backbone
    if loaded.precision != INT8:
        return None
    wanted = recorded.int8_network if recorded is not None and recorded.precision == INT8 else None
    found = identity(loaded.inference)
    if wanted is None or found["xxh3_128"] == wanted["xxh3_128"]:
        return found
    cache = cache_path(loaded, pipeline.recipe, loaded.int8_weight_bits)
    if "scheme" not in wanted:  # recorded by a facerec whose cache was a torch.save file
        advice = "that network came from an earlier facerec's int8 cache, which this one does not read"
    elif [p["sha256"] for p in found["calibration"]] == [p["sha256"] for p in wanted["calibration"]]:
        advice = "calibrating on the gallery's own photos gives another network on this machine"
    elif photos is not None:
        advice = f"delete {cache} to calibrate it again on the gallery's {len(photos)} calibration photos"
    else:
        advice = "the gallery's calibration photos are gone or changed; put back the cache file that made it"
    raise FacerecError(
        f"{gallery}: its vectors were made by the int8 network {wanted['xxh3_128'][:12]}, but {cache} holds "
        f"another ({found['xxh3_128'][:12]}, calibrated on {len(found['calibration'])} photos); {advice}, "
        "or index the photos into a new --gallery"
    )


def _choose(*values: Any) -> Any:
    """The first value that is not None (the user's, then the gallery's, then the default)."""
    return next((value for value in values if value is not None), None)


def _other_settings(recorded: Provenance, made: Provenance) -> str:
    """The detector settings `made` has otherwise than `recorded`, for the mismatch message (the
    descriptions name the detector, not its settings)."""
    other = {
        key: value
        for key, value in made.detector_settings.items()
        if recorded.detector_settings.get(key, ...) != value
    }
    return f" (detector settings {other})" if other else ""


def with_options_added_since(recorded: Provenance) -> Provenance:
    """`recorded` with the detector options added since it was written at the values that detect as it
    did (the detector's `recorded_before`), so that the gallery is rebuilt and compared as it was made."""
    from facerec.contract.registry import registry

    try:
        factory = registry().factory("detector", recorded.detector)
    except UsageError:
        return recorded  # not installed here: building the pipeline says so
    added = getattr(factory, "recorded_before", {})
    return replace(recorded, detector_settings={**added, **recorded.detector_settings})


def _options_of(recorded: Provenance | None) -> dict[str, Any] | None:
    """The detector's factory options from its recorded settings (settings name the detector too)."""
    if recorded is None:
        return None
    return {key: value for key, value in recorded.detector_settings.items() if key != "name"}
