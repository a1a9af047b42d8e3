"""Memory is bounded for any image: every detector works on its declared working size, larger images are
scaled down for detection and the faces mapped back to the original's pixels.

A 60 MP photo once needed about 4 GB in MTCNN and a 10000x6000 grayscale PNG of 58 KB grew dlib-cnn past
24 GB. Here each runs in a real `facerec detect` process whose data segment is capped at 3 GB
(RLIMIT_DATA: the allocator fails past it, as the kernel's OOM killer would), and must find the faces a
downscaled run finds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from facerec.contract.faces import Face
from facerec.pipeline.engine import detect_bounded
from support import PHOTOS

CAP = 3_000_000_000  # bytes of data segment; torch alone takes about 0.7 GB
SIZE = (10_000, 6_000)  # 60 MP


# The cap is set by the child itself: a preexec_fn would run in a fork of this worker, whose other
# threads (gRPC's, after a Milvus test in the same worker) do not survive a fork under a cap.
CAPPED = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_DATA, ({cap}, {cap})); "
    "sys.argv = ['facerec', *sys.argv[1:]]; runpy.run_module('facerec', run_name='__main__')"
)


def capped_cli(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`facerec ARGS` in a process whose data segment is capped at CAP bytes."""
    command = [sys.executable, "-c", CAPPED.format(cap=CAP), *map(str, args)]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("huge")
    gray = folder / "gray.png"
    Image.new("L", SIZE, 128).save(gray)  # a few dozen KB on disk, 60 MP decoded
    photo = folder / "two_people.jpg"
    with Image.open(PHOTOS / "two_people.jpg") as source:
        source.convert("RGB").resize(SIZE, Image.BILINEAR).save(photo, quality=85)
    return gray, photo


def iou(a, b) -> float:
    inner = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner
    return inner / union


@pytest.mark.parametrize("detector", ["mtcnn", "dlib-cnn", "none"])
def test_a_60_megapixel_photo_is_detected_within_a_memory_cap(detector, huge, env, monkeypatch):
    from facerec.contract.registry import registry

    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])

    gray, photo = huge
    result = capped_cli("detect", gray, photo, "--detector", detector, "--json", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["image"] for record in records] == [str(gray), str(photo)]
    found = [face["box"] for face in records[1]["faces"]]
    if detector == "none":
        assert found == [[0.0, 0.0, float(SIZE[0]), float(SIZE[1])]]
        return
    assert records[0]["faces"] == []  # a flat gray picture has no face
    # the faces of the photo scaled down by hand to the detector's working size, in original pixels
    part = registry().create("detector", detector)
    scale = (part.max_pixels / (SIZE[0] * SIZE[1])) ** 0.5
    with Image.open(photo) as image:
        small = image.convert("RGB").resize((int(SIZE[0] * scale), int(SIZE[1] * scale)), Image.BILINEAR)
    (expected,) = part.detect([small])
    expected = [face.scaled(SIZE[0] / small.width, SIZE[1] / small.height).box for face in expected]
    assert len(found) == len(expected) == 2
    assert all(max(iou(box, other) for other in expected) > 0.9 for box in found), (found, expected)


def test_faces_found_on_a_scaled_copy_come_back_in_the_originals_pixels():
    class Corner:
        """A detector (as a plugin would write one) that finds a face in the top-left tenth of an image."""

        max_pixels = 100 * 50

        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def detect(self, images):
            self.seen += [image.size for image in images]
            return [
                [Face((0.0, 0.0, image.width / 10, image.height / 10), 0.9, ((1.0, 2.0),) * 5)]
                for image in images
            ]

    detector = Corner()
    small, large = Image.new("RGB", (60, 40)), Image.new("RGB", (1000, 500))
    faces = detect_bounded(detector, [small, large])
    assert detector.seen == [(60, 40), (100, 50)]  # the small one as it is, the large one scaled down
    assert faces[0][0].box == (0.0, 0.0, 6.0, 4.0)
    assert faces[1][0].box == (0.0, 0.0, 100.0, 50.0) and faces[1][0].landmarks[0] == (10.0, 20.0)
