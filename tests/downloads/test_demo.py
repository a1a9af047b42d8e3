"""The README's main job, `facerec demo`, end to end against a real HTTP mirror on loopback, and offline."""

from __future__ import annotations

from facerec.demo import FILES, has_identities
from facerec.pipeline.weights import sha256_file
from support import SHARED
from support.cli import run_cli
from support.mirror import VGGFACE2_URL_PATH


def test_demo_fetches_verifies_indexes_identifies_and_draws(mirror, seeded_weights, tmp_path):
    mirror.serve_demo()
    mirror.serve_mtcnn()
    mirror.serve(VGGFACE2_URL_PATH, seeded_weights)  # stands in for the vggface2 release file
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    fetched = {
        path.relative_to(tmp_path / "datasets").as_posix(): path
        for path in tmp_path.glob("datasets/*/**/*.*")
    }
    expected = {
        relative.replace("train/", "custom_images/", 1).replace("test/", "demo_photos/", 1): digest
        for relative, digest in FILES.items()
    }
    assert {name: sha256_file(path) for name, path in fetched.items()} == expected
    assert expected == {  # the hashes the project embeds are those of the published files
        relative.replace("train/", "custom_images/", 1).replace("test/", "demo_photos/", 1): sha256_file(
            SHARED / "faces" / "knn" / relative
        )
        for relative in FILES
    }
    assert VGGFACE2_URL_PATH in mirror.requests
    assert (tmp_path / "torch-home" / "checkpoints" / "20180402-114759-vggface2.pt").is_file()

    lines = result.stdout.splitlines()
    assert "9 faces of 5 identities" in lines[0]
    assert lines[1].split() == ["IMAGE", "FACE", "IDENTITY", "DISTANCE", "BOX", "CANDIDATES"]
    photos = {line.split()[0] for line in lines[2:-1]}
    assert photos == {
        f"datasets/demo_photos/{name.split('/')[1]}" for name in FILES if name.startswith("test/")
    }
    assert lines[-1] == "annotated photos in out/annotated/"
    assert sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir()) == sorted(
        name.split("/")[1] for name in FILES if name.startswith("test/")
    )
    assert "obama.jpg: 2 faces, enrolled the largest" in result.stderr


def test_demo_offline_says_what_to_do_in_one_line(offline, tmp_path):
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: cannot download http://127.0.0.1:9/ageitgey/face_recognition/raw/master/")
    assert "no connection (offline?)" in line and "FACEREC_MIRROR=http://host:port" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-downloaded left behind
    assert not has_identities(tmp_path / "datasets" / "custom_images")  # so the next run fetches the demo
