"""`facerec index`, `identify` and `gallery` as a user runs them: real subprocesses, real photos, MTCNN."""

from __future__ import annotations

import json
import shutil

import pytest
from gallery_support import shrink, small_people, weights_cache
from PIL import Image, ImageChops

from conftest import SHARED, run_cli


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, seeded_weights):
    """The demo's people (shrunk) plus a two-person photo, a broken file and a blank picture, indexed once."""
    root = tmp_path_factory.mktemp("identify")
    people = small_people(root / "people")
    shrink(SHARED / "faces" / "photos" / "two_people.jpg", people / "pair" / "two.jpg")
    (people / "broken").mkdir()
    (people / "broken" / "x.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(people / "pair" / "blank.png")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = root / "gallery"
    result = run_cli("index", people, "--gallery", gallery, "--weights", seeded_weights, env=env)
    return {"root": root, "people": people, "gallery": gallery, "env": env, "result": result}


def cli(indexed, *args):
    return run_cli(*args, "--gallery", indexed["gallery"], env=indexed["env"])


def test_index_enrolls_the_largest_face_and_names_what_it_skips(indexed):
    result, people = indexed["result"], indexed["people"]
    assert result.returncode == 0, result.stderr
    assert "updated to v000001-" in result.stdout and "10 faces of 6 identities" in result.stdout
    assert sorted(result.stderr.splitlines()) == [
        f"{people / 'broken' / 'x.jpg'}: cannot decode image: not an image file, skipped",
        f"{people / 'pair' / 'blank.png'}: no face found, skipped",
        f"{people / 'pair' / 'two.jpg'}: 2 faces, enrolled the largest",
    ]


def test_a_second_index_is_up_to_date_without_model_flags(indexed):
    result = cli(indexed, "index", indexed["people"])
    assert result.returncode == 0, result.stderr
    assert "already up to date" in result.stdout and "10 unchanged" in result.stdout
    assert "unchanged since the last run" in result.stderr


def test_identify_json_names_enrolled_faces_and_leaves_strangers_unknown(indexed):
    people = indexed["people"]
    stranger = shrink(
        SHARED / "faces" / "test_images" / "angelina_jolie" / "1.jpg", indexed["root"] / "s.jpg"
    )
    images = [
        people / "biden" / "biden.jpg",
        people / "obama" / "obama2.jpg",
        stranger,
        people / "broken" / "x.jpg",
    ]
    result = cli(indexed, "identify", *images, "--json", "--threshold", "0.02")
    assert result.returncode == 1  # the broken file; the others are still answered
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in images]
    for record, name in zip(records[:2], ["biden", "obama"], strict=True):
        (face,) = record["faces"]
        assert face["identity"] == name and face["distance"] < 1e-3
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
        assert face["candidates"][0]["identity"] == name and len(face["candidates"]) == 3
    (face,) = records[2]["faces"]
    assert face["identity"] is None and face["distance"] > 0.02 and len(face["candidates"]) == 3
    assert records[3]["error"].startswith("cannot decode image")
    assert result.stderr.strip() == f"{images[3]}: {records[3]['error']}"


def test_identify_prints_a_table_and_draws_the_photos(indexed, tmp_path):
    photo = indexed["people"] / "pair" / "two.jpg"
    out = tmp_path / "annotated"
    result = cli(
        indexed, "identify", indexed["people"] / "kit_harington" / "john1.jpeg", photo, "--annotate", out
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["IMAGE", "FACE", "IDENTITY", "DISTANCE", "BOX", "CANDIDATES"]
    assert [row.split()[1:3] for row in rows[:2]] == [["1", "kit_harington"], ["1", "pair"]]
    assert rows[2].split()[1] == "2" and len(rows) == 3  # the second face of the pair photo
    drawn = Image.open(out / "two.jpg").convert("RGB")
    original = Image.open(photo).convert("RGB")
    assert drawn.size == original.size and ImageChops.difference(drawn, original).getbbox() is not None
    assert (out / "john1.jpeg").is_file()


def test_gallery_lists_identities_and_counts(indexed):
    result = cli(indexed, "gallery", "--json")
    assert result.returncode == 0, result.stderr
    counts = {r["identity"]: r["faces"] for r in map(json.loads, result.stdout.splitlines())}
    assert counts == {
        "alex_lacamoire": 1,
        "biden": 2,
        "kit_harington": 2,
        "obama": 2,
        "pair": 1,
        "rose_leslie": 2,
    }


def test_identify_refuses_other_weights(indexed, seeded_weights, tmp_path):
    other = tmp_path / "other.pt"
    shutil.copyfile(seeded_weights, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # different bytes: different weights as far as any gallery can tell
    photo = indexed["people"] / "biden" / "biden.jpg"
    refused = cli(indexed, "identify", photo, "--weights", other)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "this gallery was made with inception-resnet" in refused.stderr
