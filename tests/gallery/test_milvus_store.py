"""The `milvus` store against a real Milvus Lite started by the tests (and Lite's own gRPC server standing
in for a Milvus server at http://127.0.0.1:PORT, the same engine over the network code path).

The five-person set is indexed once per module by a real `facerec index` subprocess into
`milvus:faces.db` (relative to its working directory) and once into a folder gallery in this process;
the CLI's answers from both must agree. Milvus Lite lets one process open a database at a time, so the
tests that work in this process use databases of their own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import facerec.api
from facerec.errors import FacerecError, GalleryBusy, UsageError
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, now
from facerec.gallery.stores import open_store
from facerec_plugins.heads.faiss import FaissHead
from support.cli import run_cli
from support.gallery import KNN, shrink
from support.seeded_weights import make_seeded_weights

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

WIDTH = 16
PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=WIDTH, threshold=1.0)


SIZE = 160  # with `--detector none` each photo is one face: the real network, without MTCNN's seconds


@dataclass
class Made:
    root: Path
    people: Path
    photos: Path
    weights: Path
    env: dict
    first: object  # the CompletedProcess of the first index


@pytest.fixture(scope="module")
def made(tmp_path_factory, seeded_weights, torch_home) -> Made:
    """The five-person set indexed by `facerec index` into milvus:faces.db (relative to `root`)."""
    root = tmp_path_factory.mktemp("milvus")
    people = root / "people"
    for source in sorted((KNN / "train").rglob("*.*")):
        shrink(source, people / source.parent.name / source.name, size=SIZE)
    photos = root / "photos"
    for source in sorted((KNN / "test").glob("*.jpg")):
        shrink(source, photos / source.name, size=SIZE)
    env = {"TORCH_HOME": str(torch_home), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    weights = Path(shutil.copyfile(seeded_weights, root / "weights.pt"))
    first = run_cli(
        "index", people, "--gallery", "milvus:faces.db", "--weights", weights, "--detector", "none",
        cwd=root, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    return Made(root, people, photos, weights, env, first)


def cli(made: Made, *args):
    return run_cli(*args, cwd=made.root, env=made.env)


def listed(made: Made) -> dict[str, int]:
    shown = cli(made, "gallery", "--gallery", "milvus:faces.db", "--json")
    assert shown.returncode == 0, shown.stderr
    return {row["identity"]: row["faces"] for row in map(json.loads, shown.stdout.splitlines())}


def current(made: Made) -> str:
    shown = cli(made, "gallery", "--gallery", "milvus:faces.db")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split("(")[1].split(",")[0]


def test_index_identify_and_list_as_a_folder_gallery_does(made, monkeypatch):
    assert (made.root / "faces.db").is_dir()  # relative to the working directory
    assert "9 faces of 5 identities (9 embedded" in made.first.stdout
    found = cli(made, "identify", *sorted(made.photos.iterdir()), "--gallery", "milvus:faces.db", "--json",
                "--top-k", "4")  # fmt: skip
    assert found.returncode == 0, found.stderr
    got = [json.loads(line) for line in found.stdout.splitlines()]

    monkeypatch.setenv("TORCH_HOME", made.env["TORCH_HOME"])
    local = facerec.api.open_gallery(made.root / "local", device="cpu")
    local.index(made.people, weights=made.weights, detector="none")
    expected = [image.to_json() for image in local.identify_all(sorted(made.photos.iterdir()), top_k=4)]
    assert len(got) == len(expected) == 5
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["image"] == theirs["image"] and len(mine["faces"]) == len(theirs["faces"]) == 1
        for face, other in zip(mine["faces"], theirs["faces"], strict=True):
            assert face["identity"] == other["identity"]
            assert face["distance"] == pytest.approx(other["distance"], abs=1e-4)
            names = [c["identity"] for c in face["candidates"]]
            assert names == [c["identity"] for c in other["candidates"]] and len(set(names)) == 4
            for mine_c, theirs_c in zip(face["candidates"], other["candidates"], strict=True):
                assert mine_c["distance"] == pytest.approx(theirs_c["distance"], abs=1e-4)

    assert listed(made) == {"alex_lacamoire": 1, "biden": 2, "kit_harington": 2, "obama": 2, "rose_leslie": 2}
    text = cli(made, "gallery", "--gallery", "milvus:faces.db")
    assert "head      milvus" in text.stdout and "(g000001," in text.stdout


def test_reindex_is_incremental_and_a_removed_face_is_gone(made):
    again = cli(made, "index", made.people, "--gallery", "milvus:faces.db")
    assert again.returncode == 0, again.stderr
    assert "(0 embedded, 0 reused, 9 unchanged" in again.stdout and current(made) == "g000001"
    removed = made.people / "obama" / "obama2.jpg"
    kept = made.root / "obama2.jpg"
    shutil.move(removed, kept)
    shrink(KNN / "train" / "biden" / "biden.jpg", made.people / "biden" / "smaller.jpg", size=SIZE - 10)
    try:
        changed = cli(made, "index", made.people, "--gallery", "milvus:faces.db")
        assert changed.returncode == 0, changed.stderr
        assert "(1 embedded, 0 reused, 8 unchanged, 1 removed" in changed.stdout, changed.stdout
        assert current(made) == "g000002"
        assert listed(made) == {
            "alex_lacamoire": 1,
            "biden": 3,
            "kit_harington": 2,
            "obama": 1,
            "rose_leslie": 2,
        }
    finally:
        shutil.move(kept, removed)
        (made.people / "biden" / "smaller.jpg").unlink()


def test_other_weights_and_heads_are_refused_in_one_line(made):
    other = make_seeded_weights(made.root / "other.pt", salt=1, with_logits=False)
    refused = cli(
        made, "identify", made.photos / "obama1.jpg", "--gallery", "milvus:faces.db", "--weights", other
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "this gallery was made with inception-resnet with weights" in refused.stderr
    head = cli(made, "index", made.people, "--gallery", "milvus:faces.db", "--head", "classifier")
    assert head.returncode == 2 and len(head.stderr.strip().splitlines()) == 1, head.stderr
    assert "searches by itself" in head.stderr


def test_bad_uris_an_unreachable_server_and_a_busy_database_are_one_line(made):
    bad = cli(made, "gallery", "--gallery", "milvus:ftp://host/x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "milvus:ftp://host/x: expected milvus:PATH.db or milvus:http://HOST:PORT" in bad.stderr
    gone = cli(made, "gallery", "--gallery", "milvus:http://127.0.0.1:9")
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert "milvus:http://127.0.0.1:9: cannot open Milvus" in gone.stderr

    store = open_store(f"milvus:{made.root / 'faces.db'}")
    with store.locked():  # the write lock only: this process never opens the database
        busy = cli(made, "index", made.people, "--gallery", "milvus:faces.db")
    assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    assert "milvus:faces.db: another facerec process is writing this gallery" in busy.stderr


def vectors(count: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def entries(count: int, start: int = 0) -> list[Entry]:
    names = ["anna", "Zoë 山田", 'quote"s', "bob", "cy", "di", "ed"]
    return [
        Entry(names[i % len(names)], f"/photos/{i}.jpg", f"{i:064x}", (1.0, 2.0, 3.0, float(i)), now())
        for i in range(start, start + count)
    ]


def write(store, keep, added, matrix, skipped=()) -> str:
    with store.locked():
        base, problem = store.recover()
        assert problem is None
        return store.commit(base, Change(PROVENANCE, None, {}, keep, added, matrix, list(skipped)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Milvus Lite's gRPC server in this process: a Milvus at http://127.0.0.1:PORT."""
    from milvus_lite.server_manager import server_manager_instance

    path = str(tmp_path_factory.mktemp("server") / "server.db")
    yield server_manager_instance.start_and_get_uri(path)
    server_manager_instance.release_server(path)


@pytest.mark.parametrize("where", ["lite", "server"])
def test_commits_are_atomic_searches_exact_and_writers_one_at_a_time(where, tmp_path, server):
    location = (
        f"milvus:{tmp_path / 'g.db'}" if where == "lite" else f"milvus:{server}#{where}_{tmp_path.name[-8:]}"
    )
    store = open_store(location)
    assert store.read() is None and store.current() is None
    matrix, rows = vectors(60), entries(60)
    first = write(store, [], rows, matrix, [Skipped("/photos/notes.txt", "ab" * 32, "no face found")])
    state = store.read()
    assert (state.version, len(state), state.provenance) == (first, 60, PROVENANCE)
    assert state.entries() == rows and np.array_equal(state.vectors(), matrix)
    assert np.array_equal(state.vectors([7, 2]), matrix[[7, 2]])
    assert state.skipped() == [Skipped("/photos/notes.txt", "ab" * 32, "no face found")]

    exact = FaissHead(index="flat")
    exact.fit(torch.from_numpy(matrix), [entry.identity for entry in rows])
    queries = torch.from_numpy(vectors(10, seed=1))
    for k in (1, 3, 7, 9):
        for mine, theirs in zip(state.load_head().search(queries, k), exact.search(queries, k), strict=True):
            assert [name for name, _ in mine] == [name for name, _ in theirs]
            assert np.allclose([d for _, d in mine], [d for _, d in theirs], atol=1e-5)

    second = write(store, list(range(5, 60)), entries(2, start=60), vectors(2, seed=2))
    assert store.current() == second != first and len(store.read()) == 57
    assert store.read().skipped() == []

    # A writer killed mid-commit: rows of the next generation written, some retired, state not switched.
    with store.locked():
        base, _ = store.recover()
        store._retire(store.collection, "id", base.ids()[:3], base.generation + 1)
        store._insert(entries(4, start=100), vectors(4, seed=3), 1000, base.generation + 1)
        reader = store.read()
        assert reader.version == second and reader.entries() == base.entries()
        assert len(reader.load_head().search(queries, 50)[0]) == 7
    with store.locked():
        base, problem = store.recover()
        assert problem is None and base.entries() == reader.entries()
        leftovers = store._rows(store.collection, "id >= 0", ["id", "retired"])
        assert len(leftovers) == 57 and all(row["retired"] == 0 for row in leftovers)

    other = open_store(location)
    busy = pytest.raises(GalleryBusy, match="another facerec process is writing this gallery")
    with store.locked(), busy, other.locked():
        pass
    with other.locked():  # released: the next writer gets it
        pass

    wide = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=8)
    with (
        store.locked(),
        pytest.raises(FacerecError, match="holds 16-dimensional vectors, these models make 8"),
    ):
        base, _ = store.recover()
        store.commit(base, Change(wide, None, {}, [], entries(1), vectors(1)[:, :8]))


def test_uris_parse_or_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("milvus:faces.db#people")
    assert (store.lite, store.collection) == (tmp_path / "faces.db", "people")
    assert store.read() is None and list(tmp_path.iterdir()) == []  # a reader creates nothing
    for missing in ("sub/faces.db", "/nonexistent/x.db"):  # as SQLite: the file is made, its folder is not
        with pytest.raises(FacerecError, match=f"milvus:{missing}: the folder .* does not exist"):
            open_store(f"milvus:{missing}")
    assert not Path("/nonexistent").exists() and list(tmp_path.iterdir()) == []
    assert open_store("milvus:http://db.example:19530").collection == "facerec"
    for bad in ("milvus:", "milvus:ftp://x", "milvus:faces", "milvus:x.db#a-b"):
        with pytest.raises(UsageError, match="milvus:"):
            open_store(bad)


def test_serve_edits_enroll_and_delete_through_the_store(tmp_path, monkeypatch):
    from facerec.contract.faces import Face
    from facerec.service import edits

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".facerec").mkdir()  # edits._keep_photo makes only the last folder of .facerec/uploads
    store = open_store("milvus:edits.db")
    made = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=4, threshold=1.0)
    face = Face((1.0, 1.0, 6.0, 6.0))
    first = edits.enroll(store, made, "Ada", b"photo one", "PNG", face, torch.tensor([1.0, 0, 0, 0]))
    edits.enroll(store, made, "Ada", b"photo two", "PNG", face, torch.tensor([0, 1.0, 0, 0]))
    assert store.read().identities() == {"Ada": 2} and store.read().provenance == made
    edits.delete(store, "Ada", first.to_json()["face_id"])
    assert len(store.read()) == 1
    edits.delete(store, "Ada")
    state = store.read()
    assert len(state) == 0 and state.vectors().shape == (0, 4)
