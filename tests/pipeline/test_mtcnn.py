"""The `mtcnn` and `none` detectors against facenet-pytorch's own results on real photos.

`../shared/reference/pipeline.salt0.json` holds what facenet-pytorch's MTCNN(keep_all=True) found in each
photo and the embeddings of its crops under seeded weights; the detector must find the same faces and,
with the default crop, give the same embeddings. Weights come through the real download code.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.pipeline.engine import Pipeline, load_backbone
from facerec.pipeline.images import load_image
from facerec_plugins.aligners.box import BoxCrop
from facerec_plugins.facenet.mtcnn import PNet, SummedAreaTable, batched_nms, iou, nms
from support import SHARED
from support.mirror import MTCNN_URL_PATH

REFERENCE = json.loads((SHARED / "reference" / "pipeline.salt0.json").read_text())
PHOTOS = {photo["image"]: photo for photo in REFERENCE["photos"]}
NETS = ("pnet", "rnet", "onet")


@pytest.fixture(scope="session")
def mtcnn(tmp_path_factory):
    """The registered `mtcnn` detector, its weights in a private cache (copies of facenet-pytorch's)."""
    checkpoints = tmp_path_factory.mktemp("torch-home") / "checkpoints"
    checkpoints.mkdir()
    for net in NETS:
        shutil.copy(SHARED / "weights" / "mtcnn" / f"{net}.pt", checkpoints)
    detector = registry().create("detector", "mtcnn")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCH_HOME", str(checkpoints.parent))
        detector.detect([load_image(SHARED / "faces" / "photos" / "obama_small.jpg")])
    return detector


@pytest.fixture(scope="module")
def detections(mtcnn):
    """Every reference photo's faces, detected eight images at a time as the engine batches them."""
    names = list(PHOTOS)
    found = {}
    for start in range(0, len(names), 8):
        chunk = names[start : start + 8]
        for name, faces in zip(chunk, mtcnn.detect([load_image(SHARED / n) for n in chunk]), strict=True):
            found[name] = faces
    return found


def box_iou(a, b) -> float:
    return float(iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


@pytest.mark.parametrize("name", list(PHOTOS))
def test_same_faces_as_facenet_pytorch(detections, name):
    expected = PHOTOS[name]["faces"]
    faces = detections[name]
    assert len(faces) == len(expected)
    for face, reference in zip(faces, expected, strict=True):  # both largest first
        assert box_iou(face.box, reference["box"]) >= 0.95
        assert abs(face.score - reference["prob"]) <= 0.01
        assert np.abs(np.array(face.landmarks) - np.array(reference["landmarks"])).max() <= 2
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_default_crops_embed_as_facenet_pytorch(mtcnn, seeded_weights):
    names = [
        "faces/photos/multiface.jpg",
        "faces/photos/obama_partial_face.jpg",
        "faces/photos/two_people.jpg",
    ]
    backbone = load_backbone("inception-resnet", weights=seeded_weights, device="cpu")
    pipeline = Pipeline(mtcnn, "mtcnn", BoxCrop(), backbone.plugin.recipe, backbone)
    results = list(pipeline.run([SHARED / name for name in names]))
    for name, result in zip(names, results, strict=True):
        expected = np.array([face["embedding"] for face in PHOTOS[name]["faces"]])
        assert result.error is None
        assert np.abs(result.embeddings.numpy() - expected).max() < 1e-4


def test_settings_record_the_options(mtcnn):
    assert mtcnn.settings == {
        "name": "mtcnn",
        "min_face_size": 20,
        "thresholds": [0.6, 0.7, 0.7],
        "factor": 0.709,
    }
    json.dumps(mtcnn.settings)
    bigger = registry().create("detector", "mtcnn", min_face_size=40, thresholds=[0.5, 0.6, 0.9], factor=0.5)
    assert bigger.settings["min_face_size"] == 40 and bigger.settings["thresholds"] == [0.5, 0.6, 0.9]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_face_size": 0}, "min_face_size must be a positive number"),
        ({"min_face_size": float("nan")}, "min_face_size must be a positive number"),
        ({"min_face_size": float("inf")}, "min_face_size must be a positive number"),
        ({"min_face_size": 1}, "min_face_size must be a positive number of pixels, at least 8, got 1"),
        ({"factor": 0.9999}, "factor must be a number between 0 and 1, at most 0.95, got 0.9999"),
        ({"thresholds": [0.6, 0.7]}, "thresholds must be three numbers between 0 and 1"),
        ({"thresholds": "high"}, "thresholds must be three numbers"),
        ({"factor": 1.0}, "factor must be a number between 0 and 1"),
        ({"device": "toaster"}, "unknown device 'toaster'"),
        ({"device": "cuda:99"}, "device 'cuda:99' is not available here"),
        ({"colour": "red"}, r"has no option 'colour' \(options: min_face_size, thresholds, factor, device\)"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        registry().create("detector", "mtcnn", **options)


def test_a_photo_without_faces_and_a_tiny_one_give_no_faces(mtcnn):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    images = [Image.fromarray(noise), Image.new("RGB", (11, 11), (90, 80, 70))]
    assert mtcnn.detect(images) == [[], []]
    assert mtcnn.detect([]) == []


def test_weights_download_through_the_mirror_once(mirror, tmp_path):
    mirror.serve_mtcnn()
    image = load_image(SHARED / "faces" / "photos" / "obama_small.jpg")
    detector = registry().create("detector", "mtcnn")
    assert mirror.requests == []  # nothing is fetched until the first detection
    assert len(detector.detect([image])[0]) == 1
    assert sorted(mirror.requests) == sorted(MTCNN_URL_PATH.format(net) for net in NETS)
    for net in NETS:
        assert (tmp_path / "torch-home" / "checkpoints" / f"{net}.pt").is_file()
    assert len(registry().create("detector", "mtcnn").detect([image])[0]) == 1
    assert len(mirror.requests) == len(NETS)  # the cache serves the second detector


def test_a_weights_file_with_the_wrong_sha256_is_refused(mirror, tmp_path):
    mirror.serve_mtcnn()
    mirror.serve(MTCNN_URL_PATH.format("pnet"), SHARED / "weights" / "mtcnn" / "rnet.pt")
    detector = registry().create("detector", "mtcnn")
    with pytest.raises(FacerecError, match=r"pnet.pt has SHA-256 .* expected a2a71925"):
        detector.detect([load_image(SHARED / "faces" / "photos" / "obama_small.jpg")])
    assert not (tmp_path / "torch-home" / "checkpoints" / "pnet.pt").exists()


def test_no_network_names_the_url(offline):
    detector = registry().create("detector", "mtcnn")
    with pytest.raises(FacerecError, match=r"cannot download http://127.0.0.1:9/timesler/.*/pnet.pt"):
        detector.detect([load_image(SHARED / "faces" / "photos" / "obama_small.jpg")])


def test_none_detector_takes_the_whole_image():
    detector = registry().create("detector", "none")
    image = load_image(SHARED / "faces" / "test_images_aligned" / "paul_rudd" / "1.png")
    ((face,),) = detector.detect([image])
    assert face.box == (0.0, 0.0, 160.0, 160.0)
    assert face.score is None and face.landmarks is None
    assert detector.settings == {"name": "none"}


def test_nms_keeps_what_torchvision_keeps_in_its_order():
    """Equal scores included: which of two equal boxes wins, and the order, steer the next stage."""
    import torchvision

    generator = torch.Generator().manual_seed(0)
    for count in (1, 7, 600, 1300):  # across blocks; past 1000 boxes torchvision's batched_nms re-sorts
        corners = torch.rand(count, 2, generator=generator) * 200
        sides = torch.rand(count, 2, generator=generator) * 60 + 5
        scores = (torch.rand(count, 1, generator=generator) * 8).round() / 8  # many equal scores
        boxes = torch.cat([corners, corners + sides, scores], 1)
        groups = torch.zeros(count, dtype=torch.long)
        for threshold in (0.3, 0.7):
            assert torch.equal(
                nms(boxes, threshold), torchvision.ops.nms(boxes[:, :4], boxes[:, 4], threshold)
            )
            expected = torchvision.ops.batched_nms(boxes[:, :4], boxes[:, 4], groups, threshold)
            assert torch.equal(batched_nms(boxes, threshold), expected)


def test_area_resampling_matches_interpolate():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (97, 131, 3), dtype=torch.uint8, generator=generator)
    table = SummedAreaTable(Image.fromarray(pixels.numpy()), torch.device("cpu"))
    image = pixels.permute(2, 0, 1)[None].float()
    expected = (F.interpolate(image, size=(40, 57), mode="area") - 127.5) * 0.0078125
    assert torch.allclose(table.level(40, 57), expected, atol=1e-5)
    rects = torch.tensor(
        [[0, 97, 0, 131], [10, 20, 30, 39], [50, 90, 3, 100], [5, 6, 7, 8]]
    )  # top, bottom, left, right
    crops = table.crops(rects, 24)
    for crop, (top, bottom, left, right) in zip(crops, rects.tolist(), strict=True):
        window = image[:, :, top:bottom, left:right]
        expected = (F.interpolate(window, size=(24, 24), mode="area")[0] - 127.5) * 0.0078125
        assert torch.allclose(crop, expected, atol=1e-5)


def test_pnet_computes_the_published_layers_after_a_load():
    """P-Net's folded first layer and heads (built from the weights at each load) give what its layers
    in their published order give, on sides odd and even, with slopes of both signs."""
    generator = torch.Generator().manual_seed(0)
    net = PNet()
    state = {
        key: torch.randn(value.shape, generator=generator) * 0.3 for key, value in net.state_dict().items()
    }
    net.load_state_dict(state)
    with torch.inference_mode():
        for height, width in ((12, 12), (25, 40), (40, 25), (63, 97)):
            x = torch.randn(2, 3, height, width, generator=generator)
            pooled = F.max_pool2d(net.prelu1(net.conv1(x)), 2, 2, ceil_mode=True)
            features = net.prelu3(net.conv3(net.prelu2(net.conv2(pooled))))
            offsets, probs = net(x)
            assert torch.allclose(offsets, net.conv4_2(features), atol=1e-5)
            assert torch.allclose(probs, F.softmax(net.conv4_1(features), dim=1)[:, 1], atol=1e-6)
