"""What is the `milvus` store's own, on Milvus Lite and on a real Milvus server (started once per session
by the `milvus_server` fixture): commits and searches, a writer killed mid-commit, two writers, index
types, URIs, and what a down server or a refused password says. What every store does alike (index,
identify, re-index, provenance, serve) is in test_store_contract.py.

The galleries here are synthetic (16-d unit vectors, no model): the store is driven through its own
interface, by this process and by writer processes of their own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.errors import FacerecError, GalleryBusy, UsageError
from facerec.gallery.provenance import Provenance
from facerec.gallery.records import Change, Entry, Skipped
from facerec.gallery.stores import open_store
from facerec_plugins.heads.faiss import FaissHead
from support.cli import run_cli

WIDTH = 16
PROVENANCE = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=WIDTH, threshold=1.0)
WHERE = ["lite", "server"]
ENROLLED_AT = "2026-01-01T00:00:00+00:00"


@pytest.fixture(params=WHERE)
def location(request, tmp_path) -> str:
    """A new gallery: a Milvus Lite database of this test's own, or a collection of its own on the server."""
    if request.param == "lite":
        return f"milvus:{tmp_path / 'g.db'}"
    return f"milvus:{request.getfixturevalue('milvus_server')}#t_{tmp_path.name[-20:].replace('-', '_')}"


def vectors(count: int, seed: int = 0, width: int = WIDTH) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((count, width)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def entries(count: int, start: int = 0) -> list[Entry]:
    names = ["anna", "Zoë 山田", 'quote"s', "bob", "cy", "di", "ed"]
    return [
        Entry(names[i % len(names)], f"/photos/{i}.jpg", f"{i:064x}", (1.0, 2.0, 3.0, float(i)), ENROLLED_AT)
        for i in range(start, start + count)
    ]


def write(store, keep, added, matrix, skipped=(), provenance=PROVENANCE) -> str:
    with store.locked():
        base, problem = store.recover()
        assert problem is None
        return store.commit(base, Change(provenance, None, {}, keep, added, matrix, list(skipped)))


def let_go(store) -> None:
    """End this process's hold of a Milvus Lite database, so that another process can open it (Lite
    serves one process at a time); nothing to do for a server."""
    if store.lite is not None and store._client is not None:
        from milvus_lite.server_manager import server_manager_instance

        store._client.close()
        server_manager_instance.release_server(str(store.lite))
        store._client = None


def same_as_exact(state, matrix: np.ndarray, names: list[str], queries: np.ndarray, k: int) -> None:
    exact = FaissHead(index="flat")
    exact.fit(torch.from_numpy(matrix), names)
    mine, theirs = state.load_head().search(queries, k), exact.search(torch.from_numpy(queries), k)
    for found, expected in zip(mine, theirs, strict=True):
        assert [name for name, _ in found] == [name for name, _ in expected]
        assert np.allclose([d for _, d in found], [d for _, d in expected], atol=1e-5)


def test_commits_are_atomic_and_searches_exact(location):
    store = open_store(location)
    assert store.read() is None and store.current() is None
    matrix, rows = vectors(60), entries(60)
    first = write(store, [], rows, matrix, [Skipped("/photos/notes.txt", "ab" * 32, "no face found")])
    state = store.read()
    assert (state.version, len(state), state.provenance) == (first, 60, PROVENANCE)
    assert state.entries() == rows and np.array_equal(state.vectors(), matrix)
    assert np.array_equal(state.vectors([7, 2]), matrix[[7, 2]])
    assert state.skipped() == [Skipped("/photos/notes.txt", "ab" * 32, "no face found")]
    for k in (1, 3, 7, 9):
        same_as_exact(state, matrix, [entry.identity for entry in rows], vectors(10, seed=1), k)

    second = write(store, list(range(5, 60)), entries(2, start=60), vectors(2, seed=2))
    assert store.current() == second != first and len(store.read()) == 57
    assert store.read().skipped() == []
    assert first == state.version and len(state.entries()) == 60  # a reader of the first sees it still

    wide = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=8)
    with pytest.raises(FacerecError, match="holds 16-dimensional vectors, these models make 8"):
        write(store, [], entries(1), vectors(1, width=8), provenance=wide)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from facerec.gallery.provenance import Provenance
    from facerec.gallery.records import Change, Entry, now
    from facerec.gallery.stores import open_store
    from facerec_plugins.stores import milvus

    store = open_store(sys.argv[1])
    put = store._put

    def put_or_die(key, value):  # the commit's one switch to the new generation: killed just before it
        if key == milvus.STATE:
            os.kill(os.getpid(), signal.SIGKILL)
        put(key, value)

    store._put = put_or_die
    made = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=16, threshold=1.0)
    added = [Entry("late", f"/late/{i}.jpg", f"{i:064x}", None, now()) for i in range(4)]
    matrix = np.eye(4, 16, dtype=np.float32)
    with store.locked():
        base, _ = store.recover()
        store.commit(base, Change(made, None, {}, list(range(3, len(base))), added, matrix))
    """
)


def test_a_writer_killed_mid_commit_leaves_readers_on_the_previous_state(location):
    store = open_store(location)
    before = write(store, [], entries(20), vectors(20))
    let_go(store)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, location], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    reader = open_store(location)
    state = reader.read()
    assert state.version == before and state.entries() == entries(20)
    same_as_exact(state, vectors(20), [entry.identity for entry in entries(20)], vectors(5, seed=1), 7)
    leftovers = reader._rows(reader.collection, "id >= 0", ["id", "generation", "retired"])
    assert len(leftovers) == 24 and sum(row["retired"] != 0 for row in leftovers) == 3  # it was mid-commit

    after = write(reader, list(range(20)), entries(1, start=20), vectors(1, seed=3))  # not blocked
    state = reader.read()
    assert after != before and state.entries() == entries(21)
    assert len(reader._rows(reader.collection, "id >= 0", ["id"])) == 21  # the killed commit's rows gone


HOLDER = textwrap.dedent(
    """
    import sys, time
    from facerec.gallery.stores import open_store

    with open_store(sys.argv[1]).locked():
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_two_writers_one_refused_in_one_line(location, tmp_path):
    store = open_store(location)
    write(store, [], entries(3), vectors(3))
    let_go(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, location], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n", holder.stderr.read()
        (tmp_path / "people" / "ada").mkdir(parents=True)
        busy = run_cli("index", tmp_path / "people", "--gallery", location)
        assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
        assert f"{store.location}: another facerec process is writing this gallery" in busy.stderr
        busy_here = pytest.raises(GalleryBusy, match="another facerec process is writing this gallery")
        with busy_here, open_store(location).locked():
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("index", ["FLAT", "IVF_SQ8", "HNSW_SQ"])
def test_the_index_type_is_the_galleries_choice(location, index):
    chosen = f"{location.split('#')[0]}?index={index.lower()}#{location.partition('#')[2] or 'facerec'}"
    store = open_store(chosen)
    matrix, rows = vectors(3000), entries(3000)  # a server indexes sealed segments of 1024 rows and more
    if index == "HNSW_SQ" and store.lite is None:  # Milvus 2.5 brought it; this server is 2.3
        with pytest.raises(FacerecError, match=rf"^{re.escape(store.location)}: Milvus: .*HNSW_SQ"):
            write(store, [], rows, matrix)
        return
    write(store, [], rows, matrix)
    state = store.read()
    assert state.head_options["index_type"] == index
    assert store.client.describe_index(store.collection, "vector")["index_type"] == index
    queries = matrix[:200] + 0.05 * vectors(200, seed=4)
    found = state.load_head().search(torch.from_numpy(queries), 1)
    truth = np.argmin(((matrix[None] - queries[:, None]) ** 2).sum(-1), axis=1)
    hits = np.mean([nearest[0][0] == rows[row].identity for nearest, row in zip(found, truth, strict=True)])
    assert hits >= (1.0 if index == "FLAT" else 0.9), hits
    exact = np.linalg.norm(matrix[truth] - queries, axis=1)
    assert np.allclose([nearest[0][1] for nearest in found], exact, atol=0.02)

    other = "HNSW" if index != "HNSW" else "FLAT"
    again = open_store(chosen.replace(f"?index={index.lower()}", f"?index={other}"))
    with pytest.raises(FacerecError, match=f"has a {index} index; [?]index={other} is for a new gallery"):
        write(again, list(range(3000)), [], None)


def test_uris_parse_or_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("milvus:faces.db#people")
    assert (store.lite, store.collection, store.index) == (tmp_path / "faces.db", "people", None)
    assert store.uploads == tmp_path / "faces.db" / "facerec-uploads" / "people"
    assert store.read() is None and list(tmp_path.iterdir()) == []  # a reader creates nothing
    for missing in ("sub/faces.db", "/nonexistent/x.db"):  # as SQLite: the file is made, its folder is not
        with pytest.raises(FacerecError, match=f"milvus:{missing}: the folder .* does not exist"):
            open_store(f"milvus:{missing}")
    assert not Path("/nonexistent").exists() and list(tmp_path.iterdir()) == []
    server = open_store("milvus:http://root:pw@db.example:19530?index=ivf_sq8")
    assert (server.collection, server.index, server.uploads) == ("facerec", "IVF_SQ8", None)
    assert server.location == "milvus:http://root:***@db.example:19530?index=ivf_sq8"
    for bad in ("milvus:", "milvus:ftp://x", "milvus:faces", "milvus:x.db#a-b", "milvus:x.db?index=PQ"):
        with pytest.raises(UsageError, match="milvus:"):
            open_store(bad)
    with pytest.raises(UsageError, match=r"milvus:http://u:\*\*\*@h:1\?nlist=9: unknown option 'nlist'"):
        open_store("milvus:http://u:secret@h:1?nlist=9")


def test_bad_uris_a_down_server_and_a_refused_password_are_one_line(milvus_server):
    def refused(gallery: str, status: int) -> str:
        shown = run_cli("gallery", "--gallery", gallery)
        assert shown.returncode == status and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
        assert (
            "Traceback" not in shown.stderr and "secret" not in shown.stderr and "Milvus@" not in shown.stderr
        )
        return shown.stderr

    bad = refused("milvus:ftp://host/x", 2)
    assert "milvus:ftp://host/x: expected milvus:PATH.db or milvus:http://HOST:PORT" in bad
    down = refused("milvus:http://root:secret@127.0.0.1:9", 1)
    assert "milvus:http://root:***@127.0.0.1:9: cannot open Milvus: Fail connecting to server" in down
    wrong = "milvus:" + milvus_server.replace(":Milvus@", ":secret@")
    password = refused(wrong, 1)
    assert (
        f"{wrong.replace(':secret@', ':***@')}: cannot open Milvus: the server refused the user" in password
    )
    anonymous = milvus_server.replace("root:Milvus@", "")
    assert "the server refused the user or password" in refused(f"milvus:{anonymous}", 1)
