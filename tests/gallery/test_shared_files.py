"""A folder gallery's commit that keeps every row and the head (a people edit, a change of skipped images)
shares the previous version's vectors.npy and head files by hard link instead of writing them again; the
new version reads and checks as any other, and the next real change writes files of its own."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from facerec.gallery.local import folder
from facerec.gallery.local.manifest import read_manifest
from facerec.gallery.local.store import LocalStore
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, unchanged

WIDTH = 16
PROVENANCE = Provenance("inception-resnet", None, "0" * 64, None, "mtcnn", embedding_size=WIDTH)


def vectors(count: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def entries(count: int, start: int = 0) -> list[Entry]:
    return [
        Entry(f"person {i % 7}", f"/photos/{i}.jpg", f"{i:064x}", None, "2026-01-01T00:00:00+00:00")
        for i in range(start, start + count)
    ]


def commit(store: LocalStore, make) -> str:
    """Commit `make(base)` as a writer does: lock, recover, commit."""
    with store.locked():
        base, problem = store.recover()
        assert problem is None
        try:
            return store.commit(base, make(base))
        finally:
            if base is not None:
                base.close()


def shared(path, one: str, other: str) -> dict[str, bool]:
    """For each of the vectors' and head's files: whether versions `one` and `other` share its inode."""
    names = [folder.VECTORS_FILE, *(f"head/{p.name}" for p in (path / one / "head").iterdir())]
    return {name: os.stat(path / one / name).st_ino == os.stat(path / other / name).st_ino for name in names}


def test_a_commit_keeping_rows_and_head_links_their_files(tmp_path):
    store = LocalStore(str(tmp_path / "gallery"))
    matrix = vectors(300)
    first = commit(store, lambda base: Change(PROVENANCE, "faiss", {}, [], entries(300), matrix))
    noted = Skipped("/photos/notes.txt", "ab" * 32, "no face found")
    second = commit(store, lambda base: replace(unchanged(base), skipped=[noted]))

    assert second != first and set(shared(store.path, first, second).values()) == {True}
    records = [read_manifest(store.path / version)[0].files for version in (first, second)]
    assert {name: records[1][name] for name in shared(store.path, first, second)} == {
        name: records[0][name] for name in shared(store.path, first, second)
    }
    state = store.read()
    assert state.version == second and state.skipped() == [noted] and state.entries() == entries(300)
    assert np.array_equal(state.vectors(), matrix)
    queries = torch.from_numpy(vectors(5, seed=1))
    old = folder.Snapshot(store.path, first)
    assert state.load_head().search(queries, 3) == old.load_head().search(queries, 3)
    old.close()
    state.close()
    with store.locked():
        snapshot, problem = store.recover(full=True)  # every file against its SHA-256 too
        assert problem is None and not snapshot.damage
        snapshot.close()

    third = commit(store, lambda base: replace(unchanged(base), added=entries(1, 300), vectors=vectors(1, 2)))
    assert not (store.path / first).exists()  # only the previous version stays
    assert set(shared(store.path, second, third).values()) == {False}
    state = store.read()
    assert len(state) == 301 and np.array_equal(state.vectors()[:300], matrix)
    state.close()
