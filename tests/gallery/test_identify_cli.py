"""`facerec index`, `identify` and `gallery` as a user runs them: real subprocesses, real photos, MTCNN.

The dataset holds what a hostile probe put in one: a link back into it, a hidden folder, a FIFO, a loop
of links. Every path skipped must be named with its real reason, and every bad option or refused write
must end in one line, not a traceback, leaving nothing behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from support import SHARED
from support.cli import run_cli
from support.gallery import shrink, small_people, weights_cache


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, seeded_weights):
    """The demo's people (shrunk) plus a two-person photo, a broken file, a blank picture and hostile
    paths (a link back into the folder, a hidden folder, a FIFO, a loop of links), indexed once."""
    root = tmp_path_factory.mktemp("identify")
    people = small_people(root / "people")
    shrink(SHARED / "faces" / "photos" / "two_people.jpg", people / "pair" / "two.jpg")
    (people / "broken").mkdir()
    (people / "broken" / "x.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(people / "pair" / "blank.png")
    (people / "loopdir").symlink_to(".")
    shutil.copytree(people / "obama", people / "...")
    os.mkfifo(people / "pair" / "fifo.jpg")
    (people / "broken" / "loop.jpg").symlink_to("loop.jpg")
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
        f"{people / '...'}: hidden (its name starts with '.'), skipped",
        f"{people / 'broken' / 'loop.jpg'}: symbolic link loop, skipped",
        f"{people / 'broken' / 'x.jpg'}: cannot decode image: not an image file, skipped",
        f"{people / 'loopdir'}: symbolic link back into the dataset (to {os.path.realpath(people)}), "
        "not followed",
        f"{people / 'pair' / 'blank.png'}: no face found, skipped",
        f"{people / 'pair' / 'fifo.jpg'}: a FIFO, not a regular file, skipped",
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
        people / "pair" / "fifo.jpg",
        people / "broken" / "loop.jpg",
    ]
    result = cli(indexed, "identify", *images, "--json", "--threshold", "0.02")
    assert result.returncode == 1  # the broken files; the others are still answered
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
    assert [r["error"] for r in records[4:]] == ["a FIFO, not a regular file", "symbolic link loop"]
    assert result.stderr.splitlines() == [
        f"{image}: {r['error']}" for image, r in zip(images[3:], records[3:], strict=True)
    ]


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


@pytest.mark.parametrize("threshold", ["-1", "nan"])
def test_identify_refuses_a_threshold_no_face_can_meet(indexed, threshold):
    refused = cli(indexed, "identify", indexed["people"] / "biden" / "biden.jpg", "--threshold", threshold)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        "Error: --threshold: must be 0 or more (a distance, or a probability for the classifier head), "
        f"not {float(threshold):g}\n"
    )


def test_a_cuda_device_the_machine_lacks_is_one_line(indexed):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = "cuda" if count == 0 else f"cuda:{count}"  # one past the last GPU where there are some
    for command in (("identify", indexed["people"] / "biden" / "biden.jpg"), ("index", indexed["people"])):
        refused = cli(indexed, *command, "--device", device)  # the index would have nothing new to embed
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(f"Error: --device {device}: ")


@pytest.mark.parametrize(
    ("option", "status"),
    [
        (("-H", "index=bogus"), 2),
        (("-H", "index=hnsw", "-H", "hnsw_m=0"), 2),  # FAISS itself would abort the process
        (("--pretrained", "casia-webface"), 1),  # weights not there
    ],
)
def test_a_failed_first_index_leaves_nothing_behind(indexed, tmp_path, option, status):
    shutil.copytree(indexed["people"] / "obama", tmp_path / "people" / "obama")
    gallery = tmp_path / "new" / "gallery"
    failed = run_cli("index", tmp_path / "people", "--gallery", gallery, *option, env=indexed["env"])
    assert failed.returncode == status and failed.stderr.count("\n") == 1, failed.stderr
    assert os.listdir(tmp_path) == ["people"]


CAPABILITIES_TO_WRITE_ANYWHERE = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
PR_CAPBSET_DROP = 24


def as_a_plain_user() -> None:
    """In the child before exec: drop what lets root write through file permissions, so that a
    read-only gallery is read-only for this process as for any user (nothing to drop for a user)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in CAPABILITIES_TO_WRITE_ANYWHERE:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def as_a_plain_user_run(indexed: dict, *args: object) -> subprocess.CompletedProcess:
    """`facerec ARGS` in a process without root's capabilities, with the fixture's environment."""
    return subprocess.run(
        [sys.executable, "-m", "facerec", *map(str, args)],
        env={**os.environ, **indexed["env"]},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=as_a_plain_user,
    )


def files_of(folder: Path) -> list[tuple[Path, bytes]]:
    return sorted(
        (path.relative_to(folder), path.read_bytes()) for path in folder.rglob("*") if path.is_file()
    )


def test_a_read_only_gallery_is_one_line(indexed, tmp_path):
    gallery = shutil.copytree(indexed["gallery"], tmp_path / "gallery")
    paths = [gallery, *gallery.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        refused = as_a_plain_user_run(indexed, "index", indexed["people"], "--gallery", gallery)
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"Error: {gallery}: this gallery cannot be written (Permission denied: {gallery / 'LOCK'})\n"
    )


def test_an_unreadable_identity_folder_stops_the_index_and_changes_nothing(indexed, tmp_path):
    """Skipping it would read as its photos removed: the next index would drop their faces."""
    gallery = shutil.copytree(indexed["gallery"], tmp_path / "gallery")
    before = files_of(gallery)
    closed = indexed["people"] / "obama"  # the fixture's folder, not a copy: it holds a FIFO and a link loop
    closed.chmod(0)
    try:
        refused = as_a_plain_user_run(indexed, "index", indexed["people"], "--gallery", gallery)
    finally:
        closed.chmod(0o755)
    assert refused.returncode == 1 and refused.stdout == ""
    *notes, last = refused.stderr.splitlines()  # the notes: the fixture's hostile paths, skipped
    assert last == f"Error: {closed}: cannot be read (Permission denied); the gallery is unchanged"
    assert all(note.endswith(("skipped", "not followed")) for note in notes)
    assert files_of(gallery) == before


@pytest.mark.parametrize("name", ["CURRENT", "vectors.npy", "manifest.json"])
def test_a_gallery_file_the_system_refuses_is_one_line_not_damage(indexed, tmp_path, name):
    """Not damage: `index` must not rebuild the gallery past a file it was only refused."""
    gallery = shutil.copytree(indexed["gallery"], tmp_path / "gallery")
    closed = (
        gallery / name if name == "CURRENT" else gallery / (gallery / "CURRENT").read_text().strip() / name
    )
    closed.chmod(0)
    before = files_of(gallery)
    try:
        photo = indexed["people"] / "biden" / "biden.jpg"
        refused = [
            as_a_plain_user_run(indexed, "identify", photo, "--gallery", gallery),
            as_a_plain_user_run(indexed, "index", indexed["people"], "--gallery", gallery),
        ]
    finally:
        closed.chmod(0o644)
    for result in refused:
        assert result.returncode == 1 and result.stdout == ""
        assert (
            result.stderr == f"Error: {gallery}: this gallery cannot be read (Permission denied: {closed})\n"
        )
    assert files_of(gallery) == before


def test_an_annotate_folder_that_cannot_be_written_is_refused_before_any_work(indexed, tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o555)
    photo = indexed["people"] / "biden" / "biden.jpg"
    for folder in (closed, closed / "new" / "deeper"):
        refused = as_a_plain_user_run(
            indexed, "identify", photo, "--gallery", indexed["gallery"], "--annotate", folder
        )
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == (
            f"Error: facerec identify: Invalid value for '--annotate': {folder}: cannot be written "
            "(Permission denied)\n"
        )
    assert list(closed.iterdir()) == []
    empty = cli(indexed, "identify", photo, "--annotate", "")  # not the working directory
    assert empty.returncode == 2 and empty.stderr.endswith("Invalid value for '--annotate': give a folder\n")

    taken = tmp_path / "taken"
    (taken / "biden.jpg").mkdir(parents=True)  # the picture's name is a folder's: the batch goes on
    photos = [photo, indexed["people"] / "pair" / "two.jpg"]
    result = cli(indexed, "identify", *photos, "--annotate", taken)
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 4  # the header, three faces
    assert result.stderr == f"{taken / 'biden.jpg'}: cannot be written (Is a directory)\n"
    assert (taken / "two.jpg").is_file()


def test_a_file_the_system_refuses_that_no_command_foresaw_is_named_not_an_internal_error():
    from facerec.cli import _unexpected

    assert _unexpected(PermissionError(13, "Permission denied", "/x/y.png")) == "/x/y.png: Permission denied"
    assert _unexpected(OSError(5, "Input/output error")).startswith("internal error: OSError: ")
    assert _unexpected(KeyError("k")).startswith("internal error: KeyError: ")


def test_help_states_the_exit_statuses_the_commands_keep():
    index, identify = run_cli("index", "--help"), run_cli("identify", "--help")
    assert (
        " ".join(index.stdout.split()).count(
            "Exit status 0 when any face is enrolled from FOLDER (skipped images do not change it), 1 when none is."
        )
        == 1
    )
    assert "the exit status is then 1, at the end." in " ".join(identify.stdout.split())
