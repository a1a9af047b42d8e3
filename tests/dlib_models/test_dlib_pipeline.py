"""face_recognition's models end to end: real photos, real weights (face_recognition_models), the CLI.

facerec with `--backbone dlib-resnet` must recognise the demo's people as face_recognition does, and
its detect -> align -> embed pipeline must give face_recognition's encodings.
"""

from __future__ import annotations

import json

import face_recognition
import numpy as np
import pytest
from PIL import Image

from facerec.contract.faces import Face
from facerec.contract.registry import registry
from facerec.pipeline.engine import load_backbone
from facerec.pipeline.standardize import standardize_pictures
from support import SHARED
from support.cli import run_cli
from support.gallery import KNN, shrink, small_people, weights_cache

# Who is in each of the demo's test photos (face_recognition's knn example); other faces are strangers.
KNOWN = {
    "alex_lacamoire1.jpg": {"alex_lacamoire"},
    "johnsnow_test1.jpg": {"kit_harington"},
    "kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
    "obama1.jpg": {"obama"},
    "obama_and_biden.jpg": {"obama", "biden"},
}
TEST_PHOTO_SIZE = 1000  # small enough for speed, large enough for the strangers in obama_and_biden.jpg


@pytest.fixture(scope="module")
def identified(tmp_path_factory):
    """The demo's people indexed with `--backbone dlib-resnet` alone, its test photos identified."""
    root = tmp_path_factory.mktemp("dlib")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    people, gallery = small_people(root / "people"), root / "gallery"
    indexed = run_cli("index", people, "--gallery", gallery, "--backbone", "dlib-resnet", env=env)
    assert indexed.returncode == 0, indexed.stderr
    photos = [shrink(KNN / "test" / name, root / "test" / name, TEST_PHOTO_SIZE) for name in KNOWN]
    result = run_cli("identify", *photos, "--gallery", gallery, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_known_face_gets_its_name_at_the_default_threshold(identified):
    for record in identified:
        expected = KNOWN[record["image"].rsplit("/", 1)[-1]]
        names = [face["identity"] for face in record["faces"]]
        assert sorted(name for name in names if name) == sorted(expected), record["image"]
        for face in record["faces"]:
            if face["identity"] is None:  # a stranger: nobody enrolled is near
                assert face["distance"] > 0.45
            else:
                assert face["distance"] < 0.3


def test_the_recipe_and_threshold_come_from_the_backbone():
    backbone = registry().create("backbone", "dlib-resnet")
    assert (backbone.recipe.size, backbone.recipe.aligner, backbone.recipe.std) == (
        150,
        "dlib-5point",
        (256.0,) * 3,
    )
    assert backbone.default_pretrained == "dlib-v1" and backbone.thresholds["dlib-v1"] == 0.38


def test_align_and_embed_on_face_recognitions_boxes_give_its_encodings():
    """On the same boxes, facerec's dlib-5point + dlib-resnet equal face_recognition.face_encodings
    (normalized: facerec's embeddings are unit vectors)."""
    backbone = load_backbone("dlib-resnet", device="cpu")
    aligner = registry().create("aligner", "dlib-5point")
    for name in ("knn/test/kit_with_rose.jpg", "photos/two_people.jpg", "test_images/paul_rudd/1.jpg"):
        image = Image.open(SHARED / "faces" / name).convert("RGB")
        image.thumbnail((600, 600))
        pixels = np.asarray(image)
        locations = face_recognition.face_locations(pixels)
        assert locations, name
        expected = np.asarray(face_recognition.face_encodings(pixels, locations))
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        faces = [Face(box=(left, top, right + 1, bottom + 1)) for top, right, bottom, left in locations]
        chips = aligner.align(image, faces, backbone.plugin.recipe.size)
        found = backbone.embed(standardize_pictures(chips, backbone.plugin.recipe)).numpy()
        assert np.linalg.norm(found - expected, axis=1).max() < 1e-4, name


def test_the_whole_pipeline_gives_face_recognitions_cnn_encodings(tmp_path):
    """detect (dlib-cnn) -> align (dlib-5point) -> embed (dlib-resnet) in a real `facerec embed` process,
    against face_recognition's face_locations(model="cnn") + face_encodings on the same small photo."""
    photo = shrink(SHARED / "faces" / "photos" / "two_people.jpg", tmp_path / "two.png", 360)
    pixels = face_recognition.load_image_file(photo)
    locations = face_recognition.face_locations(pixels, model="cnn")
    expected = np.asarray(face_recognition.face_encodings(pixels, locations))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    result = run_cli("embed", photo, "--backbone", "dlib-resnet", "--detector", "dlib-cnn", "--json")
    assert result.returncode == 0, result.stderr
    faces = json.loads(result.stdout)["faces"]
    assert len(faces) == len(locations) == 2
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        position = locations.index((max(y1, 0), x2 - 1, y2 - 1, max(x1, 0)))  # the same box
        distance = np.linalg.norm(np.asarray(face["embedding"]) - expected[position])
        assert distance < 0.03


def test_detector_none_embeds_dlibs_own_chips_as_given(tmp_path):
    """`--detector none` on dlib's 150 px face chips: the chip is the backbone's input as it is (the
    dlib-5point aligner does not cut a chip of the chip), so the embedding is dlib's descriptor of it."""
    import dlib
    import face_recognition_models

    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    network = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    chips, expected = [], []
    for name in ("knn/test/kit_with_rose.jpg", "test_images/paul_rudd/1.jpg"):
        image = Image.open(SHARED / "faces" / name).convert("RGB")
        image.thumbnail((600, 600))
        pixels = np.asarray(image)
        top, right, bottom, left = face_recognition.face_locations(pixels)[0]
        shape = predictor(pixels, dlib.rectangle(left, top, right, bottom))
        chip = dlib.get_face_chip(pixels, shape, size=150, padding=0.25)
        path = tmp_path / f"chip{len(chips)}.png"
        Image.fromarray(chip).save(path)
        chips.append(path)
        descriptor = np.asarray(network.compute_face_descriptor(chip))
        expected.append(descriptor / np.linalg.norm(descriptor))
    result = run_cli("embed", *chips, "--backbone", "dlib-resnet", "--detector", "none", "--json")
    assert result.returncode == 0, result.stderr
    found = [json.loads(line)["faces"][0]["embedding"] for line in result.stdout.splitlines()]
    assert np.abs(np.asarray(found) - np.asarray(expected)).max() < 1e-4
