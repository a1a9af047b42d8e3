"""Enrolling one face and deleting faces over HTTP, through the same atomic gallery versions as
`facerec index`.

Every edit holds the gallery's write lock (the store's `locked`: one writer at a time, across
processes), reads the current state, and commits its change through the store (for a folder gallery, a
whole new version built beside the old, fsync'd, switched to with one rename): a kill at any moment
leaves the old state or the new one. An edit waits up to LOCK_WAIT seconds for another process's write (a `facerec index` run,
another server) before answering 503. The server calls these functions from one thread only.

An enrolled photo is kept as `<sha256>.<format>` in the gallery's uploads folder (uploads_folder: the one
`facerec serve --uploads DIR` names, else the store's own, else none and enrolling is refused), and that
path is the entry's source: like the photos of an indexed folder, it lets `facerec gallery --repair` embed
it again if the vectors are damaged, and a later re-index with other models find it. `facerec index DIR` leaves
these entries alone (they are not in DIR). The version is written first and the photo after, both
before the 201: a kill between them leaves an enrolled face whose photo is missing (repair cannot
rebuild that one face), never a photo without its face or a folder `locked` refuses. Photos that no
entry of the new version names are removed after each edit.

A deleted face that came from an indexed folder is remembered as skipped, with its content hash, so
that the next `facerec index` of that folder does not enroll it again while the file is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from facerec.atomic import write_atomically
from facerec.contract.faces import Face
from facerec.errors import GalleryBusy
from facerec.gallery.enroll import head_choice
from facerec.gallery.names import NameRefused, identity_name
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, now, unchanged
from facerec.service.errors import ServiceError
from facerec.service.view import check_models

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Store

UPLOADS = "uploads"
STORED = re.compile(r"\.?[0-9a-f]{64}\.[a-z0-9]+(\.\w+\.tmp)?")  # a photo kept, or its temporary file
LOCK_WAIT = 30.0  # seconds an edit waits for another process's write before answering 503
LOCK_POLL = 0.05
DELETED = "deleted through facerec serve"


def check_identity(name: str) -> str:
    """`name` in NFC when it can name an identity, under the rule of `facerec index`'s folder names
    (facerec.gallery.names), so that a name given over HTTP and a folder name mean one identity;
    ServiceError 400 with the reason when it cannot."""
    try:
        return identity_name(name)
    except NameRefused as refused:
        raise ServiceError(400, str(refused)) from None


@dataclass(frozen=True)
class Enrolled:
    """An enrolled face; `created` is False when the same photo was already enrolled under this name."""

    entry: Entry
    created: bool

    def to_json(self) -> dict:
        return {"identity": self.entry.identity, "face_id": self.entry.face_id, "box": list(self.entry.box)}


def uploads_folder(store: Store, chosen: Path | None = None) -> Path | None:
    """Where enrolled photos are kept: `chosen` (`serve --uploads DIR`) when given; else the store's own
    folder for them, `uploads/` inside a folder gallery or the store's `uploads` attribute (Milvus Lite
    has one inside its database); None for a store with none (a database server): never the working
    directory, which changes with how the server is started. Photos no entry names are deleted from it,
    so it belongs to one gallery."""
    if chosen is not None:
        return Path(chosen).absolute()
    own = getattr(store, "uploads", None)
    if own is not None:
        return Path(own)
    folder = getattr(store, "path", None)
    return Path(folder).absolute() / UPLOADS if folder is not None else None


def _uploads_needed(store: Store) -> ServiceError:
    return ServiceError(
        400,
        f"{store.location}: this gallery has no folder for enrolled photos; start facerec serve with "
        "--uploads DIR to enroll",
    )


def enroll(
    store: Store,
    made: Provenance,
    identity: str,
    data: bytes,
    kind: str,
    face: Face,
    vector: torch.Tensor,
    *,
    uploads: Path | None = None,
) -> Enrolled:
    """Add `face` of the photo `data` (its `vector` embedded by the `made` models) under `identity`;
    `kind` is the photo's format (JPEG, PNG, ...); the photo is kept in uploads_folder(store, uploads)."""
    sha256 = hashlib.sha256(data).hexdigest()
    uploads = uploads_folder(store, uploads)
    if uploads is None:
        raise _uploads_needed(store)
    photo = uploads / f"{sha256}.{kind.lower()}"
    with _writing(store):
        snapshot = store.read()
        try:
            entries = snapshot.entries() if snapshot else []
            enrolled = _enrolled_before(entries, str(photo), identity)
            if enrolled is None:
                box = tuple(float(v) for v in face.box)
                enrolled = Enrolled(Entry(identity, str(photo), sha256, box, now()), created=True)
                entries = _add(store, snapshot, made, entries, enrolled.entry, vector)
        finally:
            if snapshot is not None:
                snapshot.close()
        _keep_photo(photo, data)
        _remove_unnamed_photos(uploads, entries)
    return enrolled


def _enrolled_before(entries: list[Entry], source: str, identity: str) -> Enrolled | None:
    """The entry of this very photo, when it is enrolled already; ServiceError 409 under another name."""
    same = next((entry for entry in entries if entry.source == source), None)
    if same is not None and same.identity != identity:
        raise ServiceError(409, f"this photo is already enrolled as face {same.face_id} of {same.identity!r}")
    return None if same is None else Enrolled(same, created=False)


def _add(
    store: Store, snapshot: GalleryState | None, made: Provenance, entries: list[Entry], entry: Entry, vector
) -> list[Entry]:
    """Commit the state with `entry` added; returns its entries."""
    vector = vector.numpy().astype(np.float32)[None]
    if snapshot is None:
        head, options = head_choice(store, None, None, None)
        change = Change(made, head, options, keep=[], added=[entry], vectors=vector)
    else:
        check_models(store.location, snapshot.provenance, made)
        change = replace(unchanged(snapshot), added=[entry], vectors=vector)
    store.commit(snapshot, change)
    return [*entries, entry]


def delete(store: Store, identity: str, face: str | None = None, *, uploads: Path | None = None) -> None:
    """Delete face `face` of `identity`, or (None) every face of it; ServiceError 404 when not there.
    Photos of uploads_folder(store, uploads) that no entry names any more are deleted."""

    def gone(entry: Entry) -> bool:
        return entry.identity == identity and face in (None, entry.face_id)

    uploads = uploads_folder(store, uploads)
    with _writing(store):
        snapshot = store.read()
        if snapshot is None:
            raise _not_found(identity, face)
        try:
            entries = _remove(store, uploads, snapshot, gone)
        finally:
            snapshot.close()
        if entries is None:
            raise _not_found(identity, face)
        _remove_unnamed_photos(uploads, entries)


def _remove(
    store: Store, uploads: Path | None, snapshot: GalleryState, gone: Callable[[Entry], bool]
) -> list[Entry] | None:
    """Commit the state without the entries `gone` selects; its entries, or None if none was selected."""
    entries = snapshot.entries()
    kept = [row for row, entry in enumerate(entries) if not gone(entry)]
    if len(kept) == len(entries):
        return None
    remembered = [
        Skipped(entry.source, entry.sha256, DELETED)
        for entry in entries
        if gone(entry) and (uploads is None or not Path(entry.source).is_relative_to(uploads))
    ]
    skipped = [s for s in snapshot.skipped() if s.source not in {r.source for r in remembered}] + remembered
    store.commit(snapshot, replace(unchanged(snapshot), keep=kept, skipped=skipped))
    return [entries[row] for row in kept]


def _not_found(identity: str, face: str | None) -> ServiceError:
    what = f"no face {face!r} of identity {identity!r}" if face else f"no identity {identity!r}"
    return ServiceError(404, f"{what} in this gallery")


def _writing(store: Store) -> contextlib.ExitStack:
    """Hold the gallery's write lock, waiting up to LOCK_WAIT seconds for another process's write."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(store.locked())
            return stack
        except GalleryBusy:
            if time.monotonic() > deadline:
                raise busy(store) from None
        time.sleep(LOCK_POLL)


def busy(store: Store) -> ServiceError:
    """The 503 of an edit that waited LOCK_WAIT seconds for another process's write."""
    return ServiceError(
        503,
        f"{store.location}: another process has been writing the gallery for {LOCK_WAIT:.0f} s; try again later",
        {"Retry-After": "5"},
    )


def _keep_photo(photo: Path, data: bytes) -> None:
    """Store the enrolled photo durably (written to a temporary file, fsync'd, renamed) unless it is there."""
    if photo.is_file() and photo.stat().st_size == len(data):
        return
    photo.parent.mkdir(parents=True, exist_ok=True)

    def write(out) -> None:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())

    write_atomically(photo, write)
    folder = os.open(photo.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _remove_unnamed_photos(uploads: Path | None, entries: list[Entry]) -> None:
    """Delete the stored photos (and leftovers of killed writes) that no entry names any more; files
    not named as this module names them are left alone (--uploads may name a folder holding others)."""
    if uploads is None or not uploads.is_dir():
        return
    named = {Path(entry.source).name for entry in entries}  # photos are named by content: no clash
    for child in uploads.iterdir():
        if child.name not in named and STORED.fullmatch(child.name):
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
