"""A `facerec index` killed (SIGKILL) at any moment of writing leaves the previous gallery or the new one.

The gallery holds 30,000 entries besides the folder's two, so a write takes long enough to be caught in
each of its phases. The change under test is a deleted photo, which needs no model: every run is a real
`facerec index` subprocess that goes straight to writing the new version, and is killed as soon as a
phase's file appears.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facerec.gallery.local import folder as store
from facerec.gallery.provenance import Provenance
from facerec.pipeline.weights import sha256_file
from support import SHARED

OTHERS = 30_000
ALIGNED = SHARED / "faces" / "test_images_aligned"
PROVENANCE = Provenance("inception-resnet", None, "0" * 64, None, "mtcnn", {"name": "mtcnn"})


def base_gallery(gallery: Path, people: Path) -> str:
    """Two enrolled photos of `people` plus OTHERS entries from elsewhere; returns the version."""
    mine = [
        store.Entry(
            path.parent.name, str(path.resolve()), sha256_file(path), (0.0, 0.0, 160.0, 160.0), store.now()
        )
        for path in sorted(people.rglob("*.png"))
    ]
    others = [
        store.Entry(f"person {i % 5000}", f"/elsewhere/{i}.jpg", f"{i:064x}", None, store.now())
        for i in range(OTHERS)
    ]
    vectors = np.random.default_rng(0).standard_normal((len(mine) + OTHERS, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = mine + others
    head = store.fit_head("faiss", {"index": "flat"}, vectors, [e.identity for e in entries])
    contents = store.Contents(PROVENANCE, "faiss", dict(head.options), entries, vectors, [])
    with store.locked(gallery):
        return store.write(gallery, contents, head)


def state(gallery: Path) -> tuple[str, int]:
    """The current version and its entry count, after checking that the version is whole."""
    snapshot = store.read(gallery)
    try:
        count = len(snapshot)
        assert snapshot.vectors().shape == (count, 512)
        assert snapshot.load_head().live_faces == count
        assert sum(snapshot.identities().values()) == count
        return snapshot.version, count
    finally:
        snapshot.close()


def phase_reached(gallery: Path, phase: str) -> bool:
    """Whether a writer has got as far as `phase` (a file of the version being built, or the rename)."""
    names = os.listdir(gallery)
    if phase == "renamed":
        return sum(1 for name in names if store.VERSION_NAME.match(name)) > 1
    for name in names:
        if name.startswith(store.TEMP_PREFIX + "v") and (
            phase == "folder" or (gallery / name / phase).exists()
        ):
            return True
    return False


def kill_at(gallery: Path, people: Path, phase: str | None) -> bool:
    """Run `facerec index` and SIGKILL it once `phase` is reached; False when it finished first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "facerec", "index", str(people), "--gallery", str(gallery)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if phase is not None and phase_reached(gallery, phase):
            process.kill()
            process.wait()
            return True
        time.sleep(0.001)
    assert process.wait(timeout=120) == 0
    return False


@pytest.fixture
def people(tmp_path):
    for name in ("angelina_jolie", "paul_rudd"):
        (tmp_path / "people" / name).mkdir(parents=True)
        shutil.copyfile(ALIGNED / name / "1.png", tmp_path / "people" / name / "1.png")
    return tmp_path / "people"


def test_a_killed_index_leaves_the_old_gallery_or_the_new_one(tmp_path, people):
    gallery = tmp_path / "gallery"
    old = (base_gallery(gallery, people), OTHERS + 2)
    (people / "paul_rudd" / "1.png").unlink()  # the change: one entry to forget

    for phase in (store.DB_FILE, f"{store.HEAD_FOLDER}/faiss.index", store.MANIFEST_FILE):
        assert kill_at(gallery, people, phase), f"the write finished before reaching {phase}"
        assert state(gallery) == old, f"killed at {phase}"

    killed = kill_at(gallery, people, "renamed")  # between the rename and CURRENT: old or new, never neither
    version, count = state(gallery)
    assert (version, count) == old or (killed and count == OTHERS + 1)

    assert not kill_at(gallery, people, None)  # an undisturbed run completes and tidies up
    version, count = state(gallery)
    assert version > old[0] and count == OTHERS + 1
    leftovers = sorted(name for name in os.listdir(gallery) if name not in ("CURRENT", "LOCK"))
    assert len(leftovers) == 2 and version in leftovers
