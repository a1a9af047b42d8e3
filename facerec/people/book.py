"""Who the people of a photo library are: persons, the faces each holds, and the owner's own choices.

The state is one JSON-able record a gallery keeps beside its entries (`People.to_json`), written in the
same atomic commit. Faces are named by their face id (facerec.gallery.records.Entry.face_id). A person
is `p0001`, `p0002`, ... in order of creation, with a name or none; a named person's faces carry the name
as their entries' identity, so `identify` answers it.

The owner's choices are kept apart from what clustering found, so no later `facerec cluster` undoes them:
a name stays with its person; a merged person's id is gone (its faces were moved to the one kept, as
choices); a moved face stays where it was put (`chosen`); a forgotten face is never assigned again.
Clustering only assigns faces that have no person and are not forgotten.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from facerec.errors import UsageError

FORMAT = 1
NEW = "new"


@dataclass
class People:
    """See the module docstring."""

    names: dict[str, str | None] = field(default_factory=dict)  # person id -> name
    faces: dict[str, str] = field(default_factory=dict)  # face id -> person id
    chosen: set[str] = field(default_factory=set)  # face ids the owner placed (moves, merges)
    forgotten: set[str] = field(default_factory=set)
    numbered: int = 0  # persons made so far
    known_faces: set[str] = field(default_factory=set)  # every clustered face id now (not stored)

    @classmethod
    def from_json(cls, record: Mapping[str, Any] | None) -> People:
        if not record:
            return cls()
        return cls(
            names=dict(record["names"]),
            faces=dict(record["faces"]),
            chosen=set(record["chosen"]),
            forgotten=set(record["forgotten"]),
            numbered=int(record["numbered"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "names": self.names,
            "faces": dict(sorted(self.faces.items())),
            "chosen": sorted(self.chosen),
            "forgotten": sorted(self.forgotten),
            "numbered": self.numbered,
        }

    def new_person(self) -> str:
        self.numbered += 1
        person = f"p{self.numbered:04d}"
        self.names[person] = None
        return person

    def counts(self) -> Counter:
        return Counter(self.faces.values())

    def members(self, person: str) -> list[str]:
        return sorted(face for face, owner in self.faces.items() if owner == person)

    def identity_of(self, face: str) -> str:
        """The identity a face's entry carries: its person's name, else "" (nobody `identify` answers)."""
        person = self.faces.get(face)
        return (self.names.get(person) or "") if person is not None else ""

    def keep_only(self, faces: Iterable[str]) -> None:
        """Forget everything about faces no longer in the gallery (their photos were removed or changed),
        and persons left without faces unless the owner named them."""
        alive = set(faces)
        self.faces = {face: person for face, person in self.faces.items() if face in alive}
        self.chosen &= alive
        self.forgotten &= alive
        held = set(self.faces.values())
        self.names = {p: n for p, n in self.names.items() if p in held or n is not None}

    # The owner's choices. Each checks its arguments and says what is wrong in one line.

    def name(self, person: str, name: str) -> None:
        self._check_person(person)
        taken = [other for other, held in self.names.items() if held == name and other != person]
        if taken:
            raise UsageError(f"people name: '{name}' is already the name of {taken[0]}; merge them instead")
        self.names[person] = name

    def merge(self, persons: list[str]) -> str:
        """The first person takes the faces of the others, which are gone; it keeps its name, or takes the
        first name among the others when it has none."""
        if len(set(persons)) < 2:
            raise UsageError("people merge: give two or more different people")
        for person in persons:
            self._check_person(person)
        kept, others = persons[0], persons[1:]
        if self.names[kept] is None:
            self.names[kept] = next((self.names[o] for o in others if self.names[o] is not None), None)
        for face, owner in list(self.faces.items()):
            if owner in others:
                self.faces[face] = kept
                self.chosen.add(face)
        for other in others:
            del self.names[other]
        return kept

    def move(self, faces: list[str], to: str) -> str:
        """Move `faces` to person `to`, or to a new person (`new`); returns the person."""
        for face in faces:
            self._check_face(face)
        target = self.new_person() if to == NEW else to
        self._check_person(target)
        for face in faces:
            self.faces[face] = target
            self.chosen.add(face)
            self.forgotten.discard(face)
        return target

    def forget(self, faces: list[str]) -> None:
        """Take `faces` out of every person, for good (not a face, or not wanted)."""
        for face in faces:
            self._check_face(face)
        for face in faces:
            self.faces.pop(face, None)
            self.chosen.discard(face)
            self.forgotten.add(face)

    def _check_person(self, person: str) -> None:
        if person not in self.names:
            raise UsageError(f"no person '{person}' (see `facerec people`)")

    def _check_face(self, face: str) -> None:
        if face not in self.known_faces:
            raise UsageError(f"no face '{face}' among the clustered faces (see `facerec people --json`)")
