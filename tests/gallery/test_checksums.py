"""Every file of a local gallery is checked when it is read, whatever its size.

Opening used to hash files up to 16 MiB only. These tests damage a gallery past that (10,240 faces:
vectors.npy and the flat faiss.index are 20 MiB each) the ways probes did: rows of vectors.npy
overwritten with another person's vector, rows swapped inside faiss.index. No model is needed: the
photos' bytes are stand-ins, and the writes that carry the rows over reuse known bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import facerec.api
from facerec.gallery.local import folder as store
from facerec.gallery.provenance import Provenance
from facerec_plugins.heads.faiss import FaissHead

FACES = 10_240
PER_PERSON = 4
WIDTH = 512
BLOCK = 2**20  # bytes a manifest checksum covers
PROVENANCE = Provenance("inception-resnet", "vggface2", "ab" * 32, None, "mtcnn", {"name": "mtcnn"})


def photo_bytes(row: int) -> bytes:
    return f"the photo of face {row}".encode()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict:
    """A gallery of FACES faces, PER_PERSON a person, with a flat faiss head; their photos are not on disk."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((FACES // PER_PERSON, WIDTH)).astype(np.float32)
    labels = np.repeat(np.arange(FACES // PER_PERSON), PER_PERSON)
    vectors = centres[labels] + 0.03 * rng.standard_normal((FACES, WIDTH)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"person {label}" for label in labels]
    entries = [
        store.Entry(name, str(root / "photos" / f"{row}.jpg"), hashlib.sha256(photo_bytes(row)).hexdigest(), None, store.now())
        for row, name in enumerate(names)
    ]  # fmt: skip
    head = store.fit_head("faiss", {}, vectors, names)
    contents = store.Contents(PROVENANCE, "faiss", dict(head.options), entries, vectors, [])
    with store.locked(root / "gallery"):
        store.write(root / "gallery", contents, head)
    return {"gallery": root / "gallery", "vectors": vectors, "names": names, "entries": entries}


@pytest.fixture
def copy(big, tmp_path) -> tuple[Path, Path]:
    """A private copy of the big gallery and its current version's folder."""
    gallery = Path(shutil.copytree(big["gallery"], tmp_path / "gallery"))
    return gallery, gallery / (gallery / "CURRENT").read_text().strip()


def vectors_by_source(gallery: Path) -> dict[str, np.ndarray]:
    snapshot = store.read(gallery)
    try:
        return dict(zip((e.source for e in snapshot.entries()), np.array(snapshot.vectors()), strict=True))
    finally:
        snapshot.close()


def overwrite_rows(version: Path, rows: range, source_row: int) -> None:
    """Rows `rows` of vectors.npy become row `source_row`'s vector, in place (same size)."""
    matrix = np.load(version / store.VECTORS_FILE, mmap_mode="r+")
    matrix[rows.start : rows.stop] = matrix[source_row]
    matrix.flush()


def test_the_manifest_records_a_checksum_per_block_of_every_file(copy):
    _, version = copy
    manifest = json.loads((version / store.MANIFEST_FILE).read_text())
    assert manifest["block"] == BLOCK
    for name, record in manifest["files"].items():
        assert set(record) == {"size", "sha256", "xxh3_64"}, name
        assert len(record["xxh3_64"]) == -(-record["size"] // BLOCK), name
    assert manifest["files"][store.VECTORS_FILE]["size"] > 16 * 2**20  # past what opening used to hash


def test_damaged_rows_of_a_large_gallery_are_not_carried_into_the_next_version(big, copy, tmp_path):
    """`facerec index` copied overwritten rows into its new version, whose fresh manifest then called
    them intact; now the rows of the damaged block are set aside and embedded again, or named as lost
    when their photos are gone (here), and the rest is kept as it was."""
    gallery, version = copy
    overwrite_rows(version, range(3000, 3010), source_row=0)  # another person's vector
    newcomer = tmp_path / "new" / "person 1" / "copy.jpg"  # known bytes: reused, nothing to embed
    newcomer.parent.mkdir(parents=True)
    newcomer.write_bytes(photo_bytes(7))

    notes = []
    report = facerec.api.open_gallery(gallery).index(tmp_path / "new", note=notes.append)
    damage = "vectors.npy does not match its recorded checksum in rows 2559-3071 (513 of 10240 faces)"
    assert notes[0] == (
        f"{gallery}: version {version.name} is damaged: {damage}; embedding the photos of those 513 faces "
        "again and fitting the head"
    )
    assert notes[1].startswith(f"{gallery}: 513 enrolled faces cannot be rebuilt, their photos are gone")
    assert (report.reused, report.embedded, report.repaired) == (
        1,
        0,
        f"version {version.name} is damaged: {damage}",
    )

    after = vectors_by_source(gallery)
    original = {entry.source: big["vectors"][row] for row, entry in enumerate(big["entries"])}
    assert len(after) == FACES - 513 + 1
    assert not {big["entries"][row].source for row in range(2559, 3072)} & set(after)
    reused = original[big["entries"][7].source]
    assert all(np.array_equal(vector, original.get(source, reused)) for source, vector in after.items())
    assert facerec.api.open_gallery(gallery).repair().version is None  # the new version is intact


def test_rows_swapped_inside_a_large_faiss_index_are_refused_naming_the_file(big, copy):
    """Swapped rows of a 20 MB faiss.index made identify answer the wrong name with exit 0."""
    gallery, version = copy
    index = version / store.HEAD_FOLDER / "faiss.index"
    data = bytearray(index.read_bytes())
    codes = len(data) - FACES * WIDTH * 4  # a flat index keeps its vectors last, row after row
    first, second = (codes + row * WIDTH * 4 for row in (100, 5000))
    size = WIDTH * 4
    data[first : first + size], data[second : second + size] = (
        data[second : second + size],
        data[first : first + size],
    )
    index.write_bytes(bytes(data))
    raw = FaissHead()
    raw.load(index.parent)  # read as it is, the damaged index answers someone else
    query = torch.from_numpy(big["vectors"][100:101])
    assert raw.search(query, 1)[0][0][0] == big["names"][5000] != big["names"][100]

    with pytest.raises(store.GalleryDamaged) as refused:
        store.read(gallery)  # the sizes agree: only the bytes can tell
    assert str(refused.value) == (
        f"{gallery}: gallery version {version.name} is damaged: head/faiss.index does not match its recorded "
        f"checksum; {store.HEAL}"
    )
    notes = []
    facerec.api.open_gallery(gallery).repair(note=notes.append)
    assert notes == [
        f"{gallery}: version {version.name} is damaged: head/faiss.index does not match its recorded "
        "checksum; fitting the head again on the vectors"
    ]
    healed = store.read(gallery)
    assert healed.load_head().search(query, 1)[0][0][0] == big["names"][100]
    healed.close()


def without_block_checksums(version: Path) -> None:
    """Make the version's manifest as facerec wrote it before block checksums: sizes and SHA-256s."""
    manifest = json.loads((version / store.MANIFEST_FILE).read_text())
    files = {name: {"size": r["size"], "sha256": r["sha256"]} for name, r in manifest["files"].items()}
    (version / store.MANIFEST_FILE).write_text(json.dumps({"files": files}))


def test_a_gallery_written_before_block_checksums_is_checked_by_its_sha256s(big, copy):
    gallery, version = copy
    without_block_checksums(version)
    snapshot = store.read(gallery)
    assert np.array_equal(snapshot.vectors(), big["vectors"]) and snapshot.load_head().live_faces == FACES
    snapshot.close()

    overwrite_rows(version, range(9000, 9001), source_row=1)
    snapshot = store.read(gallery)
    with pytest.raises(store.GalleryDamaged, match=r"vectors\.npy does not match its recorded SHA-256;"):
        snapshot.vectors()  # a large file: opening used not to hash it, and the rows were used as they were
    snapshot.close()


def test_a_head_file_the_manifest_does_not_record_is_refused(copy):
    gallery, version = copy
    np.save(version / store.HEAD_FOLDER / "alive.npy.bak", np.ones(3, dtype=bool))
    with pytest.raises(store.GalleryDamaged, match=r"head/alive\.npy\.bak\.npy is not in manifest\.json;"):
        store.read(gallery)


def test_a_damaged_database_is_refused_and_a_write_goes_back_to_the_version_before(big, copy, tmp_path):
    """The database is read by every command; its bytes are checked before SQLite sees them."""
    gallery, version = copy
    newcomer = tmp_path / "new" / "person 1" / "copy.jpg"
    newcomer.parent.mkdir(parents=True)
    newcomer.write_bytes(photo_bytes(7))
    second = facerec.api.open_gallery(gallery).index(tmp_path / "new").version
    database = gallery / second / store.DB_FILE
    data = bytearray(database.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, deep in the entries: SQLite would read it without complaint
    database.write_bytes(bytes(data))
    with pytest.raises(
        store.GalleryDamaged, match=f"{second}: gallery.sqlite does not match its recorded checksum;"
    ):
        store.read(gallery)
    notes = []
    facerec.api.open_gallery(gallery).repair(note=notes.append)
    assert notes[0].startswith(
        f"{gallery}: version {second}: gallery.sqlite does not match its recorded checksum;"
    )
    assert f"going back to {version.name}, the newest readable version" in notes[0]
    assert len(vectors_by_source(gallery)) == FACES
