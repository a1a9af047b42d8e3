"""The `dlib-resnet` backbone against dlib itself, on face chips dlib cuts from real photos.

The chips are made as face_recognition makes them: its HOG detector, dlib's 5-point shape predictor on
the box, dlib's get_face_chip (150 px, padding 0.25). dlib's face_recognition_model_v1 gives the
reference descriptors; facerec's networks must give the same numbers from the same chips.
"""

from __future__ import annotations

import itertools

import dlib
import face_recognition
import numpy as np
import pytest
import torch
from PIL import Image

from facerec.contract.parts import Backbone
from facerec.errors import FacerecError
from facerec.pipeline.standardize import standardize
from facerec.pipeline.weights import fetch
from facerec_plugins.dlib.dnn import read_network
from facerec_plugins.dlib.models import MMOD_DETECTOR, RESNET_V1, SHAPE_PREDICTOR_5
from facerec_plugins.dlib.resnet import THRESHOLD, DlibResnetBackbone, register_backbones
from support import SHARED

# Three people twice, two once: same-person and different-person pairs both.
PHOTOS = [
    "knn/train/obama/obama.jpg",
    "knn/train/obama/obama2.jpg",
    "knn/train/biden/biden.jpg",
    "knn/train/biden/biden2.jpg",
    "knn/train/kit_harington/john1.jpeg",
    "knn/train/kit_harington/john2.jpeg",
    "knn/train/rose_leslie/img1.jpg",
    "test_images/paul_rudd/1.jpg",
]
LONGEST_SIDE = 600  # photos are shrunk first: HOG detection on full-size photos takes seconds
TOLERANCE = 1e-4
FACE_RECOGNITION_TOLERANCE = 0.6  # face_recognition.compare_faces's default


def _chip(path, predictor) -> np.ndarray:
    """dlib's chip of the largest face face_recognition's HOG detector finds in the photo."""
    image = Image.open(path).convert("RGB")
    image.thumbnail((LONGEST_SIDE, LONGEST_SIDE))
    pixels = np.asarray(image)
    top, right, bottom, left = max(
        face_recognition.face_locations(pixels), key=lambda box: (box[2] - box[0]) * (box[1] - box[3])
    )
    shape = predictor(pixels, dlib.rectangle(left, top, right, bottom))
    return dlib.get_face_chip(pixels, shape, size=150, padding=0.25)


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    predictor = dlib.shape_predictor(str(fetch(SHAPE_PREDICTOR_5)[0]))
    return np.stack([_chip(SHARED / "faces" / photo, predictor) for photo in PHOTOS])


@pytest.fixture(scope="module")
def dlib_descriptors(chips) -> np.ndarray:
    recognizer = dlib.face_recognition_model_v1(str(fetch(RESNET_V1)[0]))
    return np.array([np.array(recognizer.compute_face_descriptor(chip)) for chip in chips])


@pytest.fixture(scope="module")
def backbone() -> DlibResnetBackbone:
    return DlibResnetBackbone()


@pytest.fixture(scope="module")
def network(backbone):
    return backbone.build(backbone.read_pretrained(fetch(RESNET_V1)[0])).eval()


@pytest.fixture(scope="module")
def inputs(chips, backbone) -> torch.Tensor:
    return standardize(chips, backbone.recipe)  # as the engine turns aligned faces into input


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_trainable_network_gives_dlibs_descriptors(network, inputs, dlib_descriptors):
    with torch.no_grad():
        raw, unit = network.descriptors(inputs).numpy(), network(inputs).numpy()
    assert np.abs(raw - dlib_descriptors).max() < TOLERANCE
    assert np.abs(unit - _unit(dlib_descriptors)).max() < TOLERANCE
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_inference_form_gives_dlibs_descriptors(backbone, network, inputs, dlib_descriptors):
    fast = backbone.for_inference(network)
    assert np.abs(fast.descriptors(inputs).numpy() - dlib_descriptors).max() < TOLERANCE
    assert np.abs(fast(inputs).numpy() - _unit(dlib_descriptors)).max() < TOLERANCE


def test_threshold_on_unit_vectors_makes_face_recognitions_decisions(network, inputs, dlib_descriptors):
    """dlib's descriptors are not unit vectors; THRESHOLD is face_recognition's 0.6 carried over to them."""
    norms = np.linalg.norm(dlib_descriptors, axis=1)
    assert norms.min() > 1.2  # far from unit length: 0.6 itself would not do on unit vectors
    with torch.no_grad():
        unit = network(inputs).numpy()
    decisions = []
    for i, j in itertools.combinations(range(len(unit)), 2):
        same = face_recognition.compare_faces(
            [dlib_descriptors[i]], dlib_descriptors[j], FACE_RECOGNITION_TOLERANCE
        )
        assert (np.linalg.norm(unit[i] - unit[j]) <= THRESHOLD) == same[0], (PHOTOS[i], PHOTOS[j])
        decisions.append(same[0])
    assert 0 < sum(decisions) < len(decisions)


def test_recipe_feeds_the_input_dlibs_network_declares(backbone):
    """dlib's input_rgb_image_sized makes (pixel - avg) / 256 of each channel of a 150x150 RGB chip."""
    options = read_network(fetch(RESNET_V1)[0]).layers[0].options
    recipe = backbone.recipe
    assert (recipe.size, recipe.channels, recipe.std) == (options["nr"], "RGB", (256.0,) * 3)
    averages = np.float32([options["avg_red"], options["avg_green"], options["avg_blue"]])
    assert np.array_equal(np.float32(recipe.mean), averages)  # equal as dlib's float32 values


def test_trained_weights_save_and_load_back(backbone, inputs, tmp_path):
    network = backbone.build(backbone.read_pretrained(fetch(RESNET_V1)[0]))
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    embeddings = network(inputs[:3])  # a triplet: obama, obama, biden
    loss = (embeddings[0] - embeddings[1]).pow(2).sum() - (embeddings[0] - embeddings[2]).pow(2).sum()
    loss.backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    optimizer.step()
    torch.save(network.state_dict(), tmp_path / "backbone.pt")
    loaded = backbone.build(torch.load(tmp_path / "backbone.pt", weights_only=True)).eval()
    network.eval()
    with torch.no_grad():
        assert torch.equal(loaded(inputs), network(inputs))
        assert torch.allclose(backbone.for_inference(loaded)(inputs), network(inputs), atol=1e-5)


def test_build_refuses_a_state_dict_that_does_not_fit(backbone):
    state = backbone.build().state_dict()
    wrong = {
        "missing": {key: value for key, value in state.items() if key != "embed.weight"},
        "unexpected": {**state, "head.weight": torch.zeros(1)},
        "wrong shape": {**state, "embed.weight": torch.zeros(128, 512)},
    }
    for reason, candidate in wrong.items():
        with pytest.raises(ValueError, match=reason):
            backbone.build(candidate)
    with pytest.raises(ValueError, match="not a state dict"):
        backbone.build({"embed.weight": [0.0]})


def test_read_pretrained_refuses_other_and_broken_files(backbone, tmp_path):
    detector = fetch(MMOD_DETECTOR)[0]
    with pytest.raises(FacerecError, match=str(detector)):
        backbone.read_pretrained(detector)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(fetch(RESNET_V1)[0].read_bytes()[:-100])
    with pytest.raises(FacerecError, match=str(truncated)):
        backbone.read_pretrained(truncated)


def test_registered_as_a_backbone_that_embeds_untrained(inputs):
    registered = {}
    register_backbones(lambda name, factory: registered.setdefault(name, factory))
    backbone = registered["dlib-resnet"]()
    assert isinstance(backbone, Backbone)
    assert (
        backbone.default_pretrained in backbone.pretrained
        and backbone.default_pretrained in backbone.thresholds
    )
    with torch.no_grad():
        embeddings = backbone.build().eval()(inputs[:2])
    assert embeddings.shape == (2, backbone.embedding_size)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2))
