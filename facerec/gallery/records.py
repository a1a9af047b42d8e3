"""The records every gallery store keeps and exchanges: an enrolled face, a skipped image, and the
change a write applies to the state it starts from.

A store plugin reads and writes these (through facerec.plugin); the engine plans a `Change` and hands it
to whichever store `--gallery` names, so the planning is written once for every store.
"""

from __future__ import annotations

import hashlib
import re
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
    """One enrolled face: who, from which file (absolute path, SHA-256 of its bytes), where in it.

    A face from a video names its moment in `source` as a media fragment, `clip.mp4#t=SECONDS`, so
    that each view of a clip is an entry of its own; `file` is the path without it.
    """

    identity: str
    source: str
    sha256: str
    box: tuple[float, float, float, float] | None
    enrolled_at: str

    @property
    def file(self) -> str:
        """The file the face was enrolled from."""
        return MOMENT.sub("", self.source)

    @property
    def moment(self) -> str:
        """The `#t=SECONDS` of a video's face (or `#xywh=...` of a clustered face), else ""."""
        return self.source[len(self.file) :]

    @property
    def face_id(self) -> str:
        """The face's stable id: it depends only on the entry's source."""
        digest = hashlib.sha256(self.source.encode("utf-8", "surrogateescape")).hexdigest()
        return digest[:FACE_ID_LENGTH]


# A video's face names its moment, a clustered photo's face its box (W3C media fragments).
MOMENT = re.compile(r"#(?:t=\d+(?:\.\d+)?|xywh=\d+,\d+,\d+,\d+)$")
FACE_ID_LENGTH = 16  # hex digits of the SHA-256 of the source: 64 bits, no collision in any gallery


def in_photo(path: str, box: tuple[float, float, float, float]) -> str:
    """The source of one of several faces of the photo at `path`: its box as a media fragment."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return f"{path}#xywh={max(x1, 0)},{max(y1, 0)},{max(x2 - x1, 1)},{max(y2 - y1, 1)}"


def at_moment(path: str, seconds: float) -> str:
    """The source of a face seen `seconds` into the video at `path` (see Entry)."""
    return f"{path}#t={seconds:.3f}"


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
    one the caller already fitted on the new rows (a trained classifier), used as it is. `people` is
    the new people record (facerec.people.book) to keep beside the entries; None keeps the base's.
    """

    provenance: Provenance
    head: str | None
    head_options: dict[str, Any]
    keep: list[int]
    added: list[Entry] = field(default_factory=list)
    vectors: np.ndarray | None = None
    skipped: list[Skipped] = field(default_factory=list)
    fitted_head: Head | None = None
    people: dict[str, Any] | None = None  # the people record (facerec.people.book); None: the base's

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
