"""A damaged gallery says what is wrong in one line, and `index` or `gallery --repair` heals it.

Each test damages a copy of one real gallery (three shrunk demo photos, MTCNN and seeded weights) the
way a probe did: a truncated vectors.npy, a deleted head/, CURRENT naming a version that is gone, a byte
changed in place. What a user runs is run as a real subprocess; the rest through the Python API.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

import facerec.api
from facerec.gallery.local import folder as store
from support import SHARED
from support.cli import run_cli
from support.gallery import KNN, shrink, weights_cache

PHOTOS = {"obama": ["obama.jpg", "obama2.jpg"], "biden": ["biden.jpg"]}


@pytest.fixture(scope="module")
def master(tmp_path_factory, seeded_weights):
    """Three photos of two people indexed into a gallery; the environment to run facerec offline."""
    root = tmp_path_factory.mktemp("repair")
    people = root / "people"
    for person, names in PHOTOS.items():
        for name in names:
            shrink(KNN / "train" / person / name, people / person / name)
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        facerec.api.open_gallery(root / "gallery", device="cpu").index(people, weights=seeded_weights)
        yield {"people": people, "gallery": root / "gallery", "env": env}


@pytest.fixture
def copy(master, tmp_path):
    """A private copy of the master gallery (same photos), and its current version's folder."""
    gallery = Path(shutil.copytree(master["gallery"], tmp_path / "gallery", symlinks=True))
    return gallery, gallery / (gallery / "CURRENT").read_text().strip()


def vectors_by_source(gallery: Path) -> dict[str, np.ndarray]:
    snapshot = store.read(gallery)
    try:
        return {e.source: v for e, v in zip(snapshot.entries(), np.array(snapshot.vectors()), strict=True)}
    finally:
        snapshot.close()


def cli(master, gallery, *args):
    return run_cli(*args, "--gallery", gallery, env=master["env"])


def one_line(result) -> str:
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def forget_manifest(version: Path) -> None:
    """Make the version look written before manifests: no manifest.json, no mention of it."""
    (version / store.MANIFEST_FILE).unlink()
    with sqlite3.connect(version / store.DB_FILE) as db:
        db.execute("DELETE FROM meta WHERE key = 'manifest'")


def truncate(file: Path) -> tuple[int, int]:
    """Cut `file` to half its size, as a full disk or a killed copy leaves it; its sizes before and after."""
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size // 2)
    return size, size // 2


def test_truncated_vectors_are_named_and_rebuilt_from_the_photos(master, copy):
    gallery, version = copy
    size, half = truncate(version / store.VECTORS_FILE)
    photo = master["people"] / "biden" / "biden.jpg"

    refused = cli(master, gallery, "identify", photo)
    assert refused.returncode == 1 and refused.stdout == ""
    assert one_line(refused) == (
        f"Error: {gallery}: gallery version {version.name} is damaged: vectors.npy is {half} bytes, "
        f"expected {size}; {store.HEAL}"
    )
    healed = cli(master, gallery, "index", master["people"])
    assert healed.returncode == 0, healed.stderr
    assert f"{gallery}: repaired and updated to v000002-" in healed.stdout
    assert "3 faces of 2 identities (3 embedded" in healed.stdout
    assert healed.stderr == (
        f"{gallery}: version {version.name} is damaged: vectors.npy is {half} bytes, expected {size}; "
        "embedding the enrolled photos again and fitting the head\n"
    )
    before, after = vectors_by_source(master["gallery"]), vectors_by_source(gallery)
    assert sorted(after) == sorted(before)
    assert all(np.allclose(after[source], before[source], atol=1e-5) for source in before)


def test_a_gallery_written_before_manifests_opens_and_its_truncated_vectors_are_noticed(copy):
    gallery, version = copy
    forget_manifest(version)
    assert len(store.read(gallery)) == 3  # opens as before
    size, half = truncate(version / store.VECTORS_FILE)
    with pytest.raises(store.GalleryDamaged, match=f"vectors.npy is {half} bytes, expected {size};"):
        store.read(gallery)


def test_a_deleted_head_is_named_and_fitted_again_on_the_vectors(master, copy):
    gallery, version = copy
    shutil.rmtree(version / store.HEAD_FOLDER)

    refused = cli(master, gallery, "identify", master["people"] / "obama" / "obama2.jpg")
    assert refused.returncode == 1
    assert one_line(refused) == (
        f"Error: {gallery}: gallery version {version.name} is damaged: head/ is missing; {store.HEAL}"
    )
    healed = cli(master, gallery, "index", master["people"])
    assert healed.returncode == 0, healed.stderr
    assert "repaired and updated to v000002-" in healed.stdout and "(0 embedded" in healed.stdout
    assert healed.stderr.endswith("head/ is missing; fitting the head again on the vectors\n")
    snapshot = store.read(gallery)
    ((name, distance), *_), *_ = snapshot.load_head().search(
        torch.from_numpy(np.array(snapshot.vectors())), 2
    )
    snapshot.close()
    assert name == "biden" and distance < 1e-4  # the first entry, found again by the new head


def test_a_bit_flipped_in_the_head_is_refused_in_one_line_naming_the_file(master, copy):
    gallery, version = copy
    index = version / store.HEAD_FOLDER / "faiss.index"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0x01  # the size agrees: only its bytes can tell
    index.write_bytes(bytes(data))

    refused = cli(master, gallery, "identify", master["people"] / "obama" / "obama.jpg")
    assert refused.returncode == 1 and refused.stdout == ""
    assert one_line(refused) == (
        f"Error: {gallery}: gallery version {version.name} is damaged: head/faiss.index does not match its "
        f"recorded checksum; {store.HEAL}"
    )
    listed = cli(master, gallery, "gallery")
    assert listed.returncode == 1 and one_line(listed) == one_line(refused)


def test_current_naming_a_missing_version_goes_back_to_the_newest_readable_one(master, copy):
    gallery, _ = copy
    second = facerec.api.open_gallery(gallery).index(master["people"], head_options={"index": "flat"})
    assert second.version.startswith("v000002-")  # the head changed: a second version, no model needed
    (gallery / "CURRENT").write_text("v000003-0badf00d\n")

    refused = cli(master, gallery, "gallery")
    assert refused.returncode == 1 and refused.stdout == ""
    assert one_line(refused) == f"Error: {gallery}: gallery version v000003-0badf00d is missing; {store.HEAL}"
    healed = cli(master, gallery, "gallery", "--repair")
    assert healed.returncode == 0, healed.stderr
    assert healed.stdout.startswith(f"{gallery}: repaired, now v000004-")
    assert healed.stdout.endswith("; 3 faces of 2 identities (0 embedded again)\n")
    assert one_line(healed) == (
        f"{gallery}: version v000003-0badf00d is missing; going back to {second.version}, the newest "
        "readable version; making it current"
    )
    snapshot = store.read(gallery)
    assert snapshot.head_options["index"] == "flat" and len(snapshot) == 3
    snapshot.close()
    again = cli(master, gallery, "gallery", "--repair")
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout == f"{gallery}: intact, nothing to repair; 3 faces of 2 identities\n"


def test_repair_checks_every_file_and_keeps_every_face_whose_photo_is_still_there(
    master, copy, tmp_path, monkeypatch
):
    gallery, _ = copy
    for key, value in master["env"].items():
        monkeypatch.setenv(key, value)
    extra = tmp_path / "extra"
    kept = shrink(SHARED / "faces" / "photos" / "lin-manuel-miranda.png", extra / "lin" / "1.jpg")
    gone = shrink(KNN / "train" / "kit_harington" / "john1.jpeg", extra / "kit" / "1.jpg")
    api = facerec.api.open_gallery(gallery, device="cpu")
    api.index(extra)
    before = vectors_by_source(gallery)
    version = gallery / (gallery / "CURRENT").read_text().strip()
    vectors = version / store.VECTORS_FILE
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # the same size, one byte changed
    vectors.write_bytes(bytes(data))
    gone.unlink()

    opened = store.read(gallery)  # sizes agree, and opening reads no vector: it does not notice
    damage = "vectors.npy does not match its recorded checksum in rows 0-4 (5 of 5 faces)"
    with pytest.raises(
        store.GalleryDamaged, match=re.escape(f"version {version.name} is damaged: {damage};")
    ):
        opened.vectors()  # reading them does
    opened.close()
    notes = []
    report = api.repair(note=notes.append)
    assert notes == [
        f"{gallery}: version {version.name} is damaged: {damage}; embedding the photos of those 5 faces "
        "again and fitting the head",
        f"{gallery}: 1 enrolled faces cannot be rebuilt, their photos are gone or changed: {gone}",
    ]
    assert report.embedded == 4 and report.identities == {"biden": 1, "lin": 1, "obama": 2}
    after = vectors_by_source(gallery)
    assert sorted(after) == sorted(set(before) - {str(gone)}) and str(kept) in after
    assert all(np.allclose(after[source], before[source], atol=1e-5) for source in after)
