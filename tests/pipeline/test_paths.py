"""Hostile paths in a dataset and on the command line: every one skipped is named, with its real reason.

Real files, real FIFOs and real symbolic links; the scan is the one `facerec index`, `train` and
`evaluate` use, the loader the one every command reads images with. A FIFO is never opened (it would
block the reader until someone writes to it), so each check runs under an alarm that fails it instead.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from facerec.gallery.enroll import scan
from facerec.pipeline.images import ImageError, load_image
from support import SHARED

PHOTO = SHARED / "faces" / "knn" / "test" / "obama1.jpg"


@pytest.fixture(autouse=True)
def never_block():
    """Fail, rather than hang, a test whose code opens a FIFO."""

    def blocked(signum, frame):
        raise AssertionError("blocked: something opened a FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def photo(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(PHOTO, target))


def test_scan_never_follows_links_back_into_the_dataset_or_into_a_loop(tmp_path):
    people = tmp_path / "people"
    photo(people / "obama" / "1.jpg")
    (people / "loopdir").symlink_to(".")  # the probe: everyone again under `loopdir`
    (people / "obama" / "again.jpg").symlink_to("1.jpg")  # the same photo twice
    outside = tmp_path / "elsewhere" / "biden"
    photo(outside / "1.jpg")
    (outside / "up").symlink_to("..")  # a loop outside the dataset
    (people / "biden").symlink_to(outside)  # a folder kept elsewhere: followed
    notes = []
    found = scan(people, notes.append)
    assert [(image.identity, Path(image.source).relative_to(people).as_posix()) for image in found] == [
        ("biden", "biden/1.jpg"),
        ("obama", "obama/1.jpg"),
    ]
    assert notes == [
        f"{people / 'biden' / 'up'}: symbolic link loop (to {tmp_path / 'elsewhere'}, a folder that holds "
        "it), not followed",
        f"{people / 'loopdir'}: symbolic link back into the dataset (to {people}), not followed",
        f"{people / 'obama' / 'again.jpg'}: symbolic link back into the dataset "
        f"(to {people / 'obama' / '1.jpg'}), not followed",
    ]


def test_scan_names_hidden_names_fifos_and_broken_or_looping_links(tmp_path):
    people = tmp_path / "people"
    photo(people / "obama" / "1.jpg")
    photo(people / "..." / "1.jpg")
    photo(people / "obama" / ".1.jpg")
    os.mkfifo(people / "obama" / "fifo.jpg")
    (people / "obama" / "loop1.jpg").symlink_to("loop2.jpg")
    (people / "obama" / "loop2.jpg").symlink_to("loop1.jpg")
    (people / "obama" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    notes = []
    found = scan(people, notes.append)
    assert [image.source for image in found] == [str(people / "obama" / "1.jpg")]
    obama = people / "obama"
    assert notes == [
        f"{people / '...'}: hidden (its name starts with '.'), skipped",
        f"{obama / '.1.jpg'}: hidden (its name starts with '.'), skipped",
        f"{obama / 'fifo.jpg'}: a FIFO, not a regular file, skipped",
        f"{obama / 'gone.jpg'}: broken symbolic link (its target is missing), skipped",
        f"{obama / 'loop1.jpg'}: symbolic link loop, skipped",
        f"{obama / 'loop2.jpg'}: symbolic link loop, skipped",
    ]


def test_the_loader_gives_each_path_its_real_reason_without_opening_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "...").mkdir()
    reasons = {}
    for name in ("fifo.jpg", "loop.jpg", "gone.jpg", "...", "absent.jpg"):
        with pytest.raises(ImageError) as error:
            load_image(tmp_path / name)
        reasons[name] = error.value.reason
    assert reasons == {
        "fifo.jpg": "a FIFO, not a regular file",
        "loop.jpg": "symbolic link loop",
        "gone.jpg": "broken symbolic link (its target is missing)",
        "...": "is a directory, not an image",
        "absent.jpg": "no such file",
    }
