"""The `dlib-5point` aligner against dlib itself, on real photos.

dlib's HOG detector finds the faces (one face, six faces, a face cut by the image's edge, faces from 73
to 1110 pixels wide, so chips are sampled from the photo itself and from each of the first four levels
of dlib's image pyramid);
dlib's shape predictor and `get_face_chip` give the reference landmarks and chips, which facerec must
reproduce from its own reading of the model file: landmarks within 0.5 px, chips within one grey level
on average. Boxes that dlib did not produce (shifted, resized, fractional) show the predictor runs from
any detector's box.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from facerec.contract.faces import Face
from facerec.errors import FacerecError, UsageError
from facerec.pipeline.weights import fetch
from facerec_plugins.dlib.aligner import DlibFivePoint, five_point_landmarks, register_aligners
from facerec_plugins.dlib.models import MMOD_DETECTOR, SHAPE_PREDICTOR_5
from facerec_plugins.dlib.shape import dlib_rectangle, load_shape_predictor, read_shape_predictor
from support import SHARED

PHOTOS = [
    "photos/obama_small.jpg",
    "photos/two_people.jpg",
    "photos/multiface.jpg",
    "photos/lin-manuel-miranda.png",  # RGBA: aligned as its RGB conversion
    "photos/obama_partial_face.jpg",  # the box leaves the image
    "test_images/angelina_jolie/1.jpg",
    "test_images/paul_rudd/1.jpg",
]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return fetch(SHAPE_PREDICTOR_5)[0]


@pytest.fixture(scope="module")
def photos(model_path) -> list[dict]:
    """Each photo as PIL image and RGB array, with dlib's faces: rectangle, landmarks, shape object."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path))
    result = []
    for name in PHOTOS:
        image = Image.open(SHARED / "faces" / name)
        pixels = np.asarray(image.convert("RGB"))
        rects = [(r.left(), r.top(), r.right(), r.bottom()) for r in detector(pixels, 0)]
        shapes = [predictor(pixels, dlib.rectangle(*rect)) for rect in rects]
        result.append({"name": name, "image": image, "pixels": pixels, "rects": rects, "shapes": shapes})
    assert sum(len(photo["rects"]) for photo in result) >= 12
    return result


def points_of(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def face_of(rect: tuple[int, int, int, int]) -> Face:
    """A facerec face for a dlib rectangle: the box ends one pixel past dlib's inclusive right/bottom."""
    left, top, right, bottom = rect
    return Face(box=(float(left), float(top), float(right + 1), float(bottom + 1)))


def test_the_box_of_a_dlib_rectangle_maps_back_to_it():
    assert dlib_rectangle((10.0, 20.0, 110.0, 121.0)) == (10, 20, 109, 120)
    assert dlib_rectangle((-54.0, 161.0, 186.0, 377.0)) == (-54, 161, 185, 376)
    assert dlib_rectangle((10.4, 20.5, 110.6, 121.49)) == (10, 21, 110, 120)  # rounded as dlib rounds


def test_landmarks_match_dlib_on_its_own_boxes(photos):
    for photo in photos:
        faces = [face_of(rect) for rect in photo["rects"]]
        ours = np.array(five_point_landmarks(photo["image"], faces))
        theirs = np.array([points_of(shape) for shape in photo["shapes"]])
        assert ours.shape == theirs.shape == (len(faces), 5, 2)
        assert np.abs(ours - theirs).max() <= 0.5, photo["name"]


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")  # face_recognition_models' import
def test_face_recognition_locations_give_face_recognition_landmarks():
    """face_recognition's (top, right, bottom, left) locations, trimmed to the image, as facerec boxes
    (left, top, right + 1, bottom + 1) give its 5-point landmarks."""
    import face_recognition

    for name in ("photos/multiface.jpg", "photos/obama_partial_face.jpg"):
        pixels = face_recognition.load_image_file(SHARED / "faces" / name)
        locations = face_recognition.face_locations(pixels, number_of_times_to_upsample=0)
        expected = face_recognition.face_landmarks(pixels, locations, model="small")
        faces = [Face(box=(left, top, right + 1, bottom + 1)) for top, right, bottom, left in locations]
        assert len(faces) >= 1
        for points, theirs in zip(
            five_point_landmarks(Image.fromarray(pixels), faces), expected, strict=True
        ):
            in_dlib_order = theirs["right_eye"] + theirs["left_eye"] + theirs["nose_tip"]
            assert np.abs(np.array(points) - np.array(in_dlib_order)).max() <= 0.5, name


def test_landmarks_match_dlib_from_boxes_dlib_did_not_make(photos, model_path):
    predictor = dlib.shape_predictor(str(model_path))
    for photo in photos:
        for left, top, right, bottom in photo["rects"]:
            width = right - left
            boxes = [
                (left + 0.13 * width, top - 0.07 * width, right + 0.1 * width, bottom + 0.04 * width),
                (left - 0.2 * width + 0.3, top - 0.2 * width, right + 0.25 * width, bottom + 0.3 * width),
                (left + 0.1 * width, top + 0.15 * width, right - 0.12 * width, bottom - 0.02 * width),
            ]
            ours = five_point_landmarks(photo["image"], [Face(box=box) for box in boxes])
            for box, points in zip(boxes, ours, strict=True):
                theirs = points_of(predictor(photo["pixels"], dlib.rectangle(*dlib_rectangle(box))))
                assert np.abs(np.array(points) - theirs).max() <= 0.5, (photo["name"], box)


def test_faces_predicted_together_get_the_landmarks_each_gets_alone(photos):
    """The predictor runs on every face of an image at once: no face's walk may reach into another's."""
    for photo in photos:
        faces = [face_of(rect) for rect in photo["rects"]]
        faces += [Face(box=(x1 - 9.5, y1 + 4, x2 + 20, y2 + 3)) for x1, y1, x2, y2 in (f.box for f in faces)]
        together = five_point_landmarks(photo["image"], faces)
        assert together == [five_point_landmarks(photo["image"], [face])[0] for face in faces], photo["name"]


def test_landmarks_do_not_depend_on_how_much_of_the_image_is_read_first(photos, monkeypatch):
    """The predictor reads the faces' surroundings and grows them when a feature pixel falls outside:
    reading from nothing (growing at once) or from the whole image gives the same landmarks."""
    for photo in photos:
        faces = [face_of(rect) for rect in photo["rects"]]
        faces += [
            Face(box=(x1 - 0.3 * (x2 - x1), y1, x2, y2 + 9.5)) for x1, y1, x2, y2 in (f.box for f in faces)
        ]
        default = five_point_landmarks(photo["image"], faces)
        for reach in (-0.5, 10.0):
            monkeypatch.setattr("facerec_plugins.dlib.shape.REACH", reach)
            assert five_point_landmarks(photo["image"], faces) == default, (photo["name"], reach)


@pytest.mark.parametrize("reach", [0.35, -0.5])
def test_images_aligned_together_get_the_chips_each_gets_alone(photos, monkeypatch, reach):
    """`align_all` runs the faces of several images through the predictor at once: each image's pixels
    stay its own (a reach of -0.5 grows every image's region on the predictor's first level), an image
    without faces has no chips, and every chip is the one `align` cuts from its image alone."""
    monkeypatch.setattr("facerec_plugins.dlib.shape.REACH", reach)
    aligner = DlibFivePoint()
    items = [(photo["image"], [face_of(rect) for rect in photo["rects"]]) for photo in photos]
    items.insert(2, (Image.new("RGB", (64, 48)), []))
    together = aligner.align_all(items, 150)
    assert [len(chips) for chips in together] == [len(faces) for _, faces in items]
    for (image, faces), chips in zip(items, together, strict=True):
        for ours, alone in zip(chips, aligner.align(image, faces, 150), strict=True):
            assert np.array_equal(np.asarray(ours), np.asarray(alone))
    assert aligner.align_all([], 150) == []


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "RGBX"])
def test_images_of_other_modes_align_as_their_rgb_conversion(photos, mode):
    photo = photos[2]  # six faces
    image = photo["image"].convert(mode)
    faces = [face_of(rect) for rect in photo["rects"]]
    rgb = image.convert("RGB")
    assert five_point_landmarks(image, faces) == five_point_landmarks(rgb, faces)
    aligner = DlibFivePoint()
    for ours, theirs in zip(aligner.align(image, faces, 150), aligner.align(rgb, faces, 150), strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize(("size", "padding"), [(150, 0.25), (100, 0.5)])
def test_chips_match_dlib(photos, size, padding):
    aligner = DlibFivePoint(padding=padding)
    for photo in photos:
        chips = aligner.align(photo["image"], [face_of(rect) for rect in photo["rects"]], size)
        for chip, shape in zip(chips, photo["shapes"], strict=True):
            theirs = np.asarray(dlib.get_face_chip(photo["pixels"], shape, size=size, padding=padding))
            assert chip.mode == "RGB" and chip.size == (size, size)
            difference = np.abs(np.asarray(chip, dtype=np.int16) - theirs.astype(np.int16))
            assert difference.mean() <= 1.0, photo["name"]


def test_the_aligner_registers_with_its_settings():
    registered = {}
    register_aligners(register=lambda name, factory: registered.update({name: factory}))
    aligner = registered["dlib-5point"](padding=0.3)
    assert aligner.settings == {"name": "dlib-5point", "padding": 0.3}
    assert DlibFivePoint().settings == {"name": "dlib-5point", "padding": 0.25}
    assert aligner.align(Image.new("RGB", (64, 48)), [], 150) == []
    for bad in ("wide", -0.1):
        with pytest.raises(UsageError, match="padding"):
            DlibFivePoint(padding=bad)


def test_parsed_arrays_are_kept_and_reused(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    sha256 = fetch(SHAPE_PREDICTOR_5)[1]
    parsed = load_shape_predictor(model_path, sha256)
    (kept,) = (tmp_path / "checkpoints").glob(f"*{sha256}*.npz")
    kept_time = kept.stat().st_mtime_ns
    again = load_shape_predictor(model_path, sha256)
    assert kept.stat().st_mtime_ns == kept_time  # read, not written again
    for name in ("initial_shape", "anchors", "deltas", "splits", "thresholds", "leaves"):
        assert np.array_equal(getattr(parsed, name), getattr(again, name))
    kept.write_bytes(b"not an npz")
    repaired = load_shape_predictor(model_path, sha256)
    assert np.array_equal(repaired.leaves, parsed.leaves)
    with np.load(kept, allow_pickle=False) as arrays:  # written again, whole
        assert np.array_equal(arrays["leaves"], parsed.leaves)


def bad_files(model_path: Path, folder: Path) -> list[Path]:
    data = model_path.read_bytes()
    files = {
        "truncated.dat": data[: len(data) // 2],
        "garbled.dat": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "empty.dat": b"",
        "version.dat": b"\x01\x02" + data[2:],
        "zeroed.dat": data[:4_000_000] + bytes(64) + data[4_000_064:],
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files] + [folder / "missing.dat", fetch(MMOD_DETECTOR)[0]]


def test_a_missing_or_garbled_file_is_one_clear_error(model_path, tmp_path):
    for path in bad_files(model_path, tmp_path):
        with pytest.raises(FacerecError) as caught:
            read_shape_predictor(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, message
