"""The reader of dlib's dnn network files, on the two files face_recognition ships.

The layer structure expected here is the one dlib's examples declare for these networks
(examples/dnn_face_recognition_ex.cpp, examples/dnn_mmod_face_detection_ex.cpp); that the tensors hold
dlib's numbers is shown in test_dlib_resnet.py, where the network built from them gives dlib's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facerec.errors import FacerecError
from facerec.pipeline.weights import fetch
from facerec_plugins.dlib.dnn import read_network
from facerec_plugins.dlib.models import MMOD_DETECTOR, RESNET_V1


@pytest.fixture(scope="module")
def resnet_file() -> Path:
    return fetch(RESNET_V1)[0]


@pytest.fixture(scope="module")
def mmod_file() -> Path:
    return fetch(MMOD_DETECTOR)[0]


def test_reads_the_face_recognition_resnet_to_its_last_byte(resnet_file):
    network = read_network(resnet_file)  # raises unless the network ends where the file does
    kinds = network.kinds()
    assert kinds[0] == "input_rgb_image_sized" and kinds[-1] == "loss_metric"
    assert network.layers[0].options["nr"] == network.layers[0].options["nc"] == 150
    # 29 convolutions, each with its affine layer; 14 residual additions, 4 of them over a 2x2 pool
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("add_prev")) == (29, 29, 14)
    assert (kinds.count("tag"), kinds.count("skip")) == (18, 4)
    pools = [layer.options for layer in network.layers if layer.kind == "avg_pool"]
    assert [(pool["nr"], pool["stride_y"]) for pool in pools] == [(2, 2)] * 4 + [(0, 1)]  # + everything
    fc = network.layers[-2]
    assert fc.kind == "fc" and fc.options["bias_mode"] == "no_bias"
    assert fc.tensors["weight"].shape == (256, 128)  # (in, out) as dlib stores it


def test_convolutions_chain_and_hold_weights_of_their_declared_shape(resnet_file, mmod_file):
    for path in (resnet_file, mmod_file):
        cons = [layer for layer in read_network(path).layers if layer.kind == "con"]
        in_channels = 3
        for con in cons:
            options = con.options
            shape = (options["num_filters"], con.tensors["weight"].shape[1], options["nr"], options["nc"])
            assert con.tensors["weight"].shape == shape
            assert con.tensors["bias"].shape == (options["num_filters"],)
            if path == mmod_file:  # a plain chain; the resnet's blocks keep the channels of their input
                assert shape[1] == in_channels
            in_channels = options["num_filters"]


def test_reads_the_mmod_face_detector_to_its_last_byte(mmod_file):
    network = read_network(mmod_file)
    kinds = network.kinds()
    assert kinds[0] == "input_rgb_image_pyramid" and kinds[-1] == "loss_mmod"
    # dlib trained it with bn_con, which dlib's affine layer folds on loading; the file keeps bn
    assert kinds[1:-1] == ["con", "bn", "relu"] * 6 + ["con"]
    strides = [layer.options["stride_y"] for layer in network.layers if layer.kind == "con"]
    assert strides == [2, 2, 2, 1, 1, 1, 1]
    bn = network.layers[2]
    assert set(bn.tensors) == {"gamma", "beta", "running_mean", "running_var"}
    options = network.layers[-1].options
    assert [(w["width"], w["height"]) for w in options["detector_windows"]] == [(80, 80)]
    assert set(options["overlaps_nms"]) == {"iou_thresh", "percent_covered_thresh"}


def _one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize("cut", [0, 5, 1000, 0.5, -1])
@pytest.mark.parametrize("model", ["resnet_file", "mmod_file"])
def test_truncated_file_is_refused_naming_it(model, cut, request, tmp_path):
    data = request.getfixturevalue(model).read_bytes()
    length = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path = tmp_path / "truncated.dat"
    path.write_bytes(data[:length])
    with pytest.raises(FacerecError) as error:
        read_network(path)
    _one_line_naming(error, path)


@pytest.mark.parametrize(
    "garble",
    [
        lambda data: data + b"\x00",  # bytes after the network
        lambda data: data.replace(b"loss_metric_2", b"loss_metric_9", 1),  # unknown loss
        lambda data: data.replace(b"con_4", b"con_9", 1),  # unknown layer
        lambda data: data.replace(b"input_rgb_image_sized", b"input_rgb_image_sizeX", 1),  # unknown input
        lambda data: b"\x01\x02" + data[2:],  # a loss layer of another version
    ],
)
def test_garbled_file_is_refused_naming_it(garble, resnet_file, tmp_path):
    path = tmp_path / "garbled.dat"
    path.write_bytes(garble(resnet_file.read_bytes()))
    with pytest.raises(FacerecError) as error:
        read_network(path)
    _one_line_naming(error, path)
