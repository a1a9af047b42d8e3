"""Enrolling `DIR/<identity>/<image>` into a gallery, incrementally by content hash.

Every run hashes the folder's files and compares them with the gallery: unchanged images keep their
vectors, images whose bytes the gallery already knows (moved or copied) reuse the known vector, images
that enrolled nothing before and are unchanged stay skipped, and only new or changed images go through
the detector and the network. Entries from this folder whose files are gone are forgotten; entries from
other folders are left alone. When nothing changed, nothing is written and no model is loaded.

The gallery is whatever store `--gallery` names (facerec.gallery.stores): this module plans, the store commits.
Under torchrun, process 0 does all of this and the embedding is shared out among the processes
(facerec.gallery.spread).

A damaged gallery is rebuilt on the way (facerec.gallery.repair): the head from the vectors, the vectors from
the photos still there, CURRENT from the newest readable version. `repair_gallery` does only that.

An identity is its folder's name in NFC, under the rule `facerec serve` applies to names too
(facerec.gallery.names). The scan names every path it skips, with why: hidden names, folders whose name
that rule refuses (control or bidirectional control characters, say), FIFOs and other files that are
not regular (never opened: a FIFO would block), broken links, and symbolic links that lead back into the
dataset or into a loop, which are never followed (a `loopdir -> .` would enroll everyone again under
`loopdir`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from facerec import defaults
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.gallery import spread
from facerec.gallery.models import ModelRequest, check_request, open_pipeline
from facerec.gallery.names import NameRefused, identity_name
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, at_moment, now
from facerec.gallery.repair import Base, open_base
from facerec.gallery.stores import open_store
from facerec.pipeline.images import path_problem
from facerec.pipeline.weights import sha256_file

if TYPE_CHECKING:
    from facerec.contract.parts import GalleryState, Store

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

    gallery: str  # where the gallery lives, as --gallery named it
    version: str | None = None
    embedded: int = 0  # new or changed images run through the models
    reused: int = 0  # images whose bytes the gallery knew: vector reused
    unchanged: int = 0
    removed: int = 0  # entries of this folder whose file is gone or changed
    skipped: list[Skipped] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)  # the whole gallery's, after the run
    repaired: str | None = None  # what was wrong with the gallery, when this run rebuilt it
    helper: bool = False  # a process of a spread run other than 0: it embedded its share; 0 reports

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
        try:
            identity = identity_name(child.name)
        except NameRefused as refused:
            note(f"{str(child)!r}: not an identity name ({refused.reason}), skipped")
            continue
        for path in _files(child, root, {root, os.path.realpath(child)}, note):
            image = _found(identity, path, note)
            if image is not None:
                found.append(image)
    return found


def _entries(folder: Path, root: str, ancestors: set[str], note: Note) -> Iterator[tuple[Path, bool]]:
    """The usable entries of `folder`, sorted, each with whether it is a folder; the others are named.

    A folder that cannot be listed stops the scan: skipping it would read as its images removed, and
    the next index would drop their faces from the gallery."""
    try:
        children = sorted(folder.iterdir())
    except OSError as error:
        raise FacerecError(f"{folder}: cannot be read ({error.strerror}); the gallery is unchanged") from None
    for path in children:
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
        str(path).encode("utf-8")
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
    by_content: dict[str, list[int]] = {}  # a video enrolled several faces: all of its rows
    for row, entry in enumerate(old):
        by_content.setdefault(entry.sha256, []).append(row)
    rebuilt = {entry.file for entry in base.rebuild}
    for row, entry in enumerate(old):
        image = here.get(entry.file)
        if entry.file in rebuilt:  # a video that lost some of its rows is enrolled again whole
            continue
        if image is not None and image.sha256 == entry.sha256 and image.identity == entry.identity:
            result.keep.append(row)
            result.unchanged += 1
        elif image is not None or _inside(entry.source, folder):
            result.removed += 1
        else:
            result.keep.append(row)
    kept_sources = {old[row].file for row in result.keep}
    for image in found:
        before = old_skipped.get(image.source)
        if image.source in kept_sources:
            continue
        if image.sha256 in by_content:
            first = old[by_content[image.sha256][0]].file  # the rows of one file, not of every copy
            result.reuse += [(image, row) for row in by_content[image.sha256] if old[row].file == first]
        elif before is not None and before.sha256 == image.sha256:
            result.skipped.append(before)
        else:
            result.embed.append(image)
    result.skipped += [s for s in old_skipped.values() if not _inside(s.source, folder)]
    lost = {entry.file: FoundImage(entry.identity, entry.file, entry.sha256) for entry in base.rebuild}
    result.embed += list(lost.values())  # a video with lost rows is enrolled again whole
    return result


def _inside(source: str, folder: Path | None) -> bool:
    return folder is not None and Path(source).is_relative_to(folder)


def index_folder(
    gallery: str | os.PathLike | Store,
    folder: Path,
    request: ModelRequest | None = None,
    head: str | None = None,
    head_options: dict[str, Any] | None = None,
    progress: bool = False,
    note: Note | None = None,
) -> IndexReport:
    """Bring the gallery up to date with `folder`, rebuilding what was damaged; see the module docstring."""
    folder = Path(os.path.abspath(folder))
    return _update(open_store(gallery), folder, request, head, head_options, progress, note)


def repair_gallery(
    gallery: str | os.PathLike | Store, request: ModelRequest | None = None, note: Note | None = None
) -> IndexReport:
    """Check every file of the gallery (SHA-256 included) and rebuild what is damaged; `version` is None
    when the gallery was intact."""
    return _update(open_store(gallery), None, request, None, None, False, note, full=True)


def _update(store: Store, folder, request, head, head_options, progress, note, full=False) -> IndexReport:
    note = note or (lambda message: None)
    request = request or ModelRequest()
    team = spread.join()
    if team is not None and not team.leader:
        try:
            return _help(store, team, request, progress, note)
        finally:
            team.finish(failed=False)
    failed = True
    try:
        with store.locked():
            base = open_base(store, folder, full)
            try:
                report = _index(store, folder, base, request, head, head_options, progress, note, team)
            finally:
                base.close()
        failed = False
        return report
    finally:
        if team is not None:
            team.finish(failed)


def _index(
    store: Store, folder, base: Base, request, head, head_options, progress, note, team
) -> IndexReport:
    gallery, snapshot = store.location, base.snapshot
    if snapshot is None and folder is None:
        raise FacerecError(f"{gallery}: no gallery here to repair")
    if snapshot is not None:
        check_request(snapshot.provenance, request, gallery)
    head, head_options = head_choice(store, snapshot, head, head_options)  # a bad option ends the run first
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
        if team is not None:
            team.broadcast({"provenance": asdict(provenance), "images": [asdict(i) for i in steps.embed]})
        outcomes = _embed_share(team, pipeline, provenance.embedding_size, steps.embed, progress, note)
        entries, vectors, new_skipped = _split(outcomes)
    skipped = steps.skipped + new_skipped
    report = IndexReport(
        gallery,
        embedded=len(steps.embed) - len(new_skipped),
        reused=len(steps.reuse),
        unchanged=steps.unchanged,
        removed=steps.removed,
        skipped=[s for s in skipped if _inside(s.source, folder)],
        repaired=base.problem,
    )
    if snapshot and base.problem is None and not _changed(snapshot, steps, skipped, head, head_options):
        report.identities = snapshot.identities()
        return report
    change = _change(base, provenance, head, head_options, steps, entries, vectors, skipped)
    report.version = store.commit(snapshot, change)
    report.identities = _counts([base.entries()[row] for row in change.keep] + change.added)
    return report


def head_choice(store: Store, snapshot: GalleryState | None, head: str | None, options: dict | None):
    """The head and its full options: as asked (defaults filled in by the head), else the gallery's. A
    store that searches by itself records its own search; asking it for a head is a usage error."""
    if not store.fits_heads:
        if head is not None or options is not None:
            raise UsageError(f"--head: {store.location} searches by itself; heads are for folder galleries")
        return None, {}
    if snapshot and head in (None, snapshot.head_name) and options is None:
        return snapshot.head_name, snapshot.head_options
    head = head or (snapshot.head_name if snapshot else defaults.HEAD)
    return head, dict(registry().create("head", head, **(options or {})).options)


def _changed(snapshot: GalleryState, steps: Plan, skipped: list[Skipped], head, head_options) -> bool:
    """Whether the gallery needs a new version: entries, skipped images or the head differ."""
    same_head = head is None or (head, head_options) == (snapshot.head_name, snapshot.head_options)
    return (
        steps.changes_entries
        or {s.source for s in skipped} != {s.source for s in snapshot.skipped()}
        or not same_head
    )


def _help(store: Store, team: spread.Team, request: ModelRequest, progress: bool, note: Note) -> IndexReport:
    """A process other than 0 of a spread run: embed its share of process 0's job and send it back."""
    job = team.broadcast()
    if job is None:
        raise spread.LeaderStopped(f"{store.location}: process 0 of the run stopped; its error says why")
    report = IndexReport(store.location, helper=True)
    if job["images"]:
        images = [FoundImage(**image) for image in job["images"]]
        made = Provenance.from_record(job["provenance"])
        pipeline, _ = open_pipeline(made, request, store.location)
        report.embedded = len(_embed_share(team, pipeline, made.embedding_size, images, progress, note))
    return report


Outcome = list[tuple[Entry, np.ndarray]] | Skipped  # per image: its enrolled faces (a video has several)


def _embed_share(
    team: spread.Team | None, pipeline, width: int, images: list[FoundImage], progress, note
) -> list[Outcome]:
    """Embed `images` (one process), or this process's share of them (a spread run). Process 0 gets
    every image's outcome in the list's order; the others get their own share's."""
    if team is None:
        return _embed(pipeline, images, progress, note)
    rows = team.share(images)
    mine = _embed(pipeline, [images[row] for row in rows], progress, note)
    shares = team.gather(_outcomes_json(rows, mine))
    if not team.leader:
        return mine
    found: dict[int, Outcome] = {}
    for share in shares:
        found.update(_outcomes_from_json(share, width))
    return [found[row] for row in range(len(images))]


def _outcomes_json(rows: list[int], outcomes: list[Outcome]) -> dict[str, Any]:
    faces = [face for o in outcomes if not isinstance(o, Skipped) for face in o]
    return {
        "rows": rows,
        "outcomes": [
            asdict(o) if isinstance(o, Skipped) else {"entries": [asdict(entry) for entry, _ in o]}
            for o in outcomes
        ],
        "vectors": spread.pack_vectors([vector for _, vector in faces]),
    }


def _outcomes_from_json(share: dict[str, Any], width: int) -> dict[int, Outcome]:
    vectors = iter(spread.unpack_vectors(share["vectors"], width))
    found: dict[int, Outcome] = {}
    for row, outcome in zip(share["rows"], share["outcomes"], strict=True):
        if "entries" in outcome:
            found[row] = [
                (
                    Entry(**{**record, "box": None if record["box"] is None else tuple(record["box"])}),
                    next(vectors),
                )
                for record in outcome["entries"]
            ]
        else:
            found[row] = Skipped(**outcome)
    return found


def _split(outcomes: list[Outcome]) -> tuple[list[Entry], list[np.ndarray], list[Skipped]]:
    faces = [face for o in outcomes if not isinstance(o, Skipped) for face in o]
    return (
        [entry for entry, _ in faces],
        [vector for _, vector in faces],
        [o for o in outcomes if isinstance(o, Skipped)],
    )


def _embed(pipeline, images: list[FoundImage], progress: bool, note: Note) -> list[Outcome]:
    """Detect and embed `images`: the largest face of each photo, the best views of each video's main
    face (facerec.video.enroll); images without a face are skipped."""
    from facerec.video.source import is_video

    videos = {row for row, image in enumerate(images) if is_video(image.source)}
    photos = iter(pipeline.run(image.source for row, image in enumerate(images) if row not in videos))
    outcomes: list[Outcome] = []
    with tqdm(total=len(images), unit="image", disable=not progress, file=sys.stderr) as bar:
        for row, image in enumerate(images):
            found, reason = (
                _video_faces(pipeline, image, note)
                if row in videos
                else _photo_face(next(photos), image, note)
            )
            if reason is not None:
                note(f"{image.source}: {reason}, skipped")
                outcomes.append(Skipped(image.source, image.sha256, reason))
            else:
                outcomes.append(found)
            bar.update()
    return outcomes


def _photo_face(result, image: FoundImage, note: Note) -> tuple[list[tuple[Entry, np.ndarray]], str | None]:
    reason = result.error or (NO_FACE if not result.faces else None)
    if reason is not None:
        return [], reason
    if len(result.faces) > 1:
        note(f"{image.source}: {len(result.faces)} faces, enrolled the largest")
    box = tuple(float(v) for v in result.faces[0].box)
    return [
        (Entry(image.identity, image.source, image.sha256, box, now()), result.embeddings[0].numpy())
    ], None


def _video_faces(
    pipeline, image: FoundImage, note: Note
) -> tuple[list[tuple[Entry, np.ndarray]], str | None]:
    from facerec.video.enroll import best_views

    try:
        views, problem = best_views(pipeline, image.source)
    except FacerecError as error:
        return [], str(error).removeprefix(f"{image.source}: ")
    if problem is not None:
        note(problem)
    if not views:
        return [], NO_FACE
    note(f"{image.source}: a video, enrolled {len(views)} views of its main face")
    made = now()
    return [
        (
            Entry(
                image.identity,
                at_moment(image.source, moment),
                image.sha256,
                tuple(map(float, face.box)),
                made,
            ),
            vector.numpy(),
        )
        for face, moment, vector in views
    ], None


def _change(base: Base, provenance, head, head_options, steps: Plan, entries, vectors, skipped) -> Change:
    """The plan as a store change: kept rows, then moved photos with their known vectors, then new ones."""
    width = provenance.embedding_size
    old_entries = base.entries()
    reused = [
        Entry(
            image.identity, image.source + old_entries[row].moment, image.sha256, old_entries[row].box, now()
        )
        for image, row in steps.reuse
    ]
    parts = [base.vectors([row for _, row in steps.reuse], width)]
    if vectors:
        parts.append(np.stack(vectors).astype(np.float32))
    return Change(
        provenance=provenance,
        head=head,
        head_options=head_options,
        keep=steps.keep,
        added=reused + entries,
        vectors=np.concatenate(parts),
        skipped=skipped,
    )


def _counts(entries: list[Entry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in sorted(entries, key=lambda e: e.identity):
        counts[entry.identity] = counts.get(entry.identity, 0) + 1
    return counts
