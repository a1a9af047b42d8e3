"""Enrolling `DIR/<identity>/<image>` into a gallery, incrementally by content hash.

Every run hashes the folder's files and compares them with the gallery: unchanged images keep their
vectors, images whose bytes the gallery already knows (moved or copied) reuse the known vector, images
that enrolled nothing before and are unchanged stay skipped, and only new or changed images go through
the detector and the network. Entries from this folder whose files are gone are forgotten; entries from
other folders are left alone. When nothing changed, nothing is written and no model is loaded.

A damaged gallery is rebuilt on the way (facerec.repair): the head from the vectors, the vectors from
the photos still there, CURRENT from the newest readable version. `repair_gallery` does only that.

The scan names every path it skips, with why: hidden names, FIFOs and other files that are not regular
(never opened: a FIFO would block), broken links, and symbolic links that lead back into the dataset or
into a loop, which are never followed (a `loopdir -> .` would enroll everyone again under `loopdir`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from facerec import gallery as store
from facerec.errors import FacerecError
from facerec.gallery import Contents, Entry, Skipped
from facerec.images import path_problem
from facerec.provenance import ModelRequest, check_request, open_pipeline
from facerec.registry import registry
from facerec.repair import Base, open_base
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
    repaired: str | None = None  # what was wrong with the gallery, when this run rebuilt it

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
    """Every usable file under `folder/<identity>/`, hashed, in a stable order; skipped paths are named."""
    if not folder.is_dir():
        raise FacerecError(f"{folder}: no such folder (expected DIR/<identity>/<image>)")
    root = os.path.realpath(folder)
    found = []
    for child, is_folder in _entries(folder, root, {root}, note):
        if not is_folder:
            if child.suffix.lower() in Image.registered_extensions():  # a README or the like is no matter
                note(f"{child}: not inside an identity folder (DIR/<identity>/<image>), skipped")
            continue
        for path in _files(child, root, {root, os.path.realpath(child)}, note):
            image = _found(child.name, path, note)
            if image is not None:
                found.append(image)
    return found


def _entries(folder: Path, root: str, ancestors: set[str], note: Note) -> Iterator[tuple[Path, bool]]:
    """The usable entries of `folder`, sorted, each with whether it is a folder; the others are named."""
    for path in sorted(folder.iterdir()):
        reason = _skip_reason(path, root, ancestors)
        if reason is None:
            yield path, path.is_dir()
        else:
            note(f"{path}: {reason}")


def _files(folder: Path, root: str, ancestors: set[str], note: Note) -> Iterator[Path]:
    """The files under an identity folder, depth first; `ancestors` are the real paths above them."""
    for path, is_folder in _entries(folder, root, ancestors, note):
        if is_folder:
            yield from _files(path, root, ancestors | {os.path.realpath(path)}, note)
        else:
            yield path


def _skip_reason(path: Path, root: str, ancestors: set[str]) -> str | None:
    """Why `path` is not scanned (the rest of a note line), or None."""
    if path.name.startswith("."):
        return "hidden (its name starts with '.'), skipped"
    if path.is_symlink():
        reason = _link_reason(path, root, ancestors)
        if reason is not None:
            return reason
    if path.is_dir():
        return None
    problem = path_problem(path)
    return None if problem is None else f"{problem}, skipped"


def _link_reason(path: Path, root: str, ancestors: set[str]) -> str | None:
    """Why a symbolic link is not followed: it leads back into the dataset, or above where it lies."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError:  # broken, or a loop of links: path_problem says which
        return None
    if target == root or target.startswith(root + os.sep):
        return f"symbolic link back into the dataset (to {target}), not followed"
    if any(above == target or above.startswith(target + os.sep) for above in ancestors):
        return f"symbolic link loop (to {target}, a folder that holds it), not followed"
    return None


def _found(identity: str, path: Path, note: Note) -> FoundImage | None:
    """The image at `path`, hashed; None (and a note) when its name or bytes cannot be read."""
    try:
        identity.encode("utf-8"), str(path).encode("utf-8")
    except UnicodeEncodeError:
        note(f"{path!r}: file name is not valid UTF-8, skipped")
        return None
    try:
        return FoundImage(identity, os.path.abspath(path), sha256_file(path))
    except OSError as error:
        note(f"{path}: cannot be read ({error.strerror}), skipped")
        return None


def plan(folder: Path | None, found: list[FoundImage], base: Base) -> Plan:
    """What to keep, reuse, embed and forget so that the gallery matches `folder` (None: no folder, as
    for a repair); entries whose vectors were lost are embedded again from their photos."""
    result = Plan()
    old = base.entries()
    old_skipped = {s.source: s for s in base.skipped()}
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
    result.embed += [FoundImage(entry.identity, entry.source, entry.sha256) for entry in base.rebuild]
    return result


def _inside(source: str, folder: Path | None) -> bool:
    return folder is not None and Path(source).is_relative_to(folder)


def index_folder(
    gallery: Path,
    folder: Path,
    request: ModelRequest | None = None,
    head: str | None = None,
    head_options: dict[str, Any] | None = None,
    progress: bool = False,
    note: Note | None = None,
) -> IndexReport:
    """Bring the gallery at `gallery` up to date with `folder`, rebuilding what was damaged; see the
    module docstring."""
    folder = Path(os.path.abspath(folder))
    return _update(gallery, folder, request, head, head_options, progress, note)


def repair_gallery(
    gallery: Path, request: ModelRequest | None = None, note: Note | None = None
) -> IndexReport:
    """Check every file of the gallery (SHA-256 included) and rebuild what is damaged; `version` is None
    when the gallery was intact."""
    return _update(gallery, None, request, None, None, False, note, full=True)


def _update(gallery, folder, request, head, head_options, progress, note, full=False) -> IndexReport:
    note = note or (lambda message: None)
    with store.locked(gallery):
        base = open_base(gallery, folder, full)
        try:
            return _index(
                gallery, folder, base, request or ModelRequest(), head, head_options, progress, note
            )
        finally:
            base.close()


def _index(gallery, folder, base: Base, request, head, head_options, progress, note) -> IndexReport:
    snapshot = base.snapshot
    if snapshot is None and folder is None:
        raise FacerecError(f"{gallery}: no gallery here to repair")
    if snapshot is not None:
        check_request(snapshot.provenance, request, gallery)
    head, head_options = _head_choice(snapshot, head, head_options)  # a bad option ends the run first
    found = scan(folder, note) if folder is not None else []
    steps = plan(folder, found, base)
    if folder is not None and not found and not steps.removed:
        raise FacerecError(f"{folder}: no images found (expected {folder}/<identity>/<image>)")
    if base.problem is not None:
        note(base.describe(gallery))
    if base.lost:
        note(base.describe_lost(gallery))
    for skipped in steps.skipped:
        if _inside(skipped.source, folder):
            note(f"{skipped.source}: {skipped.reason}, skipped (unchanged since the last run)")
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
        repaired=base.problem,
    )
    if snapshot and base.problem is None and not _changed(snapshot, steps, skipped, head, head_options):
        report.identities = snapshot.identities()
        return report
    contents = _contents(base, provenance, head, head_options, steps, entries, vectors, skipped)
    report.version = store.write(gallery, contents, _head_for(base, steps, contents), previous=base.version)
    report.identities = _counts(contents.entries)
    return report


def _head_choice(snapshot: store.Snapshot | None, head: str | None, options: dict[str, Any] | None):
    """The head and its full options: as asked (defaults filled in by the head), else the gallery's."""
    if snapshot and head in (None, snapshot.head_name) and options is None:
        return snapshot.head_name, snapshot.head_options
    head = head or (snapshot.head_name if snapshot else DEFAULT_HEAD)
    return head, dict(registry().create("head", head, **(options or {})).options)


def _head_for(base: Base, steps: Plan, contents: Contents) -> Head:
    """The new version's head: the gallery's own, extended, when faces were only added, the head is
    intact and can `add`; else one fitted on all the vectors."""
    kept = len(steps.keep)
    snapshot = base.snapshot
    same = snapshot and (contents.head, contents.head_options) == (snapshot.head_name, snapshot.head_options)
    if same and not steps.removed and kept == len(snapshot):
        head = base.head()
        if head is not None and hasattr(head, "add"):
            import torch  # here, not above: a run with nothing to do needs no torch

            head.add(torch.from_numpy(contents.vectors[kept:]), [e.identity for e in contents.entries[kept:]])
            return head
    labels = [entry.identity for entry in contents.entries]
    return store.fit_head(contents.head, contents.head_options, contents.vectors, labels)


def _changed(snapshot: store.Snapshot, steps: Plan, skipped: list[Skipped], head: str, head_options) -> bool:
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


def _contents(base: Base, provenance, head, head_options, steps: Plan, entries, vectors, skipped) -> Contents:
    old_entries = base.entries()
    old_vectors = base.vectors(provenance.embedding_size)
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
