"""Every store keeps a gallery as the folder gallery does: the same scenario through the real CLI (and a
real `facerec serve`) on each, every answer compared with the local store's.

The stores: a folder (`local`), Milvus Lite (`milvus:PATH.db`), a real Milvus server
(`milvus:http://...`, started once per session), a real PostgreSQL with pgvector (`postgresql://...`,
likewise) and the test plugin `shelf:FILE.json` (tests/contract/plugins), installed as a third party
installs one. The reference is the facerec API in this process on a folder gallery of the same photos,
before and after the same change; the five-person set at 160 px with `--detector none` (each photo is one
face: the real network, without MTCNN's seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch

import facerec.api
from support import KNN
from support.cli import run_cli
from support.gallery import shrink
from support.seeded_weights import make_seeded_weights
from support.serve import Server, post_image

SIZE = 160
PLUGINS = Path(__file__).parent.parent / "contract" / "plugins"
STORES = ["local", "milvus-lite", "milvus-server", "postgresql", "shelf"]
OWN_UPLOADS = {"local", "milvus-lite"}  # the stores with a folder of their own for enrolled photos
GONE = ("obama", "obama2.jpg")  # the change: this photo removed, a smaller copy of biden's added
ADDED = ("biden", "smaller.jpg")


@dataclass
class Made:
    """The photos, the weights, and the reference answers of a folder gallery (the API, in process)."""

    root: Path
    people: Path  # the five people as first indexed (each store indexes a copy of its own)
    photos: list[Path]
    weights: Path
    env: dict
    before: list[dict]  # identify --json --top-k 4 on `photos`, as the API answers
    after: list[dict]  # the same once the change is indexed
    listed_before: dict[str, int]
    listed_after: dict[str, int]


def change(people: Path) -> None:
    (people / GONE[0] / GONE[1]).unlink()
    shrink(KNN / "train" / "biden" / "biden.jpg", people / ADDED[0] / ADDED[1], size=SIZE - 10)


@pytest.fixture(scope="module")
def made(tmp_path_factory, seeded_weights, torch_home) -> Made:
    root = tmp_path_factory.mktemp("contract")
    people = root / "people"
    for source in sorted((KNN / "train").rglob("*.*")):
        shrink(source, people / source.parent.name / source.name, size=SIZE)
    photos = [
        shrink(source, root / "photos" / source.name, size=SIZE)
        for source in sorted((KNN / "test").glob("*.jpg"))
    ]
    weights = Path(shutil.copyfile(seeded_weights, root / "weights.pt"))
    # fp32 everywhere: which precision `auto` picks is not what this test is about
    env = {"TORCH_HOME": str(torch_home), "FACEREC_MIRROR": "http://127.0.0.1:9", "FACEREC_PRECISION": "fp32"}
    copy = Path(shutil.copytree(people, root / "reference-people"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        gallery = facerec.api.open_gallery(root / "reference", device="cpu")
        gallery.index(copy, weights=weights, detector="none")
        before, listed_before = answers(gallery, photos)
        change(copy)
        gallery.index(copy)
        after, listed_after = answers(gallery, photos)
    return Made(root, people, photos, weights, env, before, after, listed_before, listed_after)


def answers(gallery, photos: list[Path]) -> tuple[list[dict], dict[str, int]]:
    found = [image.to_json() for image in gallery.identify_all(photos, top_k=4)]
    return found, gallery.identities()


@dataclass
class Where:
    """One store under test: its `--gallery`, its own copy of the people, what its processes need."""

    name: str
    gallery: str
    people: Path
    env: dict
    uploads: Path  # where serve keeps enrolled photos (given as --uploads where the store has no folder)
    first: subprocess.CompletedProcess | None = None  # the scenario's first step, once it has run


@pytest.fixture(scope="module", params=STORES)
def where(request, made) -> Where:
    name = request.param
    root = made.root / name
    people = Path(shutil.copytree(made.people, root / "people"))
    env = dict(made.env)
    uploads = root / "uploads"
    if name == "local":
        gallery, uploads = str(root / "gallery"), root / "gallery" / "uploads"
    elif name == "milvus-lite":
        gallery, uploads = f"milvus:{root / 'faces.db'}", root / "faces.db" / "facerec-uploads" / "facerec"
    elif name == "milvus-server":
        gallery = f"milvus:{request.getfixturevalue('milvus_server')}#contract"
    elif name == "postgresql":
        gallery = request.getfixturevalue("postgres_server").database("contract")
    else:
        gallery = f"shelf:{root / 'faces.json'}"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(plugin_site(root)), str(PLUGINS), os.environ.get("PYTHONPATH", "")]
        )
    return Where(name, gallery, people, env, uploads)


def plugin_site(root: Path) -> Path:
    """A site folder in which the test plugin is installed as a distribution with a `facerec` entry point."""
    info = root / "site" / "facerec_shelf-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facerec-shelf\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[facerec]\nshelf = shelf_store\n")
    return root / "site"


def cli(where: Where, *args):
    return run_cli(*args, env=where.env, cwd=where.people.parent)


def index_first(where: Where, made: Made) -> subprocess.CompletedProcess:
    """The scenario's first step on `where`: index the five people with the seeded weights. Every later
    step calls it, so that each also runs alone (`pytest -k`, or xdist sending it to another worker)."""
    if where.first is None:
        where.first = cli(where, "index", where.people, "--gallery", where.gallery, "--weights", made.weights,
                          "--detector", "none")  # fmt: skip
    return where.first


def identified(where: Where, made: Made) -> list[dict]:
    found = cli(where, "identify", *made.photos, "--gallery", where.gallery, "--json", "--top-k", 4)
    assert found.returncode == 0, found.stderr
    return [json.loads(line) for line in found.stdout.splitlines()]


def listed(where: Where) -> dict[str, int]:
    shown = cli(where, "gallery", "--gallery", where.gallery, "--json")
    assert shown.returncode == 0, shown.stderr
    return {row["identity"]: row["faces"] for row in map(json.loads, shown.stdout.splitlines())}


def assert_same_answers(mine: list[dict], theirs: list[dict]) -> None:
    assert len(mine) == len(theirs) == len(set(json.dumps(t["image"]) for t in theirs)) > 0
    for image, other in zip(mine, theirs, strict=True):
        assert image["image"] == other["image"] and len(image["faces"]) == len(other["faces"]) == 1
        for face, same in zip(image["faces"], other["faces"], strict=True):
            assert face["identity"] == same["identity"]
            assert face["distance"] == pytest.approx(same["distance"], abs=1e-4)
            names = [c["identity"] for c in face["candidates"]]
            assert names == [c["identity"] for c in same["candidates"]] and len(set(names)) == 4
            for candidate, expected in zip(face["candidates"], same["candidates"], strict=True):
                assert candidate["distance"] == pytest.approx(expected["distance"], abs=1e-4)


def test_index_identify_and_list_as_the_local_store(where, made):
    first = index_first(where, made)
    assert first.returncode == 0, first.stderr
    assert "9 faces of 5 identities (9 embedded" in first.stdout, first.stdout
    assert_same_answers(identified(where, made), made.before)
    assert listed(where) == made.listed_before


def test_reindex_is_incremental_and_a_removed_face_is_gone(where, made):
    assert index_first(where, made).returncode == 0
    again = cli(where, "index", where.people, "--gallery", where.gallery)
    assert again.returncode == 0, again.stderr
    assert "already up to date; 9 faces of 5 identities (0 embedded, 0 reused, 9 unchanged" in again.stdout
    change(where.people)
    changed = cli(where, "index", where.people, "--gallery", where.gallery)
    assert changed.returncode == 0, changed.stderr
    assert ": updated to " in changed.stdout, changed.stdout  # a new version, which `gallery` lists
    assert "(1 embedded, 0 reused, 8 unchanged, 1 removed" in changed.stdout, changed.stdout
    assert listed(where) == made.listed_after != made.listed_before
    assert_same_answers(identified(where, made), made.after)


def test_other_weights_and_heads_are_refused_in_one_line(where, made):
    assert index_first(where, made).returncode == 0
    other = make_seeded_weights(where.people.parent / "other.pt", salt=1, with_logits=False)
    refused = cli(where, "identify", made.photos[0], "--gallery", where.gallery, "--weights", other)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "this gallery was made with inception-resnet with weights" in refused.stderr
    if where.name != "local":  # a folder gallery keeps a head of facerec's: --head chooses it
        head = cli(where, "index", where.people, "--gallery", where.gallery, "--head", "classifier")
        assert head.returncode == 2 and len(head.stderr.strip().splitlines()) == 1, head.stderr
        assert "searches by itself" in head.stderr


def test_serve_enrolls_and_deletes_keeping_photos_with_the_store(where, made):
    assert index_first(where, made).returncode == 0
    here = where.people.parent / "serve-cwd"
    here.mkdir()
    own = ["--uploads", where.uploads] if where.name not in OWN_UPLOADS else []
    server = Server("--gallery", where.gallery, *own, env=where.env, cwd=here)
    try:
        photo = made.photos[0]
        enrolled = post_image(server.url + "v1/identities/Ada/faces", photo)
        assert enrolled.status_code == 201, enrolled.text
        face_id = enrolled.json()["face_id"]
        kept = [p.name for p in where.uploads.iterdir()]
        assert len(kept) == 1 and kept[0].endswith(".jpeg"), kept
        found = post_image(server.url + "v1/identify", photo).json()
        assert found["faces"][0]["identity"] == "Ada" and found["faces"][0]["distance"] < 1e-3, found
        identities = requests.get(server.url + "v1/identities", timeout=60).json()
        assert {"identity": "Ada", "faces": 1} in identities and len(identities) == 6
        gone = requests.delete(server.url + f"v1/identities/Ada/faces/{face_id}", timeout=60)
        assert gone.status_code == 204, gone.text
        identities = requests.get(server.url + "v1/identities", timeout=60).json()
        assert "Ada" not in {row["identity"] for row in identities} and len(identities) == 5
        assert list(where.uploads.iterdir()) == []
    finally:
        assert server.stop() == 130, server.output  # Ctrl-C: it exits as interrupted
    assert list(here.iterdir()) == []  # nothing in the server's working directory


def test_enrolling_into_a_store_without_a_folder_needs_uploads(tmp_path):
    from facerec.contract.faces import Face
    from facerec.gallery.provenance import Provenance
    from facerec.gallery.stores import open_store
    from facerec.service import edits
    from facerec.service.errors import ServiceError

    store = open_store("milvus:http://127.0.0.1:9")  # refused before anything connects to it
    made = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=4)
    photo = (b"photo", "PNG", Face((1.0, 1.0, 6.0, 6.0)), torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(ServiceError, match="start facerec serve with --uploads DIR to enroll") as refused:
        edits.enroll(store, made, "Ada", *photo)
    assert refused.value.status == 400 and store.uploads is None
