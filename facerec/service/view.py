"""The gallery as the server answers from it: the current version's head and faces, kept in memory and
replaced when another version becomes current.

Any writer may make a new version: this server's enrollments, another `facerec serve` on the same
gallery, a `facerec index` run. Before each request the server asks the store for the current version's
name (for a folder gallery, CURRENT: one short file); when it names another version than the one in
memory, that version is read and checked and replaces it. Nothing of a version is read lazily afterwards: a writer deletes versions older than
the one before the current, and a view must not depend on files that may go.

Faces are named by `face_id`, derived from the entry's source (unique in a gallery), so the same face
keeps its id across versions, processes and restarts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facerec.errors import FacerecError
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Entry

if TYPE_CHECKING:
    from facerec.contract.parts import Head, Store


def face_json(entry: Entry) -> dict[str, Any]:
    """One face of GET /v1/identities/{identity}."""
    return {
        "face_id": entry.face_id,
        "box": None if entry.box is None else list(entry.box),
        "source": entry.source,
        "added": entry.enrolled_at,
    }


@dataclass(frozen=True)
class View:
    """One gallery version in memory (version None: nothing enrolled yet)."""

    version: str | None = None
    head: Head | None = None
    provenance: Provenance | None = None
    faces: dict[str, list[Entry]] = field(default_factory=dict)  # by identity, in enrollment order
    by_face: dict[str, Entry] = field(default_factory=dict)  # every entry by its face id

    def identities(self) -> dict[str, int]:
        """Face counts by identity, without the empty one: the clustered faces of people nobody named
        yet (facerec.people) are nobody `identify` answers, as `facerec gallery` leaves them out."""
        return {name: len(entries) for name, entries in sorted(self.faces.items()) if name}

    @property
    def face_count(self) -> int:
        """Faces of the identities (those of people not named yet left out, as `identities` does)."""
        return sum(self.identities().values())


class ServedGallery:
    """The gallery at `path`, as of the last request; `made` is the provenance of the loaded models,
    which every version must share (vectors of other models cannot be compared with theirs)."""

    def __init__(self, store: Store, made: Provenance) -> None:
        self.store = store
        self.made = made
        self._view = View()
        self._lock = threading.Lock()

    def current(self) -> View:
        """The view of the version current now; reads files, so call it off the event loop."""
        if self._is_loaded(self._current_name()):
            return self._view
        with self._lock:  # one thread loads a new version; the others wait for it, then use it
            if not self._is_loaded(self._current_name()):
                self._view = self._load()
        return self._view

    def _is_loaded(self, name: str | None) -> bool:
        """Whether the view in memory is version `name` (None, no version, is always checked again)."""
        return name is not None and name == self._view.version

    def _current_name(self) -> str | None:
        return self.store.current()

    def _load(self) -> View:
        snapshot = self.store.read()
        if snapshot is None:
            return View()
        try:
            check_models(self.store.location, snapshot.provenance, self.made)
            faces: dict[str, list[Entry]] = {}
            entries = snapshot.entries()
            for entry in entries:
                faces.setdefault(entry.identity, []).append(entry)
            by_face = {entry.face_id: entry for entry in entries}
            return View(snapshot.version, snapshot.load_head(), snapshot.provenance, faces, by_face)
        finally:
            snapshot.close()


def check_models(location: str, recorded: Provenance, made: Provenance) -> None:
    """Refuse a gallery version made by other models than the server's (it was rebuilt meanwhile)."""
    if not recorded.same_vectors(made):
        raise FacerecError(
            f"{location}: the gallery is now made with {recorded.describe()}, not the models this server "
            f"loaded ({made.describe()}); restart facerec serve"
        )
