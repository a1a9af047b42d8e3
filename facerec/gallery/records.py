"""The records every gallery store keeps and exchanges: an enrolled face, a skipped image, and the
change a write applies to the state it starts from.

A store plugin reads and writes these (through facerec.plugin); the engine plans a `Change` and hands it
to whichever store `--gallery` names, so the planning is written once for every store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Head
    from facerec.gallery.provenance import Provenance


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
