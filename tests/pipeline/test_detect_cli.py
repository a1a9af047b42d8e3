"""`facerec detect` as a user runs it: a real subprocess, real photos, weights from a real mirror."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from support import SHARED

PHOTOS = SHARED / "faces" / "photos"


def test_json_lines_crops_and_a_stream_that_survives_bad_images(cli, mirror, tmp_path):
    mirror.serve_mtcnn()
    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (200, 190, 170)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [PHOTOS / "two_people.jpg", blank, broken, PHOTOS / "obama_small.jpg"]
    crops = tmp_path / "crops"

    result = cli("detect", *paths, "--json", "--save-crops", crops)

    assert result.returncode == 1  # one image failed; the others were still reported
    assert result.stderr.strip().splitlines() == [f"{broken}: cannot decode image: not an image file"]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["image"] for record in records] == [str(path) for path in paths]
    two, wall, bad, small = records
    assert bad == {"image": str(broken), "error": "cannot decode image: not an image file"}
    assert wall == {"image": str(blank), "faces": []}
    assert len(two["faces"]) == 2 and len(small["faces"]) == 1
    for face in two["faces"] + small["faces"]:
        assert set(face) == {"box", "score", "landmarks"}
        assert len(face["box"]) == 4 and 0.7 < face["score"] <= 1
        assert np.array(face["landmarks"]).shape == (5, 2)
    areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in (face["box"] for face in two["faces"])]
    assert areas[0] >= areas[1]
    written = sorted(path.name for path in crops.iterdir())
    assert written == ["obama_small_1.png", "two_people_1.png", "two_people_2.png"]
    assert all(Image.open(crops / name).size == (160, 160) for name in written)


def test_table_with_the_none_detector(cli, tmp_path):
    aligned = SHARED / "faces" / "test_images_aligned" / "kate_siegel" / "1.png"
    result = cli("detect", aligned, "--detector", "none", "--save-crops", tmp_path, "--align", "landmarks")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{aligned}: 1 face"
    assert lines[2].split() == ["1", "[0,", "0,", "160,", "160]", "-", "-"]
    assert Image.open(tmp_path / "1_1.png").size == (160, 160)  # no landmarks: the box crop


def test_a_bad_detector_option_is_one_usage_line(cli):
    result = cli("detect", PHOTOS / "obama_small.jpg", "-D", "thresholds=[0.6,0.7]")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == "Error: mtcnn: thresholds must be three numbers between 0 and 1, got [0.6, 0.7]"
    )


def test_a_number_that_is_not_finite_is_one_usage_line(cli):
    for value in ("nan", "inf"):
        result = cli("detect", PHOTOS / "obama_small.jpg", "--margin", value)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().endswith(
            f"Invalid value for '--margin': '{value}' is not a finite number."
        )
