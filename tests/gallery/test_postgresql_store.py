"""The `postgresql` store against a real PostgreSQL 16 with pgvector 0.6 (the `pgserver` package), started
once per session (tests/gallery/conftest.py, support.postgres): the tests log in over TCP with a SCRAM
password, as users do, and each works in databases of its own.

The five-person set is indexed once per module by a real `facerec index` subprocess into a database, for
the tests of writers, logins, replicas and people; that its answers are a folder gallery's is
tests/gallery/test_store_contract.py's test, over every store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
import requests
import torch

from facerec.errors import FacerecError, GalleryBusy, UsageError
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped, now
from facerec.gallery.stores import open_store
from facerec_plugins.heads.faiss import FaissHead
from support import FACES
from support.cli import run_cli
from support.gallery import KNN, shrink, weights_cache
from support.postgres import PASSWORD, free_port
from support.serve import Server, post_image

WIDTH = 16
PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=WIDTH, threshold=1.0)
SIZE = 160  # with `--detector none` each photo is one face: the real network, without MTCNN's seconds
WAIT_S = 60.0


@dataclass
class Made:
    root: Path
    people: Path
    photos: Path
    weights: Path
    env: dict
    uri: str
    first: object  # the CompletedProcess of the first index


@pytest.fixture(scope="module")
def made(tmp_path_factory, seeded_weights, torch_home, postgres_server) -> Made:
    """The five-person set indexed by `facerec index` into a database of its own."""
    root = tmp_path_factory.mktemp("postgresql")
    people = root / "people"
    for source in sorted((KNN / "train").rglob("*.*")):
        shrink(source, people / source.parent.name / source.name, size=SIZE)
    photos = root / "photos"
    for source in sorted((KNN / "test").glob("*.jpg")):
        shrink(source, photos / source.name, size=SIZE)
    env = {"TORCH_HOME": str(torch_home), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    weights = Path(shutil.copyfile(seeded_weights, root / "weights.pt"))
    uri = postgres_server.database("five_people")
    first = run_cli(
        "index", people, "--gallery", uri, "--weights", weights, "--detector", "none", cwd=root, env=env
    )
    assert first.returncode == 0, first.stderr
    return Made(root, people, photos, weights, env, uri, first)


def cli(made: Made, *args):
    return run_cli(*args, cwd=made.root, env=made.env)


def listed(made: Made, uri: str | None = None) -> dict[str, int]:
    shown = cli(made, "gallery", "--gallery", uri or made.uri, "--json")
    assert shown.returncode == 0, shown.stderr
    return {row["identity"]: row["faces"] for row in map(json.loads, shown.stdout.splitlines())}


def current(made: Made) -> str:
    """The current version, as `facerec gallery` shows it (with the password masked)."""
    shown = cli(made, "gallery", "--gallery", made.uri)
    assert shown.returncode == 0, shown.stderr
    assert "head      postgresql" in shown.stdout and PASSWORD not in shown.stdout + shown.stderr
    return shown.stdout.split("(")[1].split(",")[0]


def one_line(result, status: int) -> str:
    assert result.returncode == status and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_a_second_writer_is_refused_in_one_line_and_readers_go_on(made):
    """(Index, identify, re-index, other weights and heads: tests/gallery/test_store_contract.py.)"""
    assert "9 faces of 5 identities (9 embedded" in made.first.stdout
    before = current(made)
    with open_store(made.uri).locked():  # another writer holds the advisory lock
        busy = cli(made, "index", made.people, "--gallery", made.uri)
        reading = listed(made)  # readers go on
    shown = made.uri.replace(PASSWORD, "***")
    assert f"{shown}: another facerec process is writing this gallery" in one_line(busy, 1)
    assert sum(reading.values()) == 9 and current(made) == before


def test_a_server_down_or_a_wrong_password_is_one_line_without_the_password(made, postgres_server):
    wrong = postgres_server.uri("five_people", password="not-the-pw-7f3a")
    refused = one_line(cli(made, "gallery", "--gallery", wrong), 1)
    assert 'password authentication failed for user "facerec"' in refused
    assert "not-the-pw-7f3a" not in refused and wrong.replace("not-the-pw-7f3a", "***") in refused

    down = f"postgresql://facerec:{PASSWORD}@127.0.0.1:{free_port()}/five_people"
    gone = one_line(cli(made, "identify", made.photos / "obama1.jpg", "--gallery", down), 1)
    assert "cannot connect" in gone and "Connection refused" in gone and PASSWORD not in gone

    # libpq's environment: the password from PGPASSWORD, the `postgres://` spelling of the scheme
    bare = postgres_server.uri("five_people", password=None).replace("postgresql://", "postgres://")
    shown = run_cli(
        "gallery", "--gallery", bare, "--json", cwd=made.root, env={**made.env, "PGPASSWORD": PASSWORD}
    )
    assert shown.returncode == 0, shown.stderr
    assert sum(json.loads(line)["faces"] for line in shown.stdout.splitlines()) == 9


def vectors(count: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def entries(count: int, start: int = 0) -> list[Entry]:
    names = ["anna", "Zoë 山田", 'quote"s', "bob", "cy", "di", "ed"]
    return [
        Entry(
            names[i % len(names)],
            f"/photos/{i}.jpg",
            f"{i:064x}",
            (1.0, 2.0, 3.0, float(i)) if i % 5 else None,
            now(),
        )
        for i in range(start, start + count)
    ]


def write(store, keep, added, matrix, skipped=(), people=None) -> str:
    with store.locked():
        base, problem = store.recover()
        assert problem is None
        return store.commit(
            base, Change(PROVENANCE, None, {}, keep, added, matrix, list(skipped), people=people)
        )


def same_as_exact(state, matrix: np.ndarray, rows: list[Entry], queries: torch.Tensor, ks) -> None:
    exact = FaissHead(index="flat")
    exact.fit(torch.from_numpy(matrix), [entry.identity for entry in rows])
    for k in ks:
        for mine, theirs in zip(state.load_head().search(queries, k), exact.search(queries, k), strict=True):
            assert [name for name, _ in mine] == [name for name, _ in theirs]
            assert np.allclose([d for _, d in mine], [d for _, d in theirs], atol=1e-5)


PEOPLE = {
    "format": 1,
    "names": {"p0001": "Ada", "p0002": None},
    "faces": {"f1": "p0001", "f2": "p0002", "f3": "p0002"},
    "chosen": ["f1"],
    "forgotten": ["f9"],
    "numbered": 2,
}


def test_commits_are_atomic_searches_exact_and_people_kept(postgres_gallery_uri):
    store = open_store(postgres_gallery_uri + "#faces")
    assert store.read() is None and store.current() is None
    matrix, rows = vectors(60), entries(60)
    first = write(store, [], rows, matrix, [Skipped("/photos/notes.txt", "ab" * 32, "no face found")], PEOPLE)
    state = store.read()
    assert (state.version, len(state), state.provenance) == (first, 60, PROVENANCE)
    assert state.entries() == rows and np.array_equal(state.vectors(), matrix)
    assert np.array_equal(state.vectors([7, 2]), matrix[[7, 2]])
    assert state.skipped() == [Skipped("/photos/notes.txt", "ab" * 32, "no face found")]
    assert state.people() == PEOPLE
    queries = torch.from_numpy(vectors(10, seed=1))
    same_as_exact(state, matrix, rows, queries, (1, 3, 7, 9))

    renamed = {**PEOPLE, "names": {"p0001": "Ada L", "p0003": "Cy"}, "faces": {"f1": "p0003"}, "numbered": 3}
    added = entries(2, start=60)
    second = write(store, list(range(5, 60)), added, vectors(2, seed=2), people=renamed)
    now_state = store.read()
    assert store.current() == second != first and len(now_state) == 57
    assert now_state.skipped() == [] and now_state.people() == renamed
    assert now_state.entries() == rows[5:] + added
    # the state read before the commit still reads as it was, statement after statement
    assert state.entries() == rows and np.array_equal(state.vectors(), matrix) and state.people() == PEOPLE
    assert len(state.load_head().search(queries, 50)[0]) == 7
    third = write(store, list(range(57)), [], None)  # people untouched: the base's stay
    assert store.read().people() == renamed and store.current() == third
    with psycopg.connect(postgres_gallery_uri) as connection:  # what the second commit removed is gone
        count = connection.execute(
            "SELECT (SELECT count(*) FROM faces), (SELECT count(*) FROM faces_removed)"
        )
        assert count.fetchone() == (57, 0)

    other = open_store(postgres_gallery_uri + "#faces")
    busy = pytest.raises(GalleryBusy, match="another facerec process is writing this gallery")
    with store.locked(), busy, other.locked():
        pass
    with other.locked():  # released: the next writer gets it
        pass
    elsewhere = open_store(postgres_gallery_uri + "#other")  # another table, another lock
    with store.locked(), elsewhere.locked():
        assert elsewhere.read() is None

    wide = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=8)
    with (
        store.locked(),
        pytest.raises(FacerecError, match="holds 16-dimensional vectors, these models make 8"),
    ):
        base, _ = store.recover()
        store.commit(base, Change(wide, None, {}, [], entries(1), vectors(1)[:, :8]))
    assert store.current() == third


def test_many_faces_of_few_people_still_answer_k_identities(postgres_gallery_uri):
    """The index's candidates of a query among many faces of one person hold one identity; the exact
    scan completes the answer as the flat search gives it."""
    rng = np.random.default_rng(5)
    centre = vectors(1, seed=9)[0]
    crowd = centre + 0.05 * rng.standard_normal((400, WIDTH)).astype(np.float32)
    matrix = np.concatenate([crowd, vectors(30, seed=3)])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = [
        Entry("crowd" if i < 400 else f"single {i}", f"/p/{i}.jpg", f"{i:064x}", None, now())
        for i in range(430)
    ]
    store = open_store(postgres_gallery_uri)
    write(store, [], rows, matrix)
    queries = torch.from_numpy(np.stack([centre, crowd[0] / np.linalg.norm(crowd[0])]))
    same_as_exact(store.read(), matrix, rows, queries, (1, 3, 10))


WRITER = """
import sys
import numpy as np
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry
from facerec.gallery.stores import open_store

store = open_store(sys.argv[1])
width = int(sys.argv[2])
made = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=width, threshold=1.0)
added = [Entry("killed", f"/killed/{i}.jpg", f"{i:064x}", None, "2026-01-01") for i in range(200)]
matrix = np.ones((200, width), np.float32) / np.sqrt(width)
with store.locked():
    base, _ = store.recover()
    print("writing", flush=True)
    store.commit(base, Change(made, None, {}, list(range(10, len(base))), added, matrix))
print("committed", flush=True)
"""


def test_a_writer_killed_mid_commit_leaves_readers_on_the_state_before_and_the_next_writer_proceeds(
    postgres_server, postgres_gallery_uri
):
    store = open_store(postgres_gallery_uri)
    matrix, rows = vectors(60), entries(60)
    first = write(store, [], rows, matrix)
    database = postgres_gallery_uri.rsplit("/", 1)[1]
    # A session of the test holds the state row (FOR SHARE), so the writer's commit stops at its last
    # statement, the state row's update, with every other row of its transaction written.
    blocker = postgres_server.admin(database)
    blocker.autocommit = False
    blocker.execute("SELECT 1 FROM facerec_state FOR SHARE")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, postgres_gallery_uri, str(WIDTH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waiting = until(
            lambda: [s for s in postgres_server.sessions(database) if s["wait_event_type"] == "Lock"]
        )
        assert waiting and waiting[0]["xid"] is not None, (
            writer.stderr.read() if writer.poll() is not None else ""
        )
        assert "INSERT INTO" in waiting[0]["query"] and "facerec_state" in waiting[0]["query"]
        reader = open_store(postgres_gallery_uri).read()
        assert (
            reader.version == first and reader.entries() == rows and np.array_equal(reader.vectors(), matrix)
        )
        assert "killed" not in dict(reader.load_head().search(torch.from_numpy(matrix[:1]), 10)[0])
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
        if writer.poll() is None:
            writer.kill()
    assert writer.stdout.read() == "writing\n"

    later = open_store(postgres_gallery_uri)
    added = entries(3, start=60)
    second = until(lambda: attempt(lambda: write(later, list(range(30)), added, vectors(3, seed=4))))
    assert second == "g000002"
    state = later.read()
    assert state.entries() == rows[:30] + added
    assert "killed" not in state.identities()
    with postgres_server.admin(database) as admin:  # nothing of the killed commit is left in the tables
        assert admin.execute("SELECT count(*) FROM facerec WHERE identity = 'killed'").fetchone()[0] == 0
        assert admin.execute("SELECT count(*) FROM facerec_removed WHERE id < 10").fetchone()[0] == 0


def until(probe, timeout: float = WAIT_S):
    """The first truthy answer of `probe`, polled until `timeout` (then its last answer)."""
    deadline = time.monotonic() + timeout
    while not (answer := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def attempt(call):
    """`call()`, or None while the gallery is busy (a killed writer's session not yet ended)."""
    with contextlib.suppress(GalleryBusy):
        return call()
    return None


def test_serve_replicas_enroll_and_delete_through_the_store(made, postgres_server, tmp_path):
    """Two `facerec serve` processes on one gallery: what one enrolls or deletes, the other answers at
    its next request, and a folder-free reader sees it too."""
    uri = postgres_server.database("served")
    indexed = cli(
        made, "index", made.people, "--gallery", uri, "--weights", made.weights, "--detector", "none"
    )
    assert indexed.returncode == 0, indexed.stderr
    uploads = tmp_path / "uploads"  # the enrolled photos: a gallery on a server has no folder of its own
    uploads.mkdir()
    one = Server("--gallery", uri, "--uploads", uploads, env=made.env)
    try:
        two = Server("--gallery", uri, "--uploads", uploads, env=made.env)
        try:
            photo = made.photos / "obama1.jpg"
            enrolled = post_image(one.url + "v1/identities/Ada/faces", photo)
            assert enrolled.status_code == 201, enrolled.text
            face = enrolled.json()["face_id"]
            assert (
                requests.get(two.url + "v1/identities/Ada", timeout=30).json()["faces"][0]["face_id"] == face
            )
            found = requests.post(
                two.url + "v1/identify", files={"image": photo.open("rb")}, timeout=60
            ).json()
            assert found["faces"][0]["identity"] == "Ada" and found["faces"][0]["distance"] < 1e-3
            assert open_store(uri).read().identities()["Ada"] == 1
            deleted = requests.delete(two.url + f"v1/identities/Ada/faces/{face}", timeout=30)
            assert deleted.status_code == 204, deleted.text
            assert requests.get(one.url + "v1/identities/Ada", timeout=30).status_code == 404
            health = requests.get(one.url + "health", timeout=30).json()
            assert (health["identities"], health["faces"]) == (5, 9)
        finally:
            assert two.stop() == 130 and "Traceback" not in two.output and PASSWORD not in two.output
    finally:
        assert one.stop() == 130 and "Traceback" not in one.output and PASSWORD not in one.output


LIBRARY = [
    "knn/train/biden/biden.jpg",
    "knn/train/biden/biden2.jpg",
    "knn/train/obama/obama.jpg",
    "knn/train/obama/obama2.jpg",
    "knn/test/obama1.jpg",
    "test_images/paul_rudd/1.jpg",
]


def test_people_of_cluster_live_in_the_tables_as_in_a_folder(tmp_path, postgres_gallery_uri):
    """`facerec cluster`, `people name` and `identify` on a PostgreSQL gallery as on a folder."""
    env = {"TORCH_HOME": str(weights_cache(tmp_path / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    photos = tmp_path / "photos"
    for source in LIBRARY:
        shrink(FACES / source, photos / source.replace("/", "_"), 500)

    def cluster(gallery) -> list[dict]:
        ran = run_cli("cluster", photos, "--gallery", gallery, "--backbone", "dlib-resnet", "--json", env=env)
        assert ran.returncode == 0, ran.stderr
        return [json.loads(line) for line in ran.stdout.splitlines()]

    def partition(records) -> set[frozenset[str]]:
        return {frozenset(face["face_id"] for face in r["faces"]) for r in records if r["person"] is not None}

    in_folder, in_postgres = cluster(tmp_path / "folder"), cluster(postgres_gallery_uri)
    assert partition(in_postgres) == partition(in_folder) and len(partition(in_postgres)) >= 2
    person = next(r for r in in_postgres if r["person"] and len(r["faces"]) >= 2)
    named = run_cli("people", "--gallery", postgres_gallery_uri, "name", person["person"], "Someone", env=env)
    assert named.returncode == 0, named.stderr
    again = cluster(postgres_gallery_uri)  # a later run keeps the owner's name
    assert next(r for r in again if r["person"] == person["person"])["name"] == "Someone"
    found = run_cli(
        "identify", person["faces"][0]["image"], "--gallery", postgres_gallery_uri, "--json", env=env
    )
    assert found.returncode == 0, found.stderr
    assert "Someone" in [face["identity"] for face in json.loads(found.stdout)["faces"]]
    kept = open_store(postgres_gallery_uri).read().people()
    assert kept["names"][person["person"]] == "Someone"


def test_uris_parse_or_fail_in_one_line(postgres_server):
    store = open_store("postgresql://ada:s3cret@db.example:5432/faces#people")
    assert (store.table, store.location) == ("people", "postgresql://ada:***@db.example:5432/faces#people")
    assert open_store("postgres://db.example/faces").table == "facerec"
    hidden = open_store("postgresql:///faces?host=/run/postgresql&password=s3cret&sslmode=require")
    assert "s3cret" not in hidden.location and "password=***" in hidden.location
    for bad, reason in (
        ("postgresql:faces", "expected postgresql://USER:PASSWORD@HOST:PORT/DB"),
        ("postgres://ada:s3cret@h/db#a-b", "table 'a-b' must be letters, digits and _"),
        ("postgresql://ada:s3cret@h/db?nosuch=1", 'invalid URI query parameter: "nosuch"'),
    ):
        with pytest.raises(UsageError, match=reason) as refused:
            open_store(bad)
        assert "s3cret" not in str(refused.value)

    # A database without pgvector, and a role that may not add it: one line saying who can.
    plain = open_store(postgres_server.database("no_vector", vector=False))
    assert plain.read() is None
    with pytest.raises(FacerecError, match="a superuser must run CREATE EXTENSION vector in it"):
        write(plain, [], entries(1), vectors(1))
