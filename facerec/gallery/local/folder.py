"""The `local` store's format (facerec_plugins/stores/local.py): a gallery in a folder, never half-written,
every file checked as it is read.

A gallery is a folder:

    GALLERY/
      CURRENT                  the name of the live version folder, one line
      LOCK                     held (flock) by the one process writing the gallery
      v000003-1f2e3d4c/        a complete, never modified version:
        gallery.sqlite           meta (what made the vectors, which head), entries, skipped images
        vectors.npy              float32 (N, D) unit embeddings; row i is entry vector_id i
        head/                    the fitted head's own files (FAISS index, classifier weights)
        manifest.json            the size, SHA-256 and block checksums of every other file of the version

A write builds the new version in a `.tmp-*` folder beside the others, fsyncs every file, renames the
folder to its version name, then replaces CURRENT (write a temporary file, fsync, os.replace, fsync the
folder). A process killed at any moment therefore leaves CURRENT naming either the old complete version
or the new complete one; leftovers of a killed write are removed by the next writer. The version before
the current one is kept, so a reader that has just read CURRENT still finds its files (and a damaged
current version has an older one to fall back to).

A write that keeps every row and the head as they are (a people edit, a change of skipped images) shares
the previous version's vectors.npy and head files by hard link instead of writing them again (at a
million faces, 2 GB of vectors and a 2.7 GB faiss.index), and takes their records from its manifest,
just checked against them. Versions are never modified, so sharing a file is safe; but a file damaged on
disk is then damaged in both versions, and the older one is no fallback for it (a repair embeds the
photos again). Where the file system has no hard links, the files are copied.

Disks and people damage files all the same, and a damaged file that still parses answers wrongly and
quietly. So no file is used without checking its bytes against the manifest (facerec.gallery.local.manifest),
each when it is read: opening a version checks every size, the vectors' shape against the entries, the
database's bytes, and (`read`, for the readers that search) the head's files, just before the head reads
them (heads load from a folder path, so each file is read once to check it, then by the head);
`vectors()` checks the vectors' bytes as it maps them (once: they are parsed from the very bytes
checked). A reader refuses a damaged file in one line naming it. A writer (`recover`) checks everything it would carry over: it gets the newest
version whose entries can be read, with what of it must be rebuilt, and the rows whose vectors are damaged
set aside so that they are embedded again rather than copied. Galleries written before block checksums
are checked by their SHA-256s, and those written before manifests by their sizes and shapes.

Nothing here is pickle: SQLite, .npy read with allow_pickle=False, JSON, and what each head writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.contract.registry import registry
from facerec.errors import FacerecError, GalleryBusy
from facerec.gallery.local.manifest import (
    BLOCK,
    MANIFEST_FILE,
    read_manifest,
    rows_in_blocks,
    write_manifest,
)
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Entry, Skipped, now

if TYPE_CHECKING:
    from facerec.contract.parts import Head

FORMAT = 1
CURRENT_FILE = "CURRENT"
LOCK_FILE = "LOCK"
DB_FILE = "gallery.sqlite"
VECTORS_FILE = "vectors.npy"
HEAD_FOLDER = "head"
TEMP_PREFIX = ".tmp-"
VERSION_NAME = re.compile(r"^v(\d{6,})-[0-9a-f]{8}$")
HEAL = "`facerec gallery --repair` (or `facerec index DIR`) rebuilds what can be rebuilt"
SHOWN_RANGES = 3  # damaged row ranges named in a message

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    vector_id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL,
    source TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    box TEXT,
    enrolled_at TEXT NOT NULL
);
CREATE INDEX entries_identity ON entries (identity);
CREATE INDEX entries_sha256 ON entries (sha256);
CREATE TABLE skipped (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL, reason TEXT NOT NULL);
"""


class GalleryDamaged(FacerecError):
    """A gallery whose current version cannot be used as it is; the message says what is wrong."""


class Unusable(Exception):
    """A version whose entries cannot be read (folder gone, database damaged); says why, version first."""


@dataclass
class Contents:
    """A whole gallery version in memory: what `write` stores. `vectors[i]` belongs to `entries[i]`."""

    provenance: Provenance
    head: str
    head_options: dict[str, Any]
    entries: list[Entry]
    vectors: np.ndarray
    skipped: list[Skipped]
    people: dict[str, Any] | None = None  # the people record (facerec.people.book), in `meta`


class Snapshot:
    """One committed version of a gallery, read-only, each file checked when read (see the module
    docstring).

    Entries and vectors load on demand. `damage` maps the parts that cannot be trusted (`vectors`,
    `head`, and `rows` when only some rows' vectors are damaged) to what is wrong with them; a version
    whose database cannot be read raises Unusable. A writer's snapshot (`recover`) has been checked
    whole, and leaves out the rows whose vectors are damaged: `dropped` holds their entries.
    """

    def __init__(self, path: Path, version: str, full: bool = False) -> None:
        self.path = path
        self.version = version
        self.folder = path / version
        if not self.folder.is_dir():
            raise Unusable(f"{version} is missing")
        self._manifest, manifest_problem = read_manifest(self.folder)
        self._full = full  # SHA-256 too, on top of the block checksums
        self._checked: dict[str, str | None] = {}  # file -> what is wrong with its bytes, once read
        self._db, self.meta, self.provenance = self._open_db()
        if self.meta.get("format", 0) > FORMAT:
            self._db.close()
            raise FacerecError(
                f"{path}: gallery format {self.meta['format']} is newer than this facerec reads"
            )
        self.written_at: str | None = self.meta.get("written_at")
        self.head_name: str = self.meta["head"]
        self.head_options: dict[str, Any] = self.meta["head_options"]
        self._count: int = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
        self._matrix: np.ndarray | None = None  # every row's vector, checked
        self._bad_rows = np.zeros(0, dtype=np.int64)  # rows whose vectors' bytes are damaged
        self._rows: np.ndarray | None = None  # a writer's: the rows kept (the others are `dropped`)
        self.dropped: list[Entry] = []
        if manifest_problem is None and self._manifest is None and "manifest" in self.meta:
            manifest_problem = f"{MANIFEST_FILE} is missing"
        self.damage = self._damage()
        if manifest_problem is not None:  # the head's files cannot be checked: it is fitted again
            self.damage["head"] = "; ".join(filter(None, [manifest_problem, self.damage.get("head")]))

    def __len__(self) -> int:
        return self._count if self._rows is None else len(self._rows)

    def __bool__(self) -> bool:
        """A version is there even with no rows (all of them damaged, say): callers test `if snapshot`."""
        return True

    def describe_damage(self) -> str:
        """What is wrong with this version's files, in one line."""
        return "; ".join(self.damage.values())

    def entries(self) -> list[Entry]:
        """Every enrolled face, in vector order (a writer's snapshot: those whose vectors are intact)."""
        rows = self._db.execute(
            "SELECT identity, source, sha256, box, enrolled_at FROM entries ORDER BY vector_id"
        )
        every = [Entry(i, src, sha, _box(box), at) for i, src, sha, box, at in rows]
        return every if self._rows is None else [every[row] for row in self._rows]

    def people(self) -> dict[str, Any] | None:
        """The people record of this version (facerec.people.book), None before any `facerec cluster`."""
        return self.meta.get("people")

    def skipped(self) -> list[Skipped]:
        return [Skipped(*row) for row in self._db.execute("SELECT source, sha256, reason FROM skipped")]

    def identities(self) -> dict[str, int]:
        """Enrolled faces per identity, by name."""
        if self._rows is not None:
            counts: dict[str, int] = {}
            for entry in self.entries():
                counts[entry.identity] = counts.get(entry.identity, 0) + 1
            return dict(sorted(counts.items()))
        rows = self._db.execute("SELECT identity, count(*) FROM entries GROUP BY identity ORDER BY identity")
        return dict(rows.fetchall())

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """The (N, D) float32 embeddings, mapped read-only from the checked file; or a copy of those of
        `rows`. GalleryDamaged when a row asked for is damaged."""
        matrix = self._checked_vectors()
        if self._rows is not None:
            rows = self._rows if rows is None else self._rows[np.asarray(rows, dtype=np.int64)]
        elif len(self._bad_rows) and (rows is None or np.isin(rows, self._bad_rows).any()):
            raise self._damaged(self.damage["rows"])
        return matrix if rows is None else np.asarray(matrix[np.asarray(rows, dtype=np.int64)])

    def load_head(self) -> Head:
        """The fitted head, built with the recorded options and loaded from this version's files, each
        checked before the head reads it."""
        self.check_head()
        if "head" in self.damage:
            raise self._damaged(self.damage["head"])
        head = registry().create("head", self.head_name, **self.head_options)
        head.load(self.folder / HEAD_FOLDER)
        return head

    def check_for_writer(self) -> None:
        """Read and check every file a write would carry over (vectors, head), so that `damage` is
        complete, and set aside the rows whose vectors are damaged (`dropped`): a write embeds those
        again from their photos instead of copying them."""
        if "vectors" not in self.damage:
            self._map_vectors()
        self.check_head()
        if len(self._bad_rows):
            every = self.entries()
            self._rows = np.setdiff1d(np.arange(self._count), self._bad_rows)
            self.dropped = [every[row] for row in self._bad_rows]

    def check_head(self) -> None:
        """Read and check the bytes of the head's files (once), noting `damage["head"]`. Heads load from
        a folder path, so each file is read twice: here, then by the head (from the page cache)."""
        if "head" in self.damage or self._manifest is None:
            return
        names = sorted(name for name in self._manifest.files if name.startswith(f"{HEAD_FOLDER}/"))
        problem = "; ".join(filter(None, map(self._file_problem, names)))
        if problem:
            self.damage["head"] = problem

    def close(self) -> None:
        self._db.close()

    def _damaged(self, problem: str) -> GalleryDamaged:
        return GalleryDamaged(f"{self.path}: gallery version {self.version} is damaged: {problem}; {HEAL}")

    def _open_db(self) -> tuple[sqlite3.Connection, dict[str, Any], Provenance]:
        """The version's database (read-only, its bytes checked first), its meta and provenance;
        Unusable when it cannot be trusted."""
        problem = self._file_problem(DB_FILE)
        if problem is not None:
            raise Unusable(f"{self.version}: {problem}")
        db = None
        try:
            uri = f"{(self.folder / DB_FILE).resolve().as_uri()}?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True)
            meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
            db.execute("SELECT count(*) FROM entries").fetchone()
            return db, meta, Provenance.from_record(meta["provenance"])
        except (sqlite3.Error, ValueError, KeyError, TypeError) as error:
            if db is not None:
                db.close()
            raise Unusable(f"{self.version}: {DB_FILE} cannot be read ({error})") from None

    def _file_problem(self, name: str) -> str | None:
        """What is wrong with the bytes of file `name` (read once; None for a version without manifest)."""
        if self._manifest is None:
            return None
        if name not in self._checked:
            self._checked[name] = self._manifest.check_file(self.folder, name, self._full).problem
        return self._checked[name]

    def _damage(self) -> dict[str, str]:
        """The parts of the version (`vectors`, `head`) whose files are not of the size and shape written
        (no byte of them is read yet)."""
        damage = {}
        file = self.folder / VECTORS_FILE
        manifest = self._manifest
        vectors = manifest.size_problem(self.folder, VECTORS_FILE) if manifest else None
        vectors = vectors or _vectors_problem(file, self._count, self.provenance.embedding_size)
        if vectors is not None:
            damage["vectors"] = vectors
        head = self.folder / HEAD_FOLDER
        if not head.is_dir() or not any(head.iterdir()):
            damage["head"] = f"{HEAD_FOLDER}/ is missing" if not head.is_dir() else f"{HEAD_FOLDER}/ is empty"
        elif manifest is not None:
            names = {name for name in manifest.files if name.startswith(f"{HEAD_FOLDER}/")}
            present = {p.relative_to(self.folder).as_posix() for p in head.rglob("*") if p.is_file()}
            problems = [manifest.size_problem(self.folder, name) for name in sorted(names | present)]
            if any(problems):
                damage["head"] = "; ".join(filter(None, problems))
        return damage

    def _checked_vectors(self) -> np.ndarray:
        """Every row's vector, checked; GalleryDamaged when the file is damaged as a whole."""
        if self._matrix is None and "vectors" not in self.damage:
            self._map_vectors()
        if "vectors" in self.damage:
            raise self._damaged(self.damage["vectors"])
        return self._matrix

    def _map_vectors(self) -> None:
        """Map vectors.npy and parse the matrix from the very bytes checked; note damaged rows in
        `damage["rows"]`, or the file in `damage["vectors"]` when it is damaged as a whole."""
        file, width = self.folder / VECTORS_FILE, self.provenance.embedding_size
        if self._manifest is None:  # written before manifests: its shape and size were checked
            self._matrix = np.load(file, mmap_mode="r", allow_pickle=False)
            return
        with open(file, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        check = self._manifest.check_bytes(VECTORS_FILE, memoryview(mapped), self._full)
        offset = len(mapped) - self._count * width * 4  # the size is as recorded: the header is before
        if check.problem is not None and check.bad_blocks is not None:
            block = self._manifest.block
            bad = rows_in_blocks(check.bad_blocks, block, offset, width * 4, self._count)
            self._bad_rows = np.fromiter(bad, dtype=np.int64)
        if check.problem is not None and not len(self._bad_rows):
            self.damage["vectors"] = check.problem
            return
        if check.problem is not None:
            rows = f"rows {_ranges(self._bad_rows)} ({len(self._bad_rows)} of {self._count} faces)"
            self.damage["rows"] = f"{check.problem} in {rows}"
        matrix = np.frombuffer(mapped, np.float32, self._count * width, offset)
        self._matrix = matrix.reshape(self._count, width)


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    return None if text is None else tuple(json.loads(text))


def _ranges(rows: np.ndarray) -> str:
    """Ascending rows as ranges, the first few: `0-511, 2048-2559 and 3 more`."""
    starts = [0, *np.flatnonzero(np.diff(rows) != 1) + 1]
    spans = [(rows[a], rows[b - 1]) for a, b in zip(starts, [*starts[1:], len(rows)], strict=True)]
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:SHOWN_RANGES])
    return shown + (f" and {len(spans) - SHOWN_RANGES} more" if len(spans) > SHOWN_RANGES else "")


def _vectors_problem(file: Path, rows: int, width: int) -> str | None:
    """Whether vectors.npy holds `rows` x `width` float32 and is as long as its header says."""
    try:
        with open(file, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            start = f.tell()
        size = file.stat().st_size
    except FileNotFoundError:
        return f"{VECTORS_FILE} is missing"
    except PermissionError:
        raise  # not damage: see _reading
    except (OSError, ValueError) as error:
        return f"{VECTORS_FILE} is not a NumPy array file ({error})"
    if shape != (rows, width) or dtype != np.float32 or fortran:
        return f"{VECTORS_FILE} holds {shape} {dtype}, expected ({rows}, {width}) float32 for {rows} entries"
    expected = start + rows * width * 4
    if size != expected:
        return f"{VECTORS_FILE} is {size} bytes, expected {expected}"
    return None


def read(path: Path) -> Snapshot | None:
    """The gallery's current version, its sizes, shapes, database and head checked (its vectors are
    checked when read); None when nothing was ever written at `path`.

    A damaged gallery raises GalleryDamaged with one line that says what is wrong and what heals it.
    """
    path = Path(path)
    with _reading(path):
        return _read(path)


def _read(path: Path) -> Snapshot | None:
    if path.exists() and not path.is_dir():
        raise FacerecError(f"{path}: is a file, not a gallery folder")
    for _ in range(3):  # a writer may swap versions between reading CURRENT and opening the folder
        version = current(path)
        if version is None:
            if _versions(path):
                raise GalleryDamaged(f"{path}: {CURRENT_FILE} is missing; {HEAL}")
            return None
        snapshot, problem = _open_checked(path, version)
        if problem is None:
            return snapshot
        if current(path) == version:  # else a writer removed the version meanwhile: read CURRENT again
            raise GalleryDamaged(f"{path}: {problem}; {HEAL}")
    raise FacerecError(f"{path}: the gallery kept changing while being read; try again")


def _open_checked(path: Path, version: str) -> tuple[Snapshot | None, str | None]:
    """The version, or what is wrong with it."""
    try:
        snapshot = Snapshot(path, version)
    except Unusable as error:
        return None, f"gallery version {error}"
    snapshot.check_head()  # what readers search with; only `vectors()` (a few readers) checks the vectors
    if not snapshot.damage:
        return snapshot, None
    snapshot.close()
    return None, f"gallery version {version} is damaged: {snapshot.describe_damage()}"


def recover(path: Path, full: bool = False) -> tuple[Snapshot | None, str | None]:
    """For a writer (lock held): the newest version whose entries can be read, and what is wrong with
    the gallery (None when its current version is intact). Every file a write would carry over has been
    checked: the snapshot's `damage` names what of it must be rebuilt, and it leaves out the rows whose
    vectors are damaged (`dropped`). (None, None) for a gallery never written."""
    path = Path(path)
    with _reading(path):
        return _recover(path, full)


def _recover(path: Path, full: bool) -> tuple[Snapshot | None, str | None]:
    try:
        version, problem = current(path), None
    except GalleryDamaged:
        version, problem = None, f"{CURRENT_FILE} does not name a version"
    if version is not None:
        try:
            snapshot = _for_writer(path, version, full)
        except Unusable as error:
            problem = f"version {error}"
        else:
            return snapshot, (
                f"version {version} is damaged: {snapshot.describe_damage()}" if snapshot.damage else None
            )
    elif problem is None and _versions(path):
        problem = f"{CURRENT_FILE} is missing"
    if problem is None:
        return None, None
    for older in _versions(path):
        with contextlib.suppress(Unusable):
            snapshot = _for_writer(path, older, full)
            damage = f" (itself damaged: {snapshot.describe_damage()})" if snapshot.damage else ""
            return snapshot, f"{problem}; going back to {older}, the newest readable version{damage}"
    raise FacerecError(
        f"{path}: {problem}, and no other version can be read; move the folder away and index again"
    )


def _for_writer(path: Path, version: str, full: bool) -> Snapshot:
    snapshot = Snapshot(path, version, full)
    snapshot.check_for_writer()
    return snapshot


def current(path: Path) -> str | None:
    """The version CURRENT names, None when there is no CURRENT; GalleryDamaged when it names none."""
    try:
        version = (path / CURRENT_FILE).read_bytes().decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    if not VERSION_NAME.match(version):
        raise GalleryDamaged(f"{path / CURRENT_FILE}: not a gallery version name ({version!r}); {HEAL}")
    return version


def _versions(path: Path) -> list[str]:
    """The version folders present, newest first."""
    try:
        names = [name for name in os.listdir(path) if VERSION_NAME.match(name)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda name: int(VERSION_NAME.match(name).group(1)), reverse=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the gallery's write lock: one writer at a time; the lock dies with its process.

    A writer that wrote nothing leaves nothing: the LOCK file, and the folders it made, are removed.
    """
    path = Path(path)
    _check_writable_folder(path)
    made = [folder for folder in (path, *path.parents) if not folder.exists()]
    with _open_lock(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _check_same_file(lock, path / LOCK_FILE)
        except BlockingIOError:
            raise GalleryBusy(f"{path}: another facerec process is writing this gallery") from None
        try:
            yield
        finally:
            _tidy_unwritten(path, made)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_lock(path: Path):
    try:
        path.mkdir(parents=True, exist_ok=True)
        return open(path / LOCK_FILE, "a")
    except OSError as error:
        raise cannot_write(path, error) from None


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file of the gallery the system refuses to read (its mode, its owner) is not damage to heal."""
    try:
        yield
    except PermissionError as error:
        raise FacerecError(
            f"{path}: this gallery cannot be read ({error.strerror}: {error.filename})"
        ) from None


def cannot_write(path: Path, error: OSError) -> FacerecError:
    """One line for a gallery the file system refuses to write (read-only, no space, no permission)."""
    return FacerecError(f"{path}: this gallery cannot be written ({error.strerror}: {error.filename})")


def _check_same_file(lock, name: Path) -> None:
    """The LOCK held must still be the one in the folder (a writer that wrote nothing removes its own)."""
    try:
        same = os.stat(name).st_ino == os.fstat(lock.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        raise BlockingIOError(errno.EAGAIN, "the lock file was replaced")


def _tidy_unwritten(path: Path, made: list[Path]) -> None:
    """Remove LOCK, and the folders `locked` made, when no version was ever written into the folder."""
    if os.listdir(path) != [LOCK_FILE]:
        return
    (path / LOCK_FILE).unlink()
    for folder in made:
        with contextlib.suppress(OSError):  # another process may have put something there meanwhile
            folder.rmdir()


def _check_writable_folder(path: Path) -> None:
    """Refuse to turn a folder of someone's files into a gallery: it must be new, empty, or a gallery."""
    if path.exists() and not path.is_dir():
        raise FacerecError(f"{path}: is a file, not a gallery folder")
    if path.is_dir() and not (path / CURRENT_FILE).exists():
        foreign = [p.name for p in path.iterdir() if p.name != LOCK_FILE and not _ours(p.name)]
        if foreign:
            raise FacerecError(f"{path}: not a facerec gallery and not empty; choose another --gallery")


def _ours(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or bool(VERSION_NAME.match(name)) or name == CURRENT_FILE


def write(
    path: Path, contents: Contents, head: Head | None, previous: str | None = None, same_as: str | None = None
) -> str:
    """Store `contents` with the fitted `head` as the gallery's new current version; returns its name.

    `previous` is the version the new one was made from, kept beside it (default: CURRENT's; a repair
    names the version it went back to). `same_as` names a version whose vectors and head are those of
    `contents` and `head`, checked by the writer: its files are linked, not written (`head` may then be
    None; see the module docstring). Call inside `locked(path)`.
    """
    path = Path(path)
    try:
        live = current(path)
    except GalleryDamaged:
        live = None
    previous = previous or live
    try:
        return _write(path, contents, head, previous, live, same_as)
    except OSError as error:
        raise cannot_write(path, error) from None


def _write(
    path: Path,
    contents: Contents,
    head: Head | None,
    previous: str | None,
    live: str | None,
    same_as: str | None,
) -> str:
    _remove_leftovers(path, keep={previous, live, same_as} - {None})
    number = (
        max((int(VERSION_NAME.match(name).group(1)) for name in {previous, live} - {None}), default=0) + 1
    )
    version = f"v{number:06d}-{uuid.uuid4().hex[:8]}"
    temp = path / f"{TEMP_PREFIX}{version}"
    temp.mkdir()
    _write_db(temp / DB_FILE, contents, previous)
    if same_as is not None:
        known = _share(path / same_as, temp)
    else:
        known = None
        _write_vectors(temp / VECTORS_FILE, contents.vectors)
        (temp / HEAD_FOLDER).mkdir()
        head.save(temp / HEAD_FOLDER)
    write_manifest(temp, known)
    _fsync_tree(temp)
    os.rename(temp, path / version)
    _fsync_folder(path)
    _replace_text(path / CURRENT_FILE, version + "\n")
    _remove_leftovers(path, keep={version, previous} - {None})
    return version


def _share(source: Path, temp: Path) -> dict[str, dict[str, Any]]:
    """Hard-link (where the file system refuses, copy) the vectors and head files of version `source`
    into `temp`; the manifest records of those files that can be reused (all of them unless `source`
    was written before block checksums)."""
    head = source / HEAD_FOLDER
    names = [VECTORS_FILE, *sorted(p.relative_to(source).as_posix() for p in head.rglob("*") if p.is_file())]
    for name in names:
        (temp / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / name, temp / name)
        except OSError:  # no hard links here (some network and FUSE file systems)
            shutil.copyfile(source / name, temp / name)
    manifest, problem = read_manifest(source)
    if manifest is None or problem is not None or manifest.block != BLOCK:
        return {}
    return {name: manifest.files[name] for name in names if "xxh3_64" in manifest.files.get(name, {})}


def _write_db(target: Path, contents: Contents, previous: str | None) -> None:
    meta = {
        "format": FORMAT,
        "provenance": asdict(contents.provenance),
        "head": contents.head,
        "head_options": contents.head_options,
        "count": len(contents.entries),
        "written_at": now(),
        "previous": previous,
        "manifest": MANIFEST_FILE,
    }
    if contents.people is not None:
        meta["people"] = contents.people
    db = sqlite3.connect(target)
    try:
        db.execute("PRAGMA journal_mode = OFF")  # a fresh file in a private folder: fsync'd as a whole later
        db.executescript(SCHEMA)
        with db:
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        i,
                        e.identity,
                        e.source,
                        e.sha256,
                        None if e.box is None else json.dumps(e.box),
                        e.enrolled_at,
                    )
                    for i, e in enumerate(contents.entries)
                ),
            )
            db.executemany(
                "INSERT INTO skipped VALUES (?, ?, ?)",
                ((s.source, s.sha256, s.reason) for s in contents.skipped),
            )
    finally:
        db.close()


def _write_vectors(target: Path, vectors: np.ndarray) -> None:
    np.save(target, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)


def _replace_text(target: Path, text: str) -> None:
    temp = target.with_name(f"{TEMP_PREFIX}{target.name}")
    with open(temp, "w", encoding="ascii") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, target)
    _fsync_folder(target.parent)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_folder(Path(root))


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(path: Path, keep: set[str]) -> None:
    """Delete versions other than `keep` and the temporary folders of killed writes (lock held)."""
    for child in path.iterdir():
        if child.name in keep or not _ours(child.name) or child.name == CURRENT_FILE:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def fit_head(name: str, options: dict[str, Any], vectors: np.ndarray, labels: Sequence[str]) -> Head:
    """A head of `name` built with `options` and fitted on the gallery's vectors."""
    head = registry().create("head", name, **options)
    import torch  # here, not above: reading a gallery needs no torch

    head.fit(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), labels)
    return head
