"""The JSON answers about images, built from embedded faces: identification against a gallery view
(the same IdentifiedImage that `facerec identify --json` prints) and verification of two faces."""

from __future__ import annotations

from typing import Any

import torch

from facerec.gallery.identify import IdentifiedImage, decide, named_candidates
from facerec.gallery.provenance import Provenance, same_person_distance
from facerec.pipeline.engine import ImageResult
from facerec.service.errors import ServiceError
from facerec.service.view import View


def identified(view: View, result: ImageResult, threshold: float, top_k: int) -> IdentifiedImage:
    """Every face of `result` named by the view's head, as `facerec identify` names them (never by the
    empty identity of clustered faces whose person has no name yet)."""
    found = (
        named_candidates(view.head, result.embeddings, top_k)
        if view.head is not None and result.faces
        else [[] for _ in result.faces]
    )
    return IdentifiedImage(
        result.path,
        [decide(face, candidates, threshold) for face, candidates in zip(result.faces, found, strict=True)],
    )


def identify_threshold(view: View, made: Provenance) -> float:
    """identify's default: the head's own threshold, else the same-person distance of the weights."""
    found = view.head.default_threshold if view.head is not None else None
    return found if found is not None else distance_threshold(view, made)


def distance_threshold(view: View, made: Provenance) -> float:
    """The same-person distance between embeddings for the view's gallery (facerec.gallery.provenance's rule)."""
    found = same_person_distance(view.provenance, made)
    if found is None:
        raise ServiceError(400, "the gallery's weights declare no same-person distance; pass threshold")
    return found


def verified(first: ImageResult, second: ImageResult, threshold: float) -> dict[str, Any]:
    """Whether the largest faces of two photos are the same person: their distance against `threshold`."""
    for result in (first, second):
        if not result.faces:
            raise ServiceError(400, f"{result.path}: no face found")
    distance = float(torch.linalg.vector_norm(first.embeddings[0] - second.embeddings[0]))
    return {
        "distance": distance,
        "threshold": threshold,
        "same": distance <= threshold,
        "faces": [first.faces[0].to_json(), second.faces[0].to_json()],
    }
