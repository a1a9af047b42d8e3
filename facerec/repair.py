"""What of a damaged gallery a write can use, and what it must rebuild.

`facerec index` and `facerec gallery --repair` start every write from `open_base`: the newest version
whose entries can be read (facerec.gallery.recover: CURRENT's, else the newest older one). Its vectors
are used when intact; when they are not, every entry is embedded again from its photo if the photo is
still there with the bytes it had, and named as lost if not. Its head is used when it and the vectors
are intact, else fitted again on the vectors. The write that follows is a new, intact current version:
nothing enrolled whose photo is still on disk is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerec import gallery as store
from facerec.gallery import Entry, Skipped, Snapshot
from facerec.images import path_problem
from facerec.weights import sha256_file

if TYPE_CHECKING:
    from facerec.parts import Head

SHOWN_LOST = 3  # lost photos named in the one line that reports them


@dataclass
class Base:
    """What a write starts from: a gallery version (None for a new gallery) and what of it is usable."""

    snapshot: Snapshot | None
    problem: str | None = None  # what is wrong with the gallery, one line; None when it is intact
    rebuild: list[Entry] = field(default_factory=list)  # vectors lost, photo still there: embed again
    lost: list[Entry] = field(default_factory=list)  # vectors lost with their photo

    @property
    def version(self) -> str | None:
        return self.snapshot.version if self.snapshot else None

    @property
    def vectors_usable(self) -> bool:
        return self.snapshot is not None and "vectors" not in self.snapshot.damage

    def entries(self) -> list[Entry]:
        """The entries whose vectors can be used, in vector order."""
        return self.snapshot.entries() if self.vectors_usable else []

    def vectors(self, width: int) -> np.ndarray:
        """Their (N, `width`) vectors."""
        return self.snapshot.vectors() if self.vectors_usable else np.zeros((0, width), np.float32)

    def skipped(self) -> list[Skipped]:
        return self.snapshot.skipped() if self.snapshot else []

    def head(self) -> Head | None:
        """The version's fitted head when it and the vectors it was fitted on are intact."""
        if self.snapshot is None or self.snapshot.damage:
            return None
        return self.snapshot.load_head()

    def describe(self, gallery: Path) -> str:
        """One line: what is wrong, and what the write will rebuild."""
        if not self.vectors_usable:
            work = "embedding the enrolled photos again and fitting the head"
        else:
            work = (
                "fitting the head again on the vectors"
                if "head" in self.snapshot.damage
                else "making it current"
            )
        return f"{gallery}: {self.problem}; {work}"

    def describe_lost(self, gallery: Path) -> str:
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


def open_base(gallery: Path, folder: Path | None, full: bool = False) -> Base:
    """The newest readable version of `gallery` and what of it must be rebuilt; call with the lock held.

    Entries under `folder` (being indexed) are left to the scan of that folder, which finds their photos.
    """
    snapshot, problem = store.recover(gallery, full)
    base = Base(snapshot, problem)
    if snapshot is not None and not base.vectors_usable:
        for entry in snapshot.entries():
            if folder is None or not Path(entry.source).is_relative_to(folder):
                (base.rebuild if _unchanged(entry) else base.lost).append(entry)
    return base


def _unchanged(entry: Entry) -> bool:
    """Whether the entry's photo is still there with the bytes it was enrolled from."""
    try:
        return path_problem(entry.source) is None and sha256_file(Path(entry.source)) == entry.sha256
    except OSError:  # unreadable now: as good as gone
        return False
