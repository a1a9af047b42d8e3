"""Enrolling one face and deleting faces over HTTP, through the same atomic gallery versions as
`facerec index`.

Every edit holds the gallery's write lock (facerec.gallery.locked: one writer at a time, across
processes), reads the current version, and writes a whole new one with facerec.gallery.write (built
beside the old, fsync'd, switched to with one rename): a kill at any moment leaves the old version or
the new one. An edit waits up to LOCK_WAIT seconds for another process's write (a `facerec index` run,
another server) before answering 503. The server calls these functions from one thread only.

An enrolled photo is kept in the gallery folder, as `uploads/<sha256>.<format>`, and that path is the
entry's source: like the photos of an indexed folder, it lets `facerec gallery --repair` embed it again
if the vectors are damaged, and a later re-index with other models find it. `facerec index DIR` leaves
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
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerec import gallery as store
from facerec.atomic import write_atomically
from facerec.enroll import DEFAULT_HEAD
from facerec.errors import FacerecError
from facerec.faces import Face
from facerec.gallery import Contents, Entry, Skipped, Snapshot
from facerec.provenance import Provenance
from facerec.registry import registry
from facerec.service.errors import ServiceError
from facerec.service.view import check_models, face_id

UPLOADS = "uploads"
LOCK_WAIT = 30.0  # seconds an edit waits for another process's write before answering 503
LOCK_POLL = 0.05
BUSY = "another facerec process is writing this gallery"  # facerec.gallery.locked's refusal
DELETED = "deleted through facerec serve"
MAX_NAME_BYTES = 255  # a file name's limit on every common file system: a name can become a folder


def check_identity(name: str) -> str:
    """`name` when it can name an identity (as a folder of `facerec index` could); ServiceError 400.

    Any Unicode is kept as given; refused are the empty name, `.` and `..`, path separators, control
    characters, surrounding spaces and names longer than MAX_NAME_BYTES bytes of UTF-8.
    """
    problem = None
    if not name or name in (".", ".."):
        problem = "must be a name, not empty, '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "must not contain '/' or '\\'"
    elif any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        problem = "must not contain control characters"
    elif name != name.strip():
        problem = "must not start or end with spaces"
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"must be at most {MAX_NAME_BYTES} bytes of UTF-8"
    if problem is not None:
        raise ServiceError(400, f"identity {name!r}: {problem}")
    return name


@dataclass(frozen=True)
class Enrolled:
    """An enrolled face; `created` is False when the same photo was already enrolled under this name."""

    entry: Entry
    created: bool

    def to_json(self) -> dict:
        return {"identity": self.entry.identity, "face_id": face_id(self.entry), "box": list(self.entry.box)}


def enroll(
    gallery: Path,
    made: Provenance,
    identity: str,
    data: bytes,
    kind: str,
    face: Face,
    vector: torch.Tensor,
) -> Enrolled:
    """Add `face` of the photo `data` (its `vector` embedded by the `made` models) under `identity`;
    `kind` is the photo's format (JPEG, PNG, ...)."""
    sha256 = hashlib.sha256(data).hexdigest()
    photo = (Path(gallery) / UPLOADS / f"{sha256}.{kind.lower()}").absolute()
    with _writing(gallery):
        snapshot = store.read(gallery)
        try:
            entries = snapshot.entries() if snapshot else []
            enrolled = _enrolled_before(entries, str(photo), identity)
            if enrolled is None:
                box = tuple(float(v) for v in face.box)
                enrolled = Enrolled(Entry(identity, str(photo), sha256, box, store.now()), created=True)
                entries = _add(gallery, snapshot, made, entries, enrolled.entry, vector)
        finally:
            if snapshot is not None:
                snapshot.close()
        _keep_photo(photo, data)
        _remove_unnamed_photos(gallery, entries)
    return enrolled


def _enrolled_before(entries: list[Entry], source: str, identity: str) -> Enrolled | None:
    """The entry of this very photo, when it is enrolled already; ServiceError 409 under another name."""
    same = next((entry for entry in entries if entry.source == source), None)
    if same is not None and same.identity != identity:
        raise ServiceError(
            409, f"this photo is already enrolled as face {face_id(same)} of {same.identity!r}"
        )
    return None if same is None else Enrolled(same, created=False)


def _add(
    gallery: Path, snapshot: Snapshot | None, made: Provenance, entries: list[Entry], entry: Entry, vector
) -> list[Entry]:
    """Write the version with `entry` added; returns its entries. The head is extended when it can be."""
    vector = vector.numpy().astype(np.float32)[None]
    if snapshot is None:
        head_name, options = DEFAULT_HEAD, dict(registry().create("head", DEFAULT_HEAD).options)
        provenance, vectors, skipped, head = made, vector[:0], [], None
    else:
        check_models(gallery, snapshot.provenance, made)
        head_name, options, provenance = snapshot.head_name, snapshot.head_options, snapshot.provenance
        vectors, skipped, head = np.asarray(snapshot.vectors()), snapshot.skipped(), snapshot.load_head()
    entries = [*entries, entry]
    vectors = np.concatenate([vectors, vector])
    if head is not None and hasattr(head, "add"):
        head.add(torch.from_numpy(vector), [entry.identity])
    else:
        head = store.fit_head(head_name, options, vectors, [e.identity for e in entries])
    store.write(gallery, Contents(provenance, head_name, options, entries, vectors, skipped), head)
    return entries


def delete(gallery: Path, identity: str, face: str | None = None) -> None:
    """Delete face `face` of `identity`, or (None) every face of it; ServiceError 404 when not there."""

    def gone(entry: Entry) -> bool:
        return entry.identity == identity and face in (None, face_id(entry))

    with _writing(gallery):
        snapshot = store.read(gallery)
        if snapshot is None:
            raise _not_found(identity, face)
        try:
            entries = _remove(gallery, snapshot, gone)
        finally:
            snapshot.close()
        if entries is None:
            raise _not_found(identity, face)
        _remove_unnamed_photos(gallery, entries)


def _remove(gallery: Path, snapshot: Snapshot, gone: Callable[[Entry], bool]) -> list[Entry] | None:
    """Write the version without the entries `gone` selects; its entries, or None if none was selected."""
    entries = snapshot.entries()
    kept = [row for row, entry in enumerate(entries) if not gone(entry)]
    if len(kept) == len(entries):
        return None
    uploads = (Path(gallery) / UPLOADS).absolute()
    removed = [entry for entry in entries if gone(entry)]
    remembered = [
        Skipped(entry.source, entry.sha256, DELETED)
        for entry in removed
        if not Path(entry.source).is_relative_to(uploads)
    ]
    entries = [entries[row] for row in kept]
    vectors = np.asarray(snapshot.vectors())[kept]
    head = store.fit_head(snapshot.head_name, snapshot.head_options, vectors, [e.identity for e in entries])
    skipped = [s for s in snapshot.skipped() if s.source not in {r.source for r in remembered}] + remembered
    contents = Contents(
        snapshot.provenance, snapshot.head_name, snapshot.head_options, entries, vectors, skipped
    )
    store.write(gallery, contents, head)
    return entries


def _not_found(identity: str, face: str | None) -> ServiceError:
    what = f"no face {face!r} of identity {identity!r}" if face else f"no identity {identity!r}"
    return ServiceError(404, f"{what} in this gallery")


def _writing(gallery: Path) -> contextlib.ExitStack:
    """Hold the gallery's write lock, waiting up to LOCK_WAIT seconds for another process's write."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(store.locked(gallery))
            return stack
        except FacerecError as error:
            if BUSY not in str(error):
                raise
            if time.monotonic() > deadline:
                raise ServiceError(
                    503,
                    f"{gallery}: another process has been writing the gallery for {LOCK_WAIT:.0f} s; "
                    "try again later",
                    {"Retry-After": "5"},
                ) from None
        time.sleep(LOCK_POLL)


def _keep_photo(photo: Path, data: bytes) -> None:
    """Store the enrolled photo durably (written to a temporary file, fsync'd, renamed) unless it is there."""
    if photo.is_file() and photo.stat().st_size == len(data):
        return
    photo.parent.mkdir(exist_ok=True)

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


def _remove_unnamed_photos(gallery: Path, entries: list[Entry]) -> None:
    """Delete the stored photos (and leftovers of killed writes) that no entry names any more."""
    uploads = (Path(gallery) / UPLOADS).absolute()
    if not uploads.is_dir():
        return
    named = {Path(entry.source).name for entry in entries}  # photos are named by content: no clash
    for child in uploads.iterdir():
        if child.name not in named:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
