"""The people of a clustered photo library over HTTP: listed as `facerec people --json` lists them, and
changed by the owner's choices (name, merge, move) exactly as `facerec people` changes them.

Each choice is the People method the CLI calls, applied by facerec.people.library.edit: under the
gallery's write lock, in one commit of the store with the entries renamed (a named person's faces carry
its name, so the served gallery answers it from the next request on, as after an enrollment). An edit
waits up to facerec.service.edits.LOCK_WAIT seconds for another process's write, then answers 503.

What is wrong is told apart before the method runs, inside the same lock (nothing is committed then):
an unknown person or face is 404; a name another person holds is 409 (merge them instead); what else
the method refuses (a merge of fewer than two people) is 400, with the CLI's own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from facerec.errors import GalleryBusy, UsageError
from facerec.people.book import NEW, People
from facerec.people.library import edit, listing
from facerec.service.edits import LOCK_POLL, LOCK_WAIT, busy
from facerec.service.errors import ServiceError

if TYPE_CHECKING:
    from facerec.contract.parts import Store

SAMPLE = 4  # face ids of each person in the list: enough for the page's thumbnails


def records(store: Store) -> list[dict[str, Any]]:
    """The objects `facerec people --json` prints: one per person, then the unassigned faces (also for a
    gallery not written yet, which has no people)."""
    if store.current() is None:
        return [{"person": None, "name": None, "faces": []}]
    return listing(store)


def summary(store: Store) -> list[dict[str, Any]]:
    """GET /v1/people: each person's id, name, number of faces and a few face ids; the unassigned faces
    last, in the same shape with person and name null."""
    return [
        {
            "person": record["person"],
            "name": record["name"],
            "faces": len(record["faces"]),
            "sample": [face["face_id"] for face in record["faces"][:SAMPLE]],
        }
        for record in records(store)
    ]


def person(store: Store, person_id: str) -> dict[str, Any]:
    """GET /v1/people/{id}: the person's object as `facerec people --json` prints it; 404 if none."""
    found = next((r for r in records(store) if r["person"] == person_id), None)
    if found is None:
        raise ServiceError(404, f"no person {person_id!r} in this gallery")
    return found


def name(store: Store, person_id: str, identity: str) -> dict[str, Any]:
    """Name the person (`identity` already through the identity-name rule); its object after."""

    def choice(people: People) -> str:
        _check_person(people, person_id)
        try:
            people.name(person_id, identity)
        except UsageError as taken:  # the person is there: the only refusal left is a name in use
            raise ServiceError(409, str(taken)) from None
        return person_id

    return _apply(store, choice)


def merge(store: Store, persons: list[str]) -> dict[str, Any]:
    """Merge the people into the first, which keeps its name (or takes the first of theirs); its object."""

    def choice(people: People) -> str:
        for each in persons:
            _check_person(people, each)
        return people.merge(persons)

    return _apply(store, choice)


def move(store: Store, face: str, to: str) -> dict[str, Any]:
    """Move one face to person `to`, or to a new person (`new`); the object of the person it went to."""

    def choice(people: People) -> str:
        if face not in people.known_faces:
            raise ServiceError(404, f"no face {face!r} among the clustered faces of this gallery")
        if to != NEW:
            _check_person(people, to)
        return people.move([face], to)

    return _apply(store, choice)


def _check_person(people: People, person_id: str) -> None:
    if person_id not in people.names:
        raise ServiceError(404, f"no person {person_id!r} in this gallery")


def _apply(store: Store, choice: Callable[[People], str]) -> dict[str, Any]:
    """Commit `choice` (which returns the person it changed) through facerec.people.library.edit,
    waiting for another writer's lock as enrollments do; the changed person's object."""
    if store.current() is None:
        raise ServiceError(404, "no people in this gallery: it has no version yet (run `facerec cluster`)")
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            changed = edit(store, choice)
            break
        except GalleryBusy:
            if time.monotonic() > deadline:
                raise busy(store) from None
            time.sleep(LOCK_POLL)
        except UsageError as refused:
            raise ServiceError(400, str(refused)) from None
    return person(store, changed)
