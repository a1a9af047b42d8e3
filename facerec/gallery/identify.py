"""Identifying the faces of photos against a gallery, embedded exactly as the gallery's vectors were."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facerec import defaults
from facerec.contract.faces import Face
from facerec.errors import FacerecError, UsageError
from facerec.gallery.models import ModelRequest, open_pipeline
from facerec.gallery.provenance import same_person_distance
from facerec.gallery.stores import open_store

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Head, Store


@dataclass(frozen=True)
class Identification:
    """One face of a photo: who it is (None beyond the threshold), how far, and the nearest candidates."""

    face: Face
    identity: str | None
    distance: float | None
    candidates: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        """The FACE object of the JSON output with `identity`, `distance` and `candidates`."""
        return {
            **self.face.to_json(),
            "identity": self.identity,
            "distance": self.distance,
            "candidates": [{"identity": name, "distance": distance} for name, distance in self.candidates],
        }


@dataclass
class IdentifiedImage:
    """The faces of one photo, largest first, or why the photo could not be used."""

    path: str
    faces: list[Identification] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.path, "error": self.error}
        return {"image": self.path, "faces": [face.to_json() for face in self.faces]}


class Identifier:
    """A gallery's fitted head with the pipeline that embeds as the gallery did.

    Models load once; `refresh` picks up a newer version of the gallery without reloading them.
    """

    def __init__(self, gallery: str | os.PathLike | Store, request: ModelRequest | None = None) -> None:
        self.store = open_store(gallery)
        self.gallery = self.store.location
        snapshot = _open(self.store)
        try:
            self.pipeline, made = open_pipeline(snapshot.provenance, request or ModelRequest(), self.gallery)
            self.distance_threshold = same_person_distance(snapshot.provenance, made)
            self.version = snapshot.version
            self.head: Head = snapshot.load_head()
        finally:
            snapshot.close()

    def refresh(self) -> None:
        """Load the head of the gallery's current version when it changed since this was built."""
        if self.store.current() == self.version:
            return
        snapshot = _open(self.store)
        try:
            if snapshot.version != self.version:
                self.head, self.version = snapshot.load_head(), snapshot.version
        finally:
            snapshot.close()

    def run(
        self,
        images: Iterable[str | os.PathLike],
        threshold: float | None = None,
        top_k: int = defaults.TOP_K,
    ) -> Iterator[IdentifiedImage]:
        """One result per image, in order; an unreadable image gives a result with `error`."""
        if threshold is None:
            threshold = self.default_threshold()
        for result in self.pipeline.run(images):
            if result.error is not None:
                yield IdentifiedImage(result.path, error=result.error)
                continue
            found = named_candidates(self.head, result.embeddings, top_k) if result.faces else []
            yield IdentifiedImage(
                result.path,
                [
                    decide(face, candidates, threshold)
                    for face, candidates in zip(result.faces, found, strict=True)
                ],
            )

    def default_threshold(self) -> float:
        """The head's own threshold, or, for a head that measures embedding distance (`faiss`), the
        same-person distance of the weights that made the gallery (its provenance)."""
        found = self.head.default_threshold
        if found is None:
            found = self.distance_threshold
        if found is None:
            raise FacerecError(
                f"{self.gallery}: the gallery's weights declare no same-person distance; pass --threshold"
            )
        return found


def named_candidates(head: Head, vectors: Any, top_k: int) -> list[list[tuple[str, float]]]:
    """The head's top-k identities for each vector, leaving out the empty identity: clustered faces of
    people nobody named yet (facerec.people), which `identify` never answers."""
    found = head.search(vectors, top_k + 1)
    return [[(name, distance) for name, distance in candidates if name][:top_k] for candidates in found]


def check_threshold(threshold: float | None) -> None:
    """Refuse a threshold that cannot mean anything: a negative one or NaN leaves every face unknown."""
    if threshold is not None and not threshold >= 0:
        raise UsageError(
            f"--threshold: must be 0 or more (a distance, or a probability for the classifier head), "
            f"not {threshold:g}"
        )


def decide(face: Face, candidates: list[tuple[str, float]], threshold: float) -> Identification:
    if not candidates:
        return Identification(face, None, None, [])
    name, distance = candidates[0]
    return Identification(face, name if distance <= threshold else None, distance, candidates)


def _open(store: Store) -> GalleryState:
    snapshot = store.read()
    if snapshot is None:
        raise FacerecError(
            f"{store.location}: no gallery here; run `facerec index DIR` first or pass --gallery"
        )
    return snapshot
