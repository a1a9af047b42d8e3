"""What of a damaged gallery a write can use, and what it must rebuild.

`facerec index` and `facerec gallery --repair` start every write from `open_base`: the newest version
whose entries can be read (the store's `recover`; for the local store CURRENT's version, else the newest
older one), every file a write carries over checked. Its vectors are used when intact; when they are
not, every entry is embedded again from its photo if the photo is still there with the bytes it had,
and named as lost if not. When only some rows are damaged (the local store checks vectors.npy by blocks
of 1 MiB), the store's state leaves them out (`dropped`) and only those entries are embedded again. Its
head is used when it and the vectors are intact, else fitted again on the vectors. The write that
follows is a new, intact current version: nothing enrolled whose photo is still on disk is lost, and
nothing damaged is copied into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerec.gallery.records import Entry, Skipped
from facerec.pipeline.images import path_problem
from facerec.pipeline.weights import sha256_file

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Store

SHOWN_LOST = 3  # lost photos named in the one line that reports them


@dataclass
class Base:
    """What a write starts from: a gallery version (None for a new gallery) and what of it is usable."""

    snapshot: GalleryState | None
    problem: str | None = None  # what is wrong with the gallery, one line; None when it is intact
    rebuild: list[Entry] = field(default_factory=list)  # vectors lost, photo still there: embed again
    lost: list[Entry] = field(default_factory=list)  # vectors lost with their photo
    _entries: list[Entry] | None = field(default=None, repr=False)

    @property
    def version(self) -> str | None:
        return self.snapshot.version if self.snapshot else None

    @property
    def vectors_usable(self) -> bool:
        return self.snapshot is not None and "vectors" not in self.snapshot.damage

    def entries(self) -> list[Entry]:
        """The entries whose vectors can be used, in vector order (read once: a write asks often)."""
        if self._entries is None:
            self._entries = self.snapshot.entries() if self.vectors_usable else []
        return self._entries

    def vectors(self, rows: list[int], width: int) -> np.ndarray:
        """The (len(rows), `width`) vectors of those rows of `entries()`."""
        if not rows:
            return np.zeros((0, width), np.float32)
        return np.asarray(self.snapshot.vectors(rows), dtype=np.float32)

    def skipped(self) -> list[Skipped]:
        return self.snapshot.skipped() if self.snapshot else []

    def describe(self, gallery: str) -> str:
        """One line: what is wrong, and what the write will rebuild."""
        dropped = len(getattr(self.snapshot, "dropped", ()))
        if not self.vectors_usable:
            work = "embedding the enrolled photos again and fitting the head"
        elif dropped:
            work = f"embedding the photos of those {dropped} faces again and fitting the head"
        else:
            work = (
                "fitting the head again on the vectors"
                if "head" in self.snapshot.damage
                else "making it current"
            )
        return f"{gallery}: {self.problem}; {work}"

    def describe_lost(self, gallery: str) -> str:
        """One line naming the faces that cannot be rebuilt (their photos are gone or changed)."""
        shown = ", ".join(entry.source for entry in self.lost[:SHOWN_LOST])
        more = f" and {len(self.lost) - SHOWN_LOST} more" if len(self.lost) > SHOWN_LOST else ""
        return (
            f"{gallery}: {len(self.lost)} enrolled faces cannot be rebuilt, their photos are gone or "
            f"changed: {shown}{more}"
        )

    def close(self) -> None:
        if self.snapshot is not None:
            self.snapshot.close()


def open_base(store: Store, folder: Path | None, full: bool = False) -> Base:
    """The newest readable state of `store` and what of it must be rebuilt; call with the lock held.

    Entries under `folder` (being indexed) are left to the scan of that folder, which finds their photos.
    """
    snapshot, problem = store.recover(full)
    base = Base(snapshot, problem)
    if snapshot is not None:
        damaged = snapshot.entries() if not base.vectors_usable else getattr(snapshot, "dropped", [])
        for entry in damaged:
            if folder is None or not Path(entry.source).is_relative_to(folder):
                (base.rebuild if _unchanged(entry) else base.lost).append(entry)
    return base


def _unchanged(entry: Entry) -> bool:
    """Whether the entry's photo is still there with the bytes it was enrolled from."""
    try:
        return path_problem(entry.file) is None and sha256_file(Path(entry.file)) == entry.sha256
    except OSError:  # unreadable now: as good as gone
        return False
