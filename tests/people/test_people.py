"""People from unlabelled photos, as a user runs it: real photos, dlib-resnet's real weights, the CLI.

The library is the labelled photos of the test material, renamed so their names tell nothing, shrunk
for speed; the true person of every single-person photo is known, so the clusters are scored against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from support import FACES
from support.cli import run_cli
from support.gallery import shrink, weights_cache

# photo -> the one person in it (photos with several people are in the library but not scored)
PEOPLE = {
    "knn/train/alex_lacamoire/img1.jpg": "alex",
    "knn/test/alex_lacamoire1.jpg": "alex",
    "photos/alex-lacamoire.png": "alex",
    "knn/train/biden/biden.jpg": "biden",
    "knn/train/biden/biden2.jpg": "biden",
    "knn/train/kit_harington/john1.jpeg": "kit",
    "knn/train/kit_harington/john2.jpeg": "kit",
    "knn/test/johnsnow_test1.jpg": "kit",
    "knn/train/obama/obama.jpg": "obama",
    "knn/train/obama/obama2.jpg": "obama",
    "knn/test/obama1.jpg": "obama",
    "photos/obama3.jpg": "obama",
    "photos/obama_small.jpg": "obama",
    "knn/train/rose_leslie/img1.jpg": "rose",
    "knn/train/rose_leslie/img2.jpg": "rose",
    "test_images/paul_rudd/1.jpg": "paul",
    "test_images/kate_siegel/1.jpg": "kate",
}
GROUPS = ["knn/test/kit_with_rose.jpg", "knn/test/obama_and_biden.jpg"]
LATER = [
    "photos/obama_partial_face.jpg",
    "test_images/angelina_jolie/1.jpg",
    "test_images/shea_whigham/1.jpg",
]
SIZE = 700


def library(folder: Path, photos: list[str]) -> dict[str, str]:
    """The photos as folder/photoNN.jpg (names that say nothing); returns file -> true person."""
    truth = {}
    for photo in photos:
        target = folder / f"photo{sorted([*PEOPLE, *GROUPS, *LATER]).index(photo):02d}.jpg"
        shrink(FACES / photo, target, SIZE)
        if photo in PEOPLE:
            truth[str(target)] = PEOPLE[photo]
    return truth


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = weights_cache(tmp_path_factory.mktemp("people") / "torch-home")
    return {"TORCH_HOME": str(home), "FACEREC_MIRROR": "http://127.0.0.1:9"}


def cluster(env, gallery, *photos, extra=()):
    result = run_cli(
        "cluster", *photos, "--gallery", gallery, "--backbone", "dlib-resnet", "--json", *extra, env=env
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def people_json(env, gallery):
    result = run_cli("people", "--gallery", gallery, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def partition(records) -> set[frozenset[str]]:
    return {frozenset(face["face_id"] for face in r["faces"]) for r in records if r["person"] is not None}


@pytest.fixture(scope="module")
def clustered(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    truth = library(root / "photos", [*PEOPLE, *GROUPS])
    gallery = root / "gallery"
    records, _ = cluster(env, gallery, root / "photos")
    return root, gallery, truth, records


def test_the_clusters_are_the_people(clustered):
    _, _, truth, records = clustered
    assert records[-1]["person"] is None and all(r["person"] for r in records[:-1])
    person_of = {}  # scored photo -> the person its face was put in (None: unassigned)
    for record in records:
        for face in record["faces"]:
            if face["image"] in truth:
                person_of[face["image"]] = record["person"]
    assert set(person_of) == set(truth)  # every scored photo's face was found
    pairs = list(combinations(sorted(truth), 2))
    found = [(a, b) for a, b in pairs if person_of[a] is not None and person_of[a] == person_of[b]]
    true = [(a, b) for a, b in pairs if truth[a] == truth[b]]
    precision = len(set(found) & set(true)) / len(found)
    recall = len(set(found) & set(true)) / len(true)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    singles = [image for image, who in truth.items() if list(truth.values()).count(who) == 1]
    assert all(person_of[image] is None for image in singles)  # one photo of someone: nobody's person


def test_a_second_run_embeds_nothing_and_an_incremental_run_equals_a_fresh_one(env, tmp_path):
    library(tmp_path / "photos", [*PEOPLE][:9])
    gallery = tmp_path / "gallery"
    cluster(env, gallery, tmp_path / "photos")
    again = run_cli("cluster", tmp_path / "photos", "--gallery", gallery, env=env)
    assert again.returncode == 0 and "already up to date" in again.stdout and "(0 embedded)" in again.stdout
    library(tmp_path / "photos", [*PEOPLE][9:])
    grown, _ = cluster(env, gallery, tmp_path / "photos")
    fresh, _ = cluster(env, tmp_path / "fresh", tmp_path / "photos")
    assert partition(grown) == partition(fresh)


def test_the_owners_choices_survive_a_later_cluster_and_named_people_are_identified(env, clustered, tmp_path):
    root, gallery, truth, records = clustered
    work = tmp_path / "gallery"
    subprocess.run(["cp", "-r", str(gallery), str(work)], check=True)
    by_person = {r["person"]: r for r in records if r["person"]}
    kit = next(
        p
        for p, r in by_person.items()
        if all(truth.get(f["image"], "kit") == "kit" for f in r["faces"]) and len(r["faces"]) >= 3
    )
    named = run_cli("people", "--gallery", work, "name", kit, "Kit H", env=env)
    assert named.returncode == 0 and named.stdout.strip() == f"{kit} is Kit H"
    others = [p for p in by_person if p != kit]
    merged = run_cli("people", "--gallery", work, "merge", others[0], others[1], env=env)
    assert merged.returncode == 0, merged.stderr
    moved_face = by_person[kit]["faces"][0]["face_id"]
    moved = run_cli("people", "--gallery", work, "move", moved_face, "--to", "new", env=env)
    assert moved.returncode == 0 and moved.stdout.startswith("moved 1 faces to p")
    new_person = moved.stdout.split()[-1]
    forgotten_face = by_person[others[2]]["faces"][0]["face_id"]
    assert run_cli("people", "--gallery", work, "forget", forgotten_face, env=env).returncode == 0
    library(root / "more", LATER)
    later, _ = cluster(env, work, root / "photos", root / "more")
    after = {r["person"]: r for r in later}
    assert after[kit]["name"] == "Kit H"
    assert others[1] not in after and after[others[0]]["name"] is None
    assert [f["face_id"] for f in after[new_person]["faces"]] == [moved_face]
    assert all(forgotten_face not in {f["face_id"] for f in r["faces"]} for r in later)
    photo = FACES / "knn" / "train" / "kit_harington" / "john1.jpeg"
    found = run_cli("identify", photo, "--gallery", work, "--json", env=env)
    assert json.loads(found.stdout)["faces"][0]["identity"] == "Kit H"
    stranger = run_cli(
        "identify", FACES / "test_images" / "paul_rudd" / "1.jpg", "--gallery", work, "--json", env=env
    )
    assert all(face["identity"] in (None, "Kit H") for face in json.loads(stranger.stdout)["faces"])
    sheets = run_cli("people", "--gallery", work, "--sheet", tmp_path / "sheets", env=env)
    assert sheets.returncode == 0 and (tmp_path / "sheets" / f"{kit}.png").is_file()


def test_bad_photos_and_options_are_named_in_one_line(env, tmp_path):
    photos = tmp_path / "photos"
    library(photos, [*PEOPLE][:3])
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "empty.png").write_bytes(b"")
    os.mkfifo(photos / "pipe.jpg")
    gallery = tmp_path / "gallery"
    _, said = cluster(env, gallery, photos, tmp_path / "missing.jpg")
    lines = said.splitlines()
    assert f"{tmp_path / 'missing.jpg'}: no such file, skipped" in lines
    assert any(line.startswith(f"{photos / 'broken.jpg'}: cannot decode image") for line in lines)
    assert any(line.startswith(f"{photos / 'pipe.jpg'}: ") and "skipped" in line for line in lines)
    assert "Traceback" not in said
    for args, message in (
        (["cluster", photos, "-C", "rule=nope"], "unknown rule 'nope'"),
        (["cluster", photos, "-C", "min_faces=NaN"], "min_faces: must be a whole number, 1 or more, not nan"),
        (["cluster", photos, "-C", "min_faces=1.5"], "min_faces: must be a whole number, 1 or more, not 1.5"),
        (["people", "name", "p0999", "X"], "no person 'p0999'"),
        (["people", "move", "0123456789abcdef", "--to", "p0001"], "no face '0123456789abcdef'"),
        (["people", "merge", "p0001"], "give two or more different people"),
    ):
        result = (
            run_cli(*args, "--gallery", gallery, env=env)
            if args[0] == "cluster"
            else run_cli(args[0], "--gallery", gallery, *args[1:], env=env)
        )
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr, (
            args,
            result.stderr,
        )


def test_a_killed_cluster_run_leaves_the_state_before_it(env, clustered, tmp_path):
    root, gallery, _, _ = clustered
    work = tmp_path / "gallery"
    subprocess.run(["cp", "-r", str(gallery), str(work)], check=True)
    before = people_json(env, work)
    for number, photo in enumerate([*PEOPLE, *LATER]):  # new bytes: every photo is embedded again
        shrink(FACES / photo, root / "kill" / f"again{number:02d}.jpg", SIZE - 40)
    command = [
        sys.executable,
        "-m",
        "facerec",
        "cluster",
        str(root / "photos"),
        str(root / "kill"),
        "--gallery",
        str(work),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(3.0)  # models loading or embedding: well before the commit of a run that takes longer
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert people_json(env, work) == before
    after, _ = cluster(env, work, root / "photos", root / "kill")  # the next run proceeds
    assert {r["person"] for r in before if r["person"]} <= {r["person"] for r in after if r["person"]}


def test_people_live_in_a_milvus_gallery_as_in_a_folder(env, tmp_path):
    """The same run, name and identify on a Milvus Lite store: the people record travels with its state."""
    library(tmp_path / "photos", [*PEOPLE][:8])
    folder, milvus = tmp_path / "folder", f"milvus:{tmp_path / 'people.db'}"
    in_folder, _ = cluster(env, folder, tmp_path / "photos")
    in_milvus, _ = cluster(env, milvus, tmp_path / "photos")
    assert partition(in_milvus) == partition(in_folder)
    person = next(r["person"] for r in in_milvus if r["person"] and len(r["faces"]) >= 2)
    named = run_cli("people", "--gallery", milvus, "name", person, "Someone", env=env)
    assert named.returncode == 0, named.stderr
    (face, *_) = next(r for r in people_json(env, milvus) if r["person"] == person)["faces"]
    found = run_cli("identify", face["image"], "--gallery", milvus, "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert "Someone" in [f["identity"] for f in json.loads(found.stdout)["faces"]]
