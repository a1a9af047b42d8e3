"""The gallery store: enrolled faces on disk, never half-written.

A gallery is a folder:

    GALLERY/
      CURRENT                  the name of the live version folder, one line
      LOCK                     held (flock) by the one process writing the gallery
      v000003-1f2e3d4c/        a complete, never modified version:
        gallery.sqlite           meta (what made the vectors, which head), entries, skipped images
        vectors.npy              float32 (N, D) unit embeddings; row i is entry vector_id i
        head/                    the fitted head's own files (FAISS index, classifier weights)

A write builds the new version in a `.tmp-*` folder beside the others, fsyncs every file, renames the
folder to its version name, then replaces CURRENT (write a temporary file, fsync, os.replace, fsync the
folder). A process killed at any moment therefore leaves CURRENT naming either the old complete version
or the new complete one; leftovers of a killed write are removed by the next writer. The version before
the current one is kept, so a reader that has just read CURRENT still finds its files.

Nothing here is pickle: SQLite, .npy read with allow_pickle=False, JSON, and what each head writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.errors import FacerecError
from facerec.provenance import Provenance
from facerec.registry import registry

if TYPE_CHECKING:
    from facerec.parts import Head

FORMAT = 1
CURRENT_FILE = "CURRENT"
LOCK_FILE = "LOCK"
DB_FILE = "gallery.sqlite"
VECTORS_FILE = "vectors.npy"
HEAD_FOLDER = "head"
TEMP_PREFIX = ".tmp-"
VERSION_NAME = re.compile(r"^v(\d{6,})-[0-9a-f]{8}$")
DEFAULT_GALLERY = Path(".facerec") / "gallery"

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


def default_path() -> Path:
    """`FACEREC_GALLERY`, else `.facerec/gallery` under the working directory."""
    return Path(os.environ.get("FACEREC_GALLERY") or DEFAULT_GALLERY)


def now() -> str:
    """The current UTC time as ISO 8601, as galleries record it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    """One enrolled face: who, from which file (absolute path, SHA-256 of its bytes), where in it."""

    identity: str
    source: str
    sha256: str
    box: tuple[float, float, float, float] | None
    enrolled_at: str


@dataclass(frozen=True)
class Skipped:
    """An image that enrolled nothing, remembered so an unchanged one is not processed again."""

    source: str
    sha256: str
    reason: str


@dataclass
class Contents:
    """A whole gallery version in memory: what `write` stores. `vectors[i]` belongs to `entries[i]`."""

    provenance: Provenance
    head: str
    head_options: dict[str, Any]
    entries: list[Entry]
    vectors: np.ndarray
    skipped: list[Skipped]


class Snapshot:
    """One committed version of a gallery, read-only. Cheap to open: entries and vectors load on demand."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version
        self.folder = path / version
        self._db = sqlite3.connect(
            f"{(self.folder / DB_FILE).resolve().as_uri()}?mode=ro&immutable=1", uri=True
        )
        meta = {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM meta")}
        if meta.get("format", 0) > FORMAT:
            raise FacerecError(f"{path}: gallery format {meta['format']} is newer than this facerec reads")
        self.meta = meta
        self.provenance = Provenance.from_record(meta["provenance"])
        self.head_name: str = meta["head"]
        self.head_options: dict[str, Any] = meta["head_options"]

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def entries(self) -> list[Entry]:
        """Every enrolled face, in vector order."""
        rows = self._db.execute(
            "SELECT identity, source, sha256, box, enrolled_at FROM entries ORDER BY vector_id"
        )
        return [Entry(i, src, sha, _box(box), at) for i, src, sha, box, at in rows]

    def skipped(self) -> list[Skipped]:
        return [Skipped(*row) for row in self._db.execute("SELECT source, sha256, reason FROM skipped")]

    def identities(self) -> dict[str, int]:
        """Enrolled faces per identity, by name."""
        rows = self._db.execute("SELECT identity, count(*) FROM entries GROUP BY identity ORDER BY identity")
        return dict(rows.fetchall())

    def vectors(self) -> np.ndarray:
        """The (N, D) float32 embeddings, memory-mapped."""
        return np.load(self.folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)

    def load_head(self) -> Head:
        """The fitted head, built with the recorded options and loaded from this version's files."""
        head = registry().create("head", self.head_name, **self.head_options)
        head.load(self.folder / HEAD_FOLDER)
        return head

    def close(self) -> None:
        self._db.close()


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    return None if text is None else tuple(json.loads(text))


def read(path: Path) -> Snapshot | None:
    """The gallery's current version, or None when nothing was ever written at `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FacerecError(f"{path}: is a file, not a gallery folder")
    for _ in range(3):  # a writer may swap versions between reading CURRENT and opening the folder
        version = _current(path)
        if version is None:
            return None
        try:
            return Snapshot(path, version)
        except sqlite3.Error:
            if _current(path) == version:
                raise FacerecError(f"{path}: gallery version {version} is unreadable") from None
    raise FacerecError(f"{path}: the gallery kept changing while being read; try again")


def _current(path: Path) -> str | None:
    try:
        version = (path / CURRENT_FILE).read_text("ascii").strip()
    except FileNotFoundError:
        return None
    if not VERSION_NAME.match(version):
        raise FacerecError(f"{path / CURRENT_FILE}: not a gallery version name ({version!r})")
    return version


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the gallery's write lock: one writer at a time; the lock dies with its process."""
    path = Path(path)
    _check_writable_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FacerecError(f"{path}: another facerec process is writing this gallery") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def write(path: Path, contents: Contents, head: Head) -> str:
    """Store `contents` with the fitted `head` as the gallery's new current version; returns its name.

    Call inside `locked(path)`.
    """
    path = Path(path)
    previous = _current(path)
    _remove_leftovers(path, keep={previous} if previous else set())
    number = int(VERSION_NAME.match(previous).group(1)) + 1 if previous else 1
    version = f"v{number:06d}-{uuid.uuid4().hex[:8]}"
    temp = path / f"{TEMP_PREFIX}{version}"
    temp.mkdir()
    _write_db(temp / DB_FILE, contents, previous)
    _write_vectors(temp / VECTORS_FILE, contents.vectors)
    (temp / HEAD_FOLDER).mkdir()
    head.save(temp / HEAD_FOLDER)
    _fsync_tree(temp)
    os.rename(temp, path / version)
    _fsync_folder(path)
    _replace_text(path / CURRENT_FILE, version + "\n")
    _remove_leftovers(path, keep={version, previous} - {None})
    return version


def _write_db(target: Path, contents: Contents, previous: str | None) -> None:
    meta = {
        "format": FORMAT,
        "provenance": asdict(contents.provenance),
        "head": contents.head,
        "head_options": contents.head_options,
        "count": len(contents.entries),
        "written_at": now(),
        "previous": previous,
    }
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
