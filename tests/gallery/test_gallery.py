"""The gallery store, the heads, and incremental enrollment through the Python API with real models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import facerec.api
from facerec.errors import FacerecError
from facerec.gallery.local import folder as store
from facerec.gallery.provenance import Provenance
from facerec_plugins.heads.classifier import ClassifierHead
from facerec_plugins.heads.faiss import FaissHead
from support import SHARED
from support.gallery import KNN, shrink, small_people, weights_cache

PROVENANCE = Provenance("inception-resnet", "vggface2", "ab" * 32, None, "mtcnn", {"name": "mtcnn"})


def clustered(identities: int, per_identity: int, seed: int = 0, spread: float = 0.7):
    """Unit vectors around random identity centres (a face gallery's shape), labels, and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, 512)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(identities), per_identity)
    vectors = centres[labels] + spread / np.sqrt(512) * rng.standard_normal((len(labels), 512)).astype(
        np.float32
    )
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return torch.from_numpy(vectors), [f"person {label}" for label in labels], centres


def contents(entries: int, head: str = "faiss", names=("anna", "Zoë 山田")) -> store.Contents:
    vectors, _, _ = clustered(entries, 1)
    rows = [
        store.Entry(
            names[i % len(names)], f"/photos/{i}.jpg", f"{i:064x}", (1.0, 2.0, 30.0, 40.0), store.now()
        )
        for i in range(entries)
    ]
    return store.Contents(PROVENANCE, head, {}, rows, vectors.numpy(), [])


def commit(path: Path, data: store.Contents) -> str:
    head = store.fit_head(data.head, data.head_options, data.vectors, [e.identity for e in data.entries])
    data.head_options = dict(head.options)
    with store.locked(path):
        return store.write(path, data, head)


def test_store_round_trip_keeps_unicode_names_boxes_vectors_and_head(tmp_path):
    data = contents(6)
    version = commit(tmp_path / "g", data)
    snapshot = store.read(tmp_path / "g")
    assert snapshot.version == version and len(snapshot) == 6
    assert snapshot.identities() == {"Zoë 山田": 3, "anna": 3}
    assert snapshot.entries() == data.entries
    assert np.array_equal(snapshot.vectors(), data.vectors)
    assert snapshot.provenance == PROVENANCE
    ((name, distance), *_) = snapshot.load_head().search(torch.from_numpy(data.vectors[1:2]), 2)[0]
    assert name == "Zoë 山田" and distance < 1e-3


def test_a_write_leaves_current_and_previous_and_clears_a_killed_writes_leftovers(tmp_path):
    path = tmp_path / "g"
    first = commit(path, contents(3))
    (path / ".tmp-v000002-deadbeef").mkdir()  # what a write killed mid-way leaves
    (path / ".tmp-v000002-deadbeef" / "vectors.npy").write_bytes(b"half")
    (path / "v000002-deadbeef").mkdir()  # killed between rename and the CURRENT swap
    second = commit(path, contents(4))
    third = commit(path, contents(5))
    assert sorted(p.name for p in path.iterdir()) == sorted(["CURRENT", "LOCK", second, third])
    assert (path / "CURRENT").read_text().strip() == third
    assert first < second < third  # versions sort in the order they were written
    assert len(store.read(path)) == 5


def test_a_folder_of_other_files_or_a_file_is_not_made_a_gallery(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    with pytest.raises(FacerecError, match="not a facerec gallery and not empty"):
        commit(tmp_path / "photos", contents(2))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacerecError, match="is a file, not a gallery folder"):
        store.read(tmp_path / "file")
    assert store.read(tmp_path / "nothing-yet") is None
    nowhere = facerec.api.open_gallery(tmp_path / "nothing-yet")
    assert nowhere.identities() == {}
    with pytest.raises(
        FacerecError, match="no gallery here; run `facerec index DIR` first or pass --gallery"
    ):
        nowhere.identify(KNN / "test" / "obama1.jpg")


def test_one_writer_at_a_time(tmp_path):
    with store.locked(tmp_path / "g"), pytest.raises(FacerecError, match="another facerec process"):
        commit(tmp_path / "g", contents(2))


def test_faiss_distances_are_euclidean_and_candidates_distinct_identities():
    vectors, labels, _ = clustered(5, 4)
    head = FaissHead()
    head.fit(vectors, labels)
    query = vectors[:1]
    found = head.search(query, 3)[0]
    names = [name for name, _ in found]
    assert len(set(names)) == len(names) == 3 and names[0] == labels[0]
    exact = torch.cdist(query, vectors)[0]
    nearest_other = min(exact[i].item() for i, label in enumerate(labels) if label == found[1][0])
    assert found[0][1] == pytest.approx(0.0, abs=1e-3)
    assert found[1][1] == pytest.approx(nearest_other, abs=1e-4)
    assert head.search(query, 50)[0][-1][0] in labels and len(head.search(query, 50)[0]) == 5


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_exact_search(kind, tmp_path):
    vectors, labels, centres = clustered(500, 4)
    rng = np.random.default_rng(1)
    owners = rng.integers(0, 500, 300)
    queries = centres[owners] + 0.7 / np.sqrt(512) * rng.standard_normal((300, 512)).astype(np.float32)
    queries = torch.from_numpy((queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32))
    exact, approximate = FaissHead(index="flat"), FaissHead(index=kind)
    exact.fit(vectors, labels)
    approximate.fit(vectors, labels)
    truth = [found[0][0] for found in exact.search(queries, 1)]
    answers = [found[0][0] for found in approximate.search(queries, 1)]
    assert np.mean([a == t for a, t in zip(answers, truth, strict=True)]) >= 0.97
    approximate.save(tmp_path)
    loaded = FaissHead(**approximate.options)
    loaded.load(tmp_path)
    assert loaded.search(queries, 3) == approximate.search(queries, 3)


def test_classifier_head_names_fresh_samples_and_survives_save_and_load(tmp_path):
    vectors, labels, centres = clustered(6, 5)
    head = ClassifierHead(epochs=100)
    head.fit(vectors, labels)
    noise = torch.randn(6, 512, generator=torch.Generator().manual_seed(1))
    fresh = torch.nn.functional.normalize(torch.from_numpy(centres) + 0.03 * noise, dim=1)
    found = head.search(fresh, 2)
    assert [f[0][0] for f in found] == [f"person {i}" for i in range(6)]
    assert all(f[0][1] < head.default_threshold and f[0][1] < f[1][1] for f in found)
    head.save(tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy", ".npy", ".npy", ".npy"]
    loaded = ClassifierHead()
    loaded.load(tmp_path)
    assert loaded.search(fresh, 2) == found
    with pytest.raises(FacerecError, match="at least two identities"):
        ClassifierHead().fit(vectors[:3], ["solo"] * 3)


@pytest.fixture
def models(tmp_path, monkeypatch, seeded_weights):
    """A weights cache with MTCNN, no network, and a private copy of the seeded weights."""
    monkeypatch.setenv("TORCH_HOME", str(weights_cache(tmp_path / "torch-home")))
    monkeypatch.setenv("FACEREC_MIRROR", "http://127.0.0.1:9")
    return Path(shutil.copyfile(seeded_weights, tmp_path / "weights.pt"))


def test_index_is_incremental_by_content_identifies_its_own_and_refuses_other_models(tmp_path, models):
    people = small_people(tmp_path / "people")
    (people / "rose_leslie").rename(people / "Rose Leslie — ローズ")
    (people / "notes").mkdir()
    (people / "notes" / "todo.txt").write_text("not a photo")
    gallery = facerec.api.open_gallery(tmp_path / "gallery", device="cpu")
    first = gallery.index(people, weights=models)
    assert (first.embedded, first.reused) == (9, 0)
    assert [(Path(s.source).name, s.reason) for s in first.skipped] == [
        ("todo.txt", "cannot decode image: not an image file")
    ]
    counts = {"alex_lacamoire": 1, "biden": 2, "kit_harington": 2, "obama": 2, "Rose Leslie — ローズ": 2}
    assert first.identities == counts

    newcomer = shrink(SHARED / "faces" / "photos" / "lin-manuel-miranda.png", people / "Lin" / "1.jpg")
    added = gallery.index(people)  # only an addition: the head is extended, not fitted again
    assert (added.embedded, added.removed, added.unchanged) == (1, 0, 9)
    assert store.read(tmp_path / "gallery").load_head().identities[-1] == "Lin"  # appended: not refitted
    (face,) = gallery.identify(newcomer)
    assert face.identity == "Lin" and face.distance < 1e-3

    shrink(KNN / "train" / "biden" / "biden.jpg", people / "biden" / "biden.jpg", size=380)  # new bytes
    changed = gallery.index(people)  # the gallery's own weights file, no flags
    assert (changed.embedded, changed.removed, changed.unchanged) == (1, 1, 9)
    (face,) = gallery.identify(people / "biden" / "biden.jpg")
    assert face.identity == "biden" and face.distance < 1e-3
    assert len({name for name, _ in face.candidates}) == 3
    assert set(face.to_json()) == {"box", "score", "landmarks", "identity", "distance", "candidates"}

    models.unlink()  # from here on, only a run that embeds something would need the weights
    again = gallery.index(people)  # the unreadable file is remembered, not read again
    assert (again.version, again.unchanged, again.embedded, len(again.skipped)) == (None, 10, 0, 1)

    shutil.move(people / "obama" / "obama2.jpg", people / "kit_harington" / "moved.jpg")  # known bytes
    (people / "biden" / "biden2.jpg").unlink()
    (people / "notes" / "todo.txt").unlink()
    moved = gallery.index(people)
    assert (moved.embedded, moved.reused, moved.removed, moved.unchanged, moved.skipped) == (0, 1, 2, 8, [])
    assert moved.identities == {**counts, "biden": 1, "kit_harington": 3, "obama": 1, "Lin": 1}

    switched = gallery.index(people, head="classifier")  # refit on the stored vectors
    assert switched.version is not None and switched.embedded == 0
    snapshot = store.read(tmp_path / "gallery")
    assert snapshot.head_name == "classifier" and len(snapshot) == 9

    with pytest.raises(FacerecError, match="this gallery was made with inception-resnet with weights"):
        gallery.index(people, pretrained="casia-webface")
    with pytest.raises(
        FacerecError, match=r"aligner box \(margin=0.0\); it cannot be searched or extended with .*margin=10"
    ):
        gallery.index(people, aligner_options={"margin": 10.0})


def test_a_gallery_written_before_input_recipes_still_identifies(tmp_path, models):
    """Galleries recorded a `crop` (size, margin, align) and no threshold, and no manifest of their
    files; they open with the recipe that made them and the vggface2 threshold, and identify as before."""
    import json
    import sqlite3

    people = small_people(tmp_path / "people")
    gallery = facerec.api.open_gallery(tmp_path / "gallery", device="cpu")
    gallery.index(people, weights=models)
    photo = people / "obama" / "obama.jpg"
    before = gallery.identify(photo)
    snapshot = store.read(tmp_path / "gallery")
    database, recorded = snapshot.folder / "gallery.sqlite", snapshot.provenance
    snapshot.close()
    old = {key: value for key, value in vars(recorded).items() if key not in ("recipe", "threshold")}
    old["crop"] = {"size": 160, "margin": 0, "align": "box"}
    with sqlite3.connect(database) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'provenance'", (json.dumps(old),))
        db.execute("DELETE FROM meta WHERE key = 'manifest'")
    (database.parent / "manifest.json").unlink()

    reopened = store.read(tmp_path / "gallery")
    assert reopened.provenance.recipe["aligner_options"] == {"margin": 0.0}
    assert reopened.provenance.threshold is None
    reopened.close()
    after = facerec.api.open_gallery(tmp_path / "gallery", device="cpu").identify(photo)
    assert [(f.identity, f.distance) for f in after] == [(f.identity, f.distance) for f in before]
    assert after[0].identity == "obama"
    again = facerec.api.open_gallery(tmp_path / "gallery", device="cpu").index(people)
    assert again.embedded == 0  # the same models: nothing to redo


def test_a_uri_naming_no_registered_store_is_refused_and_makes_no_folder(tmp_path):
    """`--gallery mysql://...` with no store for `mysql`: one line listing the stores, the
    password never shown, nothing made in the working directory; a folder path with a colon still works."""
    from support.cli import run_cli

    for uri in ("mysql://ada:s3cret@db.example:3306/faces", "nosuch:faces.db"):
        result = run_cli("gallery", "--gallery", uri, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        scheme = uri.partition(":")[0]
        assert f"no store is registered for '{scheme}:'" in line and "stores: local, milvus" in line
        assert "s3cret" not in line
    assert list(tmp_path.iterdir()) == []
    listed = run_cli("gallery", "--gallery", "./with:colon", cwd=tmp_path)
    assert (listed.returncode, listed.stderr) == (
        1,
        "Error: ./with:colon: no gallery here; run `facerec index DIR` first or pass --gallery\n",
    )
