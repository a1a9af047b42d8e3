"""Enrolling `DIR/<identity>/<image>` into a gallery, incrementally by content hash.

Every run hashes the folder's files and compares them with the gallery: unchanged images keep their
vectors, images whose bytes the gallery already knows (moved or copied) reuse the known vector, images
that enrolled nothing before and are unchanged stay skipped, and only new or changed images go through
the detector and the network. Entries from this folder whose files are gone are forgotten; entries from
other folders are left alone. When nothing changed, nothing is written and no model is loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from facerec import gallery as store
from facerec.errors import FacerecError
from facerec.gallery import Contents, Entry, Skipped, Snapshot
from facerec.provenance import ModelRequest, check_request, open_pipeline
from facerec.registry import registry
from facerec.weights import sha256_file

if TYPE_CHECKING:
    from facerec.parts import Head

DEFAULT_HEAD = "faiss"
NO_FACE = "no face found"

Note = Callable[[str], None]


@dataclass(frozen=True)
class FoundImage:
    """A file of the folder being indexed: whose it is, where it is (absolute), what its bytes hash to."""

    identity: str
    source: str
    sha256: str


@dataclass
class IndexReport:
    """What an index run did. `version` is None when the gallery was already up to date."""

    gallery: Path
    version: str | None = None
    embedded: int = 0  # new or changed images run through the models
    reused: int = 0  # images whose bytes the gallery knew: vector reused
    unchanged: int = 0
    removed: int = 0  # entries of this folder whose file is gone or changed
    skipped: list[Skipped] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)  # the whole gallery's, after the run

    @property
    def enrolled_from_folder(self) -> int:
        return self.embedded + self.reused + self.unchanged


@dataclass
class Plan:
    """The difference between the folder and the gallery."""

    keep: list[int] = field(default_factory=list)  # old entry rows that stay
    reuse: list[tuple[FoundImage, int]] = field(default_factory=list)  # new path, old row with its bytes
    embed: list[FoundImage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # the whole gallery's, still valid
    removed: int = 0
    unchanged: int = 0

    @property
    def changes_entries(self) -> bool:
        return bool(self.reuse or self.embed or self.removed)


def scan(folder: Path, note: Note) -> list[FoundImage]:
    """Every non-hidden file under `folder/<identity>/`, hashed, in a stable order."""
    if not folder.is_dir():
        raise FacerecError(f"{folder}: no such folder (expected DIR/<identity>/<image>)")
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir():
            if child.suffix.lower() in Image.registered_extensions():  # a README or the like is no matter
                note(f"{child}: not inside an identity folder (DIR/<identity>/<image>), skipped")
            continue
        for path in sorted(_files(child)):
            try:
                child.name.encode("utf-8"), str(path).encode("utf-8")
            except UnicodeEncodeError:
                note(f"{path!r}: file name is not valid UTF-8, skipped")
                continue
            found.append(FoundImage(child.name, os.path.abspath(path), sha256_file(path)))
    return found


def _files(identity_folder: Path) -> Iterable[Path]:
    for path in identity_folder.rglob("*"):
        relative = path.relative_to(identity_folder).parts
        if path.is_file() and not any(part.startswith(".") for part in relative):
            yield path


def plan(folder: Path, found: list[FoundImage], snapshot: Snapshot | None) -> Plan:
    """What to keep, reuse, embed and forget so that the gallery matches `folder`."""
    result = Plan()
    old = snapshot.entries() if snapshot else []
    old_skipped = {s.source: s for s in snapshot.skipped()} if snapshot else {}
    here = {image.source: image for image in found}
    by_content = {}
    for row, entry in enumerate(old):
        by_content.setdefault(entry.sha256, row)
    for row, entry in enumerate(old):
        image = here.get(entry.source)
        if image is not None and image.sha256 == entry.sha256:
            result.keep.append(row)
            result.unchanged += 1
        elif image is not None or _inside(entry.source, folder):
            result.removed += 1
        else:
            result.keep.append(row)
    kept_sources = {old[row].source for row in result.keep}
    for image in found:
        before = old_skipped.get(image.source)
        if image.source in kept_sources:
            continue
        if image.sha256 in by_content:
            result.reuse.append((image, by_content[image.sha256]))
        elif before is not None and before.sha256 == image.sha256:
            result.skipped.append(before)
        else:
            result.embed.append(image)
    result.skipped += [s for s in old_skipped.values() if not _inside(s.source, folder)]
    return result


def _inside(source: str, folder: Path) -> bool:
    return Path(source).is_relative_to(folder)


def index_folder(
    gallery: Path,
    folder: Path,
    request: ModelRequest | None = None,
    head: str | None = None,
    head_options: dict[str, Any] | None = None,
    progress: bool = False,
    note: Note | None = None,
) -> IndexReport:
    """Bring the gallery at `gallery` up to date with `folder`; see the module docstring."""
    note = note or (lambda message: None)
    request = request or ModelRequest()
    folder = Path(os.path.abspath(folder))
    with store.locked(gallery):
        snapshot = store.read(gallery)
        try:
            return _index(gallery, folder, snapshot, request, head, head_options, progress, note)
        finally:
            if snapshot is not None:
                snapshot.close()


def _index(gallery, folder, snapshot, request, head, head_options, progress, note) -> IndexReport:
    if snapshot is not None:
        check_request(snapshot.provenance, request, gallery)
    found = scan(folder, note)
    steps = plan(folder, found, snapshot)
    if not found and not steps.removed:
        raise FacerecError(f"{folder}: no images found (expected {folder}/<identity>/<image>)")
    for skipped in steps.skipped:
        if _inside(skipped.source, folder):
            note(f"{skipped.source}: {skipped.reason}, skipped (unchanged since the last run)")
    head, head_options = _head_choice(snapshot, head, head_options)
    provenance = snapshot.provenance if snapshot else None
    entries, vectors, new_skipped = [], [], []
    if steps.embed:
        pipeline, provenance = open_pipeline(provenance, request, gallery)
        entries, vectors, new_skipped = _embed(pipeline, steps.embed, progress, note)
    skipped = steps.skipped + new_skipped
    report = IndexReport(
        gallery,
        embedded=len(entries),
        reused=len(steps.reuse),
        unchanged=steps.unchanged,
        removed=steps.removed,
        skipped=[s for s in skipped if _inside(s.source, folder)],
    )
    if snapshot and not _changed(snapshot, steps, skipped, head, head_options):
        report.identities = snapshot.identities()
        return report
    contents = _contents(snapshot, provenance, head, head_options, steps, entries, vectors, skipped)
    report.version = store.write(gallery, contents, _head_for(snapshot, steps, contents))
    report.identities = _counts(contents.entries)
    return report


def _head_choice(snapshot: Snapshot | None, head: str | None, options: dict[str, Any] | None):
    """The head and its full options: as asked (defaults filled in by the head), else the gallery's."""
    if snapshot and head in (None, snapshot.head_name) and options is None:
        return snapshot.head_name, snapshot.head_options
    head = head or (snapshot.head_name if snapshot else DEFAULT_HEAD)
    return head, dict(registry().create("head", head, **(options or {})).options)


def _head_for(snapshot: Snapshot | None, steps: Plan, contents: Contents) -> Head:
    """The new version's head: the gallery's own, extended, when faces were only added and the head can
    `add`; else one fitted on all the vectors."""
    kept = len(steps.keep)
    same = snapshot and (contents.head, contents.head_options) == (snapshot.head_name, snapshot.head_options)
    if same and not steps.removed and kept == len(snapshot):
        head = snapshot.load_head()
        if hasattr(head, "add"):
            import torch  # here, not above: a run with nothing to do needs no torch

            head.add(torch.from_numpy(contents.vectors[kept:]), [e.identity for e in contents.entries[kept:]])
            return head
    labels = [entry.identity for entry in contents.entries]
    return store.fit_head(contents.head, contents.head_options, contents.vectors, labels)


def _changed(snapshot: Snapshot, steps: Plan, skipped: list[Skipped], head: str, head_options) -> bool:
    """Whether the gallery needs a new version: entries, skipped images or the head differ."""
    return (
        steps.changes_entries
        or {s.source for s in skipped} != {s.source for s in snapshot.skipped()}
        or (head, head_options) != (snapshot.head_name, snapshot.head_options)
    )


def _embed(pipeline, images: list[FoundImage], progress: bool, note: Note):
    """Detect and embed `images`: the largest face of each; images without one are skipped."""
    entries, vectors, skipped = [], [], []
    results = pipeline.run(image.source for image in images)
    with tqdm(total=len(images), unit="image", disable=not progress, file=sys.stderr) as bar:
        for image, result in zip(images, results, strict=True):
            reason = result.error or (NO_FACE if not result.faces else None)
            if reason is not None:
                note(f"{image.source}: {reason}, skipped")
                skipped.append(Skipped(image.source, image.sha256, reason))
            else:
                if len(result.faces) > 1:
                    note(f"{image.source}: {len(result.faces)} faces, enrolled the largest")
                box = tuple(float(v) for v in result.faces[0].box)
                entries.append(Entry(image.identity, image.source, image.sha256, box, store.now()))
                vectors.append(result.embeddings[0].numpy())
            bar.update()
    return entries, vectors, skipped


def _contents(snapshot, provenance, head, head_options, steps: Plan, entries, vectors, skipped) -> Contents:
    old_entries = snapshot.entries() if snapshot else []
    old_vectors = snapshot.vectors() if snapshot else np.zeros((0, provenance.embedding_size), np.float32)
    rows = steps.keep + [row for _, row in steps.reuse]
    reused = [
        Entry(image.identity, image.source, image.sha256, old_entries[row].box, store.now())
        for image, row in steps.reuse
    ]
    parts = [np.asarray(old_vectors[rows], dtype=np.float32)]
    if vectors:
        parts.append(np.stack(vectors).astype(np.float32))
    return Contents(
        provenance=provenance,
        head=head,
        head_options=head_options,
        entries=[old_entries[row] for row in steps.keep] + reused + entries,
        vectors=np.concatenate(parts),
        skipped=skipped,
    )


def _counts(entries: list[Entry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in sorted(entries, key=lambda e: e.identity):
        counts[entry.identity] = counts.get(entry.identity, 0) + 1
    return counts
