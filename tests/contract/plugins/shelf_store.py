"""A third-party store for the tests: `--gallery shelf:FILE.json`, a whole gallery in one JSON file.

Small on purpose: it shows what a store must do (facerec.contract.parts.Store) and nothing more. A commit
rewrites the file through a temporary file and os.replace, so readers see the old file or the new one;
the write lock is a flock on FILE.lock; it searches by itself, exactly, over every vector.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import numpy as np

from facerec.plugin import Entry, GalleryBusy, Provenance, Skipped, hookimpl, now


class ShelfSearch:
    """Exact nearest identities over the shelf's vectors (as a head's `search`)."""

    default_threshold = None

    def __init__(self, vectors: np.ndarray, identities: list[str]) -> None:
        self.vectors, self.identities = vectors, identities

    def search(self, queries, k: int) -> list[list[tuple[str, float]]]:
        found = []
        for query in np.asarray(queries, dtype=np.float32):
            distances = np.linalg.norm(self.vectors - query, axis=1)
            nearest: dict[str, float] = {}
            for row in np.argsort(distances, kind="stable"):
                nearest.setdefault(self.identities[row], float(distances[row]))
                if len(nearest) == k:
                    break
            found.append(list(nearest.items()))
        return found


class ShelfState:
    """The gallery as the file holds it."""

    head_name = "shelf"

    def __init__(self, record: dict) -> None:
        self.damage: dict[str, str] = {}
        self.head_options: dict = {}
        self.version = record["version"]
        self.written_at = record["written_at"]
        self.provenance = Provenance.from_record(record["provenance"])
        self._entries = [
            Entry(**{**e, "box": tuple(e["box"]) if e["box"] else None}) for e in record["entries"]
        ]
        self._vectors = np.asarray(record["vectors"], dtype=np.float32).reshape(len(self._entries), -1)
        self._skipped = [Skipped(**s) for s in record["skipped"]]

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def skipped(self) -> list[Skipped]:
        return list(self._skipped)

    def identities(self) -> dict[str, int]:
        names = sorted(e.identity for e in self._entries)
        return {name: names.count(name) for name in dict.fromkeys(names)}

    def vectors(self, rows=None) -> np.ndarray:
        return self._vectors if rows is None else self._vectors[list(rows)]

    def load_head(self) -> ShelfSearch:
        return ShelfSearch(self._vectors, [e.identity for e in self._entries])

    def close(self) -> None:
        pass


class ShelfStore:
    fits_heads = False

    def __init__(self, location: str) -> None:
        self.location = f"shelf:{location}"
        self.file = Path(location)

    def read(self) -> ShelfState | None:
        if not self.file.exists():
            return None
        return ShelfState(json.loads(self.file.read_text("utf-8")))

    def current(self) -> str | None:
        state = self.read()
        return None if state is None else state.version

    @contextlib.contextmanager
    def locked(self):
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.file}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GalleryBusy(
                    f"{self.location}: another facerec process is writing this gallery"
                ) from None
            yield

    def recover(self, full: bool = False):
        return self.read(), None

    def commit(self, base: ShelfState | None, change) -> str:
        kept = [base.entries()[row] for row in change.keep] if base else []
        old = (
            base.vectors(change.keep)
            if base and change.keep
            else np.zeros((0, change.provenance.embedding_size))
        )
        vectors = np.concatenate([old, change.added_vectors(change.provenance.embedding_size)])
        version = f"shelf-{int(base.version.split('-')[1]) + 1 if base else 1}"
        record = {
            "version": version,
            "written_at": now(),
            "provenance": change.provenance.__dict__,
            "entries": [e.__dict__ for e in kept + change.added],
            "vectors": vectors.astype(float).ravel().tolist(),
            "skipped": [s.__dict__ for s in change.skipped],
        }
        temp = self.file.with_name(self.file.name + ".tmp")
        temp.write_text(json.dumps(record), "utf-8")
        os.replace(temp, self.file)
        return version


@hookimpl
def register_stores(register):
    register("shelf", ShelfStore)
