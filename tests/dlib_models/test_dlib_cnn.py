"""The `dlib-cnn` detector against dlib's own CNN face detector on real photos.

dlib takes seconds per small photo, so most photos are compared with data/dlib_cnn_reference.json,
written by data/make_dlib_cnn_reference.py from `dlib.cnn_face_detection_model_v1` on the same
pixels; one photo is compared live, through face_recognition's `face_locations(model="cnn")`, so that
neither the reference nor the box convention can drift unnoticed. The pyramid code is checked against
dlib's own resizing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dlib
import face_recognition
import numpy as np
import pytest
from PIL import Image

from facerec.contract.faces import Face
from facerec.contract.parts import Detector
from facerec.errors import FacerecError, UsageError
from facerec.pipeline.weights import fetch
from facerec_plugins.dlib.cnn import DlibCnnDetector, load_model, register_detectors
from facerec_plugins.dlib.models import RESNET_V1
from facerec_plugins.dlib.pyramid import pyramid_up, resize_bilinear
from support import SHARED

DATA = Path(__file__).with_name("data")
REFERENCE = json.loads((DATA / "dlib_cnn_reference.json").read_text())
ENTRIES = {
    f"{entry['photo']}@{entry['width']}{'-cropped' if entry['crop'] else ''}": entry
    for entry in REFERENCE["photos"]
}
UPSAMPLES = (0, 1)
MIN_IOU = 0.95
SCORE_TOLERANCE = 0.01
LIVE_PHOTO = SHARED / "faces" / "photos" / "obama_small.jpg"


def _reference_script():
    spec = importlib.util.spec_from_file_location(
        "make_dlib_cnn_reference", DATA / "make_dlib_cnn_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _reference_script()


def reference_image(entry: dict) -> Image.Image:
    """The entry's photo as the reference script gave it to dlib; refuses other pixels."""
    pixels = SCRIPT.reference_pixels(entry["photo"], entry["width"], entry["crop"])
    assert SCRIPT.pixels_sha256(pixels) == entry["pixels_sha256"], "rerun data/make_dlib_cnn_reference.py"
    return Image.fromarray(pixels)


def box_iou(a, b) -> float:
    inner = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner
    return inner / union


def dlib_faces(detections: list) -> list[Face]:
    """dlib's detections (inclusive rectangles, confidence) as facerec boxes, largest first; equal
    areas keep dlib's (best-score-first) order, as facerec's detectors do."""
    faces = [
        Face(box=(left, top, right + 1, bottom + 1), score=score)
        for left, top, right, bottom, score in detections
    ]
    return sorted(faces, key=lambda face: face.area, reverse=True)


@pytest.fixture(scope="module")
def detections() -> dict[int, dict[str, list[Face]]]:
    """Every reference photo's faces at each upsample count, all photos in one `detect` call."""
    names = list(ENTRIES)
    images = [reference_image(ENTRIES[name]) for name in names]
    found = {}
    for upsample in UPSAMPLES:
        faces = DlibCnnDetector(upsample=upsample).detect(images)
        found[upsample] = dict(zip(names, faces, strict=True))
    return found


@pytest.mark.parametrize("upsample", UPSAMPLES)
@pytest.mark.parametrize("name", list(ENTRIES))
def test_same_faces_as_dlib(detections, name, upsample):
    expected = dlib_faces(ENTRIES[name]["detections"][str(upsample)])
    faces = detections[upsample][name]
    assert len(faces) == len(expected)
    for face, reference in zip(faces, expected, strict=True):
        assert box_iou(face.box, reference.box) >= MIN_IOU
        assert abs(face.score - reference.score) <= SCORE_TOLERANCE
        assert face.landmarks is None
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_a_photo_without_faces_gives_none(detections):
    (name,) = [name for name, entry in ENTRIES.items() if entry["crop"]]
    assert ENTRIES[name]["detections"] == {"0": [], "1": []}
    assert detections[0][name] == detections[1][name] == []


def test_same_locations_as_face_recognition_live():
    """face_recognition's (top, right, bottom, left) is recovered exactly from facerec's boxes."""
    pixels = face_recognition.load_image_file(LIVE_PHOTO)
    height, width, _ = pixels.shape
    expected = face_recognition.face_locations(pixels, number_of_times_to_upsample=1, model="cnn")
    faces = DlibCnnDetector().detect([Image.fromarray(pixels)])[0]
    found = [
        (max(int(y1), 0), min(int(x2) - 1, width), min(int(y2) - 1, height), max(int(x1), 0))
        for x1, y1, x2, y2 in (face.box for face in faces)
    ]
    assert expected and sorted(found) == sorted(expected)


def test_pyramid_up_resizes_as_dlib():
    """The upsampled image dlib's binding detects in: bit for bit, dlib's bilinear resize to
    (2H + 1, 2W + 2), the size pyramid_down<2>::rect_up gives the image."""
    photo = Image.open(SHARED / "faces" / "photos" / "two_people.jpg").convert("RGB")
    pixels = np.array(photo.crop((0, 0, 303, 201)))  # odd sides
    height, width, _ = pixels.shape
    planes = pixels.transpose(2, 0, 1).copy()
    expected = dlib.resize_image(pixels, 2 * height + 1, 2 * width + 2)
    np.testing.assert_array_equal(pyramid_up(planes).transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(
        resize_bilinear(planes, 57, 31).transpose(1, 2, 0), dlib.resize_image(pixels, 57, 31)
    )


def test_images_too_small_for_the_network_have_no_faces():
    tiny = Image.fromarray(np.full((5, 6, 3), 128, dtype=np.uint8))
    assert DlibCnnDetector(upsample=0).detect([tiny]) == [[]]


@pytest.mark.parametrize("upsample", [-1, 5, 1.5, "1", True, None])
def test_bad_upsample_is_a_usage_error(upsample):
    with pytest.raises(UsageError, match="-D upsample"):
        DlibCnnDetector(upsample=upsample)


def test_registered_as_a_detector():
    registered = {}
    register_detectors(lambda name, factory: registered.setdefault(name, factory))
    detector = registered["dlib-cnn"]()
    assert isinstance(detector, Detector)
    assert detector.settings == {"name": "dlib-cnn", "upsample": 1}
    assert registered["dlib-cnn"](upsample=0).settings == {"name": "dlib-cnn", "upsample": 0}
    assert detector.detect([]) == []


def test_other_dlib_networks_are_refused():
    path, _ = fetch(RESNET_V1)
    with pytest.raises(FacerecError, match=str(path)):
        load_model(path)
