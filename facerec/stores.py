"""What every gallery store shares: its records, the change a write applies, and `--gallery` resolved
to a store.

`--gallery` is a folder path (the `local` store) or `NAME:REST` for a registered store NAME, such as
`milvus:faces.db` or `milvus:http://host:19530#faces`; the store's factory receives REST. A folder whose
name merely contains a colon stays a folder: only registered store names count as schemes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.errors import FacerecError
from facerec.registry import registry

if TYPE_CHECKING:
    from facerec.parts import GalleryState, Head, Store
    from facerec.provenance import Provenance

DEFAULT_GALLERY = Path(".facerec") / "gallery"


def now() -> str:
    """The current UTC time as ISO 8601, as galleries record it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    """One enrolled face: who, from which file (absolute path, SHA-256 of its bytes), where in it."""

    identity: str
    source: str
    sha256: str
    box: tuple[float, float, float, float] | None
    enrolled_at: str


@dataclass(frozen=True)
class Skipped:
    """An image that enrolled nothing, remembered so an unchanged one is not processed again."""

    source: str
    sha256: str
    reason: str


@dataclass
class Change:
    """What a write does to the state it starts from, in the terms every store can apply.

    The new state's rows are the base's rows `keep` (ascending, so they keep their order) followed by
    `added`, whose embeddings are `vectors`; `skipped` is the whole list of images that enrolled nothing.
    `head` and `head_options` name the head (None for a store that searches by itself); `fitted_head` is
    one the caller already fitted on the new rows (a trained classifier), used as it is.
    """

    provenance: Provenance
    head: str | None
    head_options: dict[str, Any]
    keep: list[int]
    added: list[Entry] = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[Skipped] = field(default_factory=list)
    fitted_head: Head | None = None

    def removed(self, count: int) -> list[int]:
        """The rows of a base of `count` rows that this change drops, ascending."""
        kept = set(self.keep)
        return [row for row in range(count) if row not in kept]

    def added_vectors(self, width: int) -> np.ndarray:
        """The embeddings of `added` as (M, `width`) float32."""
        if self.vectors is None or not len(self.added):
            return np.zeros((0, width), np.float32)
        return np.ascontiguousarray(self.vectors, dtype=np.float32)


def unchanged(state: GalleryState) -> Change:
    """A change that keeps every row of `state` as it is (to replace its head, say)."""
    return Change(
        state.provenance,
        state.head_name,
        dict(state.head_options),
        list(range(len(state))),
        skipped=state.skipped(),
    )


def default_location() -> str:
    """`FACEREC_GALLERY`, else `.facerec/gallery` under the working directory."""
    return os.environ.get("FACEREC_GALLERY") or str(DEFAULT_GALLERY)


def open_store(location: str | os.PathLike | Store | None = None) -> Store:
    """The store `location` names (see the module docstring); a Store passes through."""
    if location is not None and not isinstance(location, (str, os.PathLike)):
        return location
    text = os.fspath(location) if location is not None else default_location()
    if not text:
        raise FacerecError("--gallery: empty; give a folder or a store URI such as milvus:faces.db")
    name, colon, rest = text.partition(":")
    if not colon or Path(text).exists() or name not in registry().parts["store"]:
        from facerec.local_store import LocalStore  # a plain folder: no plugin needs loading

        return LocalStore(text)
    return registry().create("store", name, location=rest)
