"""A photo library in a gallery: `facerec cluster` and the owner's edits of its people.

`cluster(gallery, photos)` finds every face of the photos (not only the largest: a library photo holds
many people), embeds those of new or changed photos only (by content hash, as `index` does), and groups
the gallery's clustered faces into people (facerec.people.clustering, its `incremental` rule by default)
around what was there: faces that have a person keep it, new faces join the nearest person or form new
ones, the rest stay unassigned. Each face is an entry of its own, `photo.jpg#xywh=X,Y,W,H`; a named
person's faces carry the name, others the empty identity, which `identify` never answers.

Every write (a cluster run, a name, a merge, a move, a forget) is one commit of the store, with the
people record (facerec.people.book) beside the entries: a run killed at any moment leaves the state
before it or after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.errors import FacerecError, UsageError
from facerec.gallery.enroll import head_choice
from facerec.gallery.models import ModelRequest, check_request, open_pipeline
from facerec.gallery.records import Change, Entry, Skipped, in_photo, now
from facerec.gallery.stores import open_store
from facerec.people.book import People
from facerec.people.clustering import RULES, UNASSIGNED
from facerec.people.clustering import cluster as grouped
from facerec.pipeline.images import IMAGE_SUFFIXES, path_problem
from facerec.pipeline.weights import sha256_file

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Store

Note = Callable[[str], None]
NO_FACE = "no face found"


def clustered(entry: Entry) -> bool:
    """Whether the entry is a face of a clustered photo (`#xywh=`), not one `index` enrolled."""
    return entry.moment.startswith("#xywh=")


@dataclass
class ClusterReport:
    gallery: str
    version: str | None = None
    photos: int = 0  # photos looked at
    embedded: int = 0  # of which new or changed: detected and embedded
    faces: int = 0  # clustered faces in the gallery after the run
    people: People = field(default_factory=People)
    skipped: list[Skipped] = field(default_factory=list)


def photos_under(paths: Sequence[str | os.PathLike], note: Note) -> list[Path]:
    """The image files among `paths` and inside the folders among them (hidden names left out), each
    once, absolute, in a stable order; paths that cannot be used are named."""
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                if any(part.startswith(".") for part in child.relative_to(path).parts) or child.is_dir():
                    continue
                problem = path_problem(child)  # a FIFO, a link to nowhere: named, never opened
                if problem is not None:
                    note(f"{child}: {problem}, skipped")
                    continue
                found.setdefault(os.path.abspath(child), Path(os.path.abspath(child)))
            continue
        problem = path_problem(path) if path.exists() or path.is_symlink() else "no such file"
        if problem is not None:
            note(f"{path}: {problem}, skipped")
            continue
        found.setdefault(os.path.abspath(path), Path(os.path.abspath(path)))
    return list(found.values())


def people_of(state: GalleryState | None) -> People:
    """The people record of a gallery state (empty for a gallery that has none yet)."""
    reader = getattr(state, "people", None)
    return People.from_json(reader() if reader is not None else None)


def cluster(
    gallery: str | os.PathLike | Store,
    photos: Sequence[str | os.PathLike],
    request: ModelRequest | None = None,
    rule: str = "incremental",
    min_faces: int = 2,
    note: Note | None = None,
) -> ClusterReport:
    """See the module docstring."""
    note = note or (lambda message: None)
    if rule not in RULES:
        raise UsageError(f"--cluster-option rule: unknown rule '{rule}' (available: {', '.join(RULES)})")
    if type(min_faces) is not int or min_faces < 1:
        raise UsageError(f"--cluster-option min_faces: must be a whole number, 1 or more, not {min_faces}")
    store = open_store(gallery)
    files = photos_under(photos, note)
    if not files:
        raise FacerecError("no photos to cluster (give photos, or folders of photos)")
    with store.locked():
        state, problem = store.recover()
        if problem is not None:
            raise FacerecError(f"{store.location}: {problem}; run `facerec gallery --repair` first")
        try:
            return _cluster(store, state, files, request or ModelRequest(), rule, min_faces, note)
        finally:
            if state is not None:
                state.close()


def _cluster(
    store, state, files: list[Path], request, rule: str, min_faces: int, note: Note
) -> ClusterReport:
    _check_store(store, state)
    if state is not None:
        check_request(state.provenance, request, store.location)
    entries = state.entries() if state is not None else []
    hashes = {str(path): sha256_file(path) for path in files}
    kept = [
        row for row, e in enumerate(entries) if not clustered(e) or hashes.get(e.file, e.sha256) == e.sha256
    ]
    known = {(entries[row].file, entries[row].sha256) for row in kept if clustered(entries[row])}
    skipped_before = {s.source: s for s in (state.skipped() if state is not None else [])}
    todo = [
        p
        for p in files
        if (str(p), hashes[str(p)]) not in known and not _still_skipped(skipped_before, p, hashes)
    ]
    report = ClusterReport(store.location, photos=len(files), embedded=len(todo))
    provenance = state.provenance if state is not None else None
    skipped = [s for s in skipped_before.values() if hashes.get(s.source, s.sha256) == s.sha256]
    added, vectors = [], []
    if todo:
        pipeline, provenance = open_pipeline(provenance, request, store.location)
        added, vectors, new_skipped = _new_faces(pipeline, todo, hashes, note)
        skipped += new_skipped
    if provenance.threshold is None:  # a gallery exists, or `todo` made one: provenance is set
        raise FacerecError(f"{store.location}: the gallery's weights declare no same-person distance")
    report.skipped = [s for s in skipped if s.source in hashes]
    rows = [entries[row] for row in kept] + added
    width = provenance.embedding_size
    old = state.vectors(kept) if state is not None and kept else np.zeros((0, width), np.float32)
    matrix = np.concatenate([np.asarray(old, np.float32), np.asarray(vectors, np.float32).reshape(-1, width)])
    people = people_of(state)
    _regroup(people, rows, matrix, provenance.threshold, rule, min_faces)
    report.people, report.faces = people, sum(clustered(e) for e in rows)
    report.version = _commit(
        store, state, people, rows, lambda indices: matrix[indices], kept, len(entries), skipped, provenance
    )
    return report


def _new_faces(pipeline, photos: list[Path], hashes: dict[str, str], note: Note):
    """Every face of `photos` as (entries, vectors), and the photos that gave none (skipped)."""
    added, vectors, skipped = [], [], []
    for path, result in zip(photos, pipeline.run(photos), strict=True):
        reason = result.error or (NO_FACE if not result.faces else None)
        if reason is not None:
            note(f"{path}: {reason}, skipped")
            skipped.append(Skipped(str(path), hashes[str(path)], reason))
            continue
        for face, vector in zip(result.faces, result.embeddings, strict=True):
            box = tuple(map(float, face.box))
            added.append(Entry("", in_photo(str(path), face.box), hashes[str(path)], box, now()))
            vectors.append(vector.numpy())
    return added, vectors, skipped


def _still_skipped(before: dict[str, Skipped], path: Path, hashes: dict[str, str]) -> bool:
    found = before.get(str(path))
    return found is not None and found.sha256 == hashes[str(path)]


def _check_store(store: Store, state: GalleryState | None) -> None:
    if state is not None and not hasattr(state, "people"):
        raise FacerecError(f"{store.location}: this store keeps no people (a store plugin without them)")


def _regroup(
    people: People, rows: list[Entry], matrix: np.ndarray, distance: float, rule: str, min_faces: int
):
    """Assign the clustered faces that have no person and are not forgotten, around the existing ones."""
    faces = [(row, entry.face_id) for row, entry in enumerate(rows) if clustered(entry)]
    people.known_faces = {face for _, face in faces}
    people.keep_only(people.known_faces)
    usable = [(row, face) for row, face in faces if face not in people.forgotten]
    if not usable:
        return
    persons = sorted(set(people.faces.values()))
    number = {person: i for i, person in enumerate(persons)}
    known = [number[people.faces[face]] if face in people.faces else UNASSIGNED for _, face in usable]
    labels = grouped(matrix[[row for row, _ in usable]], distance, rule, min_faces, known=known)
    made: dict[int, str] = {}
    for (_, face), label in zip(usable, labels, strict=True):
        if label == UNASSIGNED or face in people.faces:
            continue
        label = int(label)
        if label < len(persons):
            people.faces[face] = persons[label]
        else:
            if label not in made:
                made[label] = people.new_person()
            people.faces[face] = made[label]


def _commit(
    store, state, people: People, rows, vectors, kept, before: int, skipped, provenance
) -> str | None:
    """One commit: entries whose identity follows their person, the people record, the skipped photos.
    `vectors(indices)` gives the embeddings of those `rows` (only the re-added ones are read)."""
    renamed = [
        Entry(people.identity_of(e.face_id), e.source, e.sha256, e.box, e.enrolled_at) if clustered(e) else e
        for e in rows
    ]
    stay = [
        i
        for i, (a, b) in enumerate(zip(rows, renamed, strict=True))
        if i < len(kept) and a.identity == b.identity
    ]
    staying = set(stay)
    again = [i for i in range(len(rows)) if i not in staying]
    record = people.to_json()
    unchanged = (
        state is not None and not again and len(kept) == before and record == people_of(state).to_json()
    )
    if unchanged and {s.source for s in skipped} == {s.source for s in state.skipped()}:
        return None
    head, options = head_choice(store, state, None, None)
    keep, added = [kept[i] for i in stay], [renamed[i] for i in again]
    width = provenance.embedding_size
    added_vectors = (
        np.asarray(vectors(again), np.float32).reshape(-1, width) if again else np.zeros((0, width))
    )
    return store.commit(
        state,
        Change(
            provenance,
            head,
            options,
            keep,
            added,
            added_vectors,
            skipped,
            people=record,
        ),
    )


def edit(gallery: str | os.PathLike | Store, change: Callable[[People], Any]) -> Any:
    """Apply one of the owner's choices (a People method call) and commit it with the renamed entries."""
    store = open_store(gallery)
    with store.locked():
        state, problem = store.recover()
        if state is None:
            raise FacerecError(f"{store.location}: no gallery here; run `facerec cluster PHOTOS` first")
        try:
            if problem is not None:
                raise FacerecError(f"{store.location}: {problem}; run `facerec gallery --repair` first")
            _check_store(store, state)
            people, rows = people_of(state), state.entries()
            people.known_faces = {e.face_id for e in rows if clustered(e)}
            answer = change(people)
            kept = list(range(len(rows)))
            vectors = state.vectors  # rows are the state's own: index i is row i
            _commit(store, state, people, rows, vectors, kept, len(rows), state.skipped(), state.provenance)
            return answer
        finally:
            state.close()


def listing(gallery: str | os.PathLike | Store) -> list[dict[str, Any]]:
    """The people of a gallery as `facerec cluster --json` prints them: one object per person (by id),
    then one for the clustered faces that belong to nobody (forgotten faces are left out)."""
    store = open_store(gallery)
    state = store.read()
    if state is None:
        raise FacerecError(f"{store.location}: no gallery here; run `facerec cluster PHOTOS` first")
    try:
        people = people_of(state)
        faces = {e.face_id: e for e in state.entries() if clustered(e)}
    finally:
        state.close()

    def face(face_id: str) -> dict[str, Any]:
        entry = faces[face_id]
        return {"face_id": face_id, "image": entry.file, "box": list(entry.box)}

    records = [
        {"person": person, "name": name, "faces": [face(f) for f in people.members(person) if f in faces]}
        for person, name in sorted(people.names.items())
    ]
    alone = [face(f) for f in sorted(faces) if f not in people.faces and f not in people.forgotten]
    return [*records, {"person": None, "name": None, "faces": alone}]
