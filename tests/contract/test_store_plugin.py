"""A third-party store, installed as a distribution with a `facerec` entry point, is used by `--gallery`
through its own URI scheme by index, identify and gallery, and answers as a folder gallery does."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support import SHARED
from support.cli import run_cli
from support.gallery import shrink, small_people, weights_cache

PLUGINS = Path(__file__).with_name("plugins")


def test_a_plugin_store_holds_a_gallery_like_a_folder(tmp_path, seeded_weights):
    site = tmp_path / "site"
    info = site / "facerec_shelf-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facerec-shelf\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[facerec]\nshelf = shelf_store\n")
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
        "TORCH_HOME": str(weights_cache(tmp_path / "torch-home")),
        "FACEREC_MIRROR": "http://127.0.0.1:9",
    }
    people = small_people(tmp_path / "people")
    shelf, folder = f"shelf:{tmp_path / 'faces.json'}", tmp_path / "folder"
    for gallery in (shelf, folder):
        made = run_cli("index", people, "--gallery", gallery, "--weights", seeded_weights, env=env)
        assert made.returncode == 0, made.stderr
        assert "9 faces of 5 identities (9 embedded" in made.stdout
    assert json.loads((tmp_path / "faces.json").read_text())["version"] == "shelf-1"

    again = run_cli("index", people, "--gallery", shelf, env=env)
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr

    photos = [
        people / "biden" / "biden.jpg",
        shrink(SHARED / "faces" / "photos" / "two_people.jpg", tmp_path / "two.jpg"),
    ]
    answers = [run_cli("identify", *photos, "--json", "--gallery", g, env=env) for g in (shelf, folder)]
    assert all(answer.returncode == 0 for answer in answers), answers[0].stderr + answers[1].stderr
    found_shelf, found_folder = ([json.loads(line) for line in a.stdout.splitlines()] for a in answers)
    assert found_shelf[0]["faces"][0]["identity"] == "biden"
    for one, other in zip(found_shelf, found_folder, strict=True):
        for face, same in zip(one["faces"], other["faces"], strict=True):
            assert face["identity"] == same["identity"]
            assert [c["identity"] for c in face["candidates"]] == [c["identity"] for c in same["candidates"]]
            assert abs(face["distance"] - same["distance"]) < 1e-4

    listed = run_cli("gallery", "--gallery", shelf, "--json", env=env)
    assert next(json.loads(line) for line in listed.stdout.splitlines()) == {
        "identity": "alex_lacamoire",
        "faces": 1,
    }
    refused = run_cli("index", people, "--gallery", shelf, "--head", "classifier", env=env)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip() == f"Error: --head: {shelf} searches by itself; heads are for folder galleries"
    )
