"""Reading dlib's dnn network files (the `serialize(net)` of dlib/dnn/core.h) without dlib.

A dnn network is a nest of C++ templates, `loss<layer<layer<...<input>>>>`, and its file is that nest
written from the outside in: each wrapper writes a version number, then the network below it, then its
own state (dlib/dnn/core.h):

- add_loss_layer: version 1, the loss details, the network below.
- add_layer over a layer: version 2, the network below, the layer details, three flags and three
  training tensors (x_grad, cached_output, params_grad).
- add_layer over the input layer: version 3 (2 before the sample expansion factor), the input layer,
  the layer details, three flags, three tensors (x_grad, cached_output, grad_final), the factor.
- add_tag_layer and add_skip_layer: version 1 and the network below, nothing of their own. A tag
  directly over the input layer writes version 2 (1), the input layer, two tensors, a flag, the factor.

So a file starts with a run of version numbers, one per wrapper from the loss down to the input layer,
and the layers' details follow from the input up. Layer and input details start with their name and a
version suffix ("con_4", "relu_2", "input_rgb_image_sized"); tensors are a version (2), their four
dimensions and raw little-endian float32 values (dlib/dnn/tensor.h).

What the file does not say, because dlib keeps it in the C++ types: the ids of tags and of the tags
that skip and add_prev layers refer to, and whether a wrapper without state is a tag or a skip. This
reader calls such a wrapper "skip" when it sits directly over a tag (dlib's resnets and inception blocks
write `skip<tag<...>>`, and a tag over a tag or a skip over a skip would do nothing) and "tag"
otherwise; options of tag, skip and add_prev are empty. The usual reading, which holds for dlib's
residual networks: add_prev adds the output of the nearest tag below it; a skip's output is that of
the nearest tag below the tag it sits on. The pyramid type of an image pyramid input (pyramid_down<6>
for dlib's face detector) is a template parameter too, and is not in the file either.

`repeat<>` networks are not read: their repeated sub-networks are written before the layers below them
and cannot be told apart from tags without knowing the types; such a file is refused with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerec_plugins.dlib.serialization import DlibFormatError, DlibReader

TENSOR_VERSION = 2
CONV_MODE, FC_MODE = 0, 1  # dlib's layer_mode
FC_HAS_BIAS = 0  # dlib's fc_bias_mode (FC_NO_BIAS is 1)
LOSS_LAYER_VERSION = 1
STATELESS_WRAPPER_VERSION = 1  # add_tag_layer and add_skip_layer over a layer
ADD_LAYER_VERSION = 2
# Wrappers over the input layer, by version: whether they write the sample expansion factor.
INPUT_ADD_LAYER_VERSIONS = {2: False, 3: True}
INPUT_TAG_VERSIONS = {1: False, 2: True}
# Defaults dlib keeps when a file predates a field (dlib/dnn/input.h, loss.h).
PYRAMID_PADDING, PYRAMID_OUTER_PADDING = 10, 11
METRIC_MARGIN, METRIC_DIST_THRESH = 0.1, 0.75
BBR_LAMBDA = 100.0
LONGEST_NAME = 64


@dataclass(frozen=True)
class DlibLayer:
    """One layer of a dlib network, as the file stores it.

    `kind` is dlib's serialized name without its version suffix or trailing underscore ("con",
    "affine", "bn", "relu", "max_pool", "avg_pool", "add_prev", "fc", "tag", "skip", the input's name
    such as "input_rgb_image_sized" or "input_rgb_image_pyramid", "loss_metric", "loss_mmod").

    `options` holds every scalar the layer stores, by dlib's member names without trailing underscores:
    con: num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x, use_bias, use_relu and the four
    learning-rate and weight-decay multipliers; fc: num_outputs, num_inputs, bias_mode ("has_bias" or
    "no_bias"), use_bias, multipliers; affine: mode ("conv": one gamma and beta per channel, "fc": per
    element), disabled; bn: mode, eps, num_updates, running_stats_window_size, multipliers; relu:
    disabled; max_pool and avg_pool: nr, nc, stride_y, stride_x, padding_y, padding_x (nr = nc = 0
    pools the whole input: max_pool_everything, avg_pool_everything); input_rgb_image_sized: avg_red,
    avg_green, avg_blue, nr, nc; input_rgb_image_pyramid: avg_red, avg_green, avg_blue,
    pyramid_padding, pyramid_outer_padding; loss_metric: margin, dist_thresh; loss_mmod: mmod_options's
    detector_windows (a list of {"width", "height", "label"}), loss_per_false_alarm,
    loss_per_missed_target, truth_match_iou_threshold, overlaps_nms and overlaps_ignore (each
    {"iou_thresh", "percent_covered_thresh"}), assume_image_pyramid, use_bounding_box_regression,
    bbr_lambda. Fields an older file lacks hold the value dlib assumes for it.

    `tensors` holds the parameters as float32 arrays in their natural shapes: con "weight"
    (out, in, kh, kw) and "bias" (out,); fc "weight" (in, out), as dlib stores and multiplies it
    (output = input @ weight), and "bias" (out,); affine and bn "gamma" and "beta" (channels,) in conv
    mode or (channels, rows, columns) in fc mode; bn also "running_mean" and "running_var". Layers
    without parameters, or not yet set up, have none.
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class DlibNetwork:
    """A dlib network: `layers` from the input side (the input layer first) to the loss layer (last)."""

    layers: list[DlibLayer]

    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


def read_network(path: str | Path) -> DlibNetwork:
    """The network in the dlib dnn file `path` (written by dlib's `serialize(file) << net`).

    Raises FacerecError (DlibFormatError) naming the file when it is not such a network, is truncated,
    or has bytes left over after the network.
    """
    reader = DlibReader.open(path)
    if reader.int() != LOSS_LAYER_VERSION:
        raise reader.error("no dnn loss layer")
    loss = _details(reader, LOSSES, "a loss layer")
    layers = [*_layers_below_loss(reader), loss]
    if not reader.at_end():
        raise reader.error(f"{len(reader.data) - reader.offset} bytes after the network")
    return DlibNetwork(_name_stateless_wrappers(layers))


def _layers_below_loss(reader: DlibReader) -> list[DlibLayer]:
    """The layers under the loss, from the input up: the wrappers' run of versions, then their details."""
    versions = []
    while True:
        version = reader.int()
        name = _peek_name(reader)
        if name in INPUTS:
            break
        if name in LAYERS:
            raise reader.error("a repeat<> layer, which this reader does not support")
        versions.append(version)
    layers = [_details(reader, INPUTS, "an input layer"), _input_wrapper(reader, version)]
    for version in reversed(versions):
        if version == ADD_LAYER_VERSION:
            layers.append(_layer(reader))
        elif version == STATELESS_WRAPPER_VERSION:
            layers.append(DlibLayer("stateless"))
        else:
            raise reader.error(f"a layer of unknown version {version}")
    return layers


def _input_wrapper(reader: DlibReader, version: int) -> DlibLayer:
    """The wrapper right over the input layer: a layer (add_layer) or a tag (add_tag_layer)."""
    if _peek_name(reader) in LAYERS:
        if version not in INPUT_ADD_LAYER_VERSIONS:
            raise reader.error(f"a first layer of unknown version {version}")
        layer = _details(reader, LAYERS, "a layer")
        _wrapper_state(reader, with_factor=INPUT_ADD_LAYER_VERSIONS[version])
        return layer
    if version not in INPUT_TAG_VERSIONS:
        raise reader.error(f"a tag of unknown version {version} on the input layer")
    _tensor(reader), _tensor(reader), reader.bool()  # cached output, gradient, staleness
    if INPUT_TAG_VERSIONS[version]:
        reader.int()  # sample expansion factor
    return DlibLayer("tag")


def _layer(reader: DlibReader) -> DlibLayer:
    """An add_layer's layer details and its training state, which is read and dropped."""
    layer = _details(reader, LAYERS, "a layer")
    _wrapper_state(reader, with_factor=False)
    return layer


def _wrapper_state(reader: DlibReader, with_factor: bool) -> None:
    """add_layer's flags, three training tensors and, over the input, the sample expansion factor."""
    for _ in range(3):
        reader.bool()
    for _ in range(3):
        _tensor(reader)
    if with_factor:
        reader.int()


def _name_stateless_wrappers(layers: list[DlibLayer]) -> list[DlibLayer]:
    """Tags and skips: a stateless wrapper directly over a tag is a skip, any other one a tag."""
    named: list[DlibLayer] = []
    for layer in layers:
        if layer.kind == "stateless":
            layer = DlibLayer("skip" if named[-1].kind == "tag" else "tag")
        named.append(layer)
    return named


def _peek_name(reader: DlibReader) -> str | None:
    """The name string at the cursor, if one is there, without moving the cursor."""
    start = reader.offset
    try:
        length = reader.int()
        if not 0 < length <= LONGEST_NAME:
            return None
        text = bytes(reader.take(length))
    except DlibFormatError:
        return None
    finally:
        reader.offset = start
    return text.decode("ascii") if text.isascii() and text.decode("ascii").isprintable() else None


def _details(reader: DlibReader, readers: dict[str, Callable], what: str) -> DlibLayer:
    name = reader.string()
    read = readers.get(name)
    if read is None:
        raise reader.error(f"'{name}' where {what} was expected")
    return read(reader, name)


# Primitives.


def _tensor(reader: DlibReader) -> np.ndarray:
    """A resizable_tensor: (num_samples, k, nr, nc) float32."""
    if reader.int() != TENSOR_VERSION:
        raise reader.error("a tensor of unknown version")
    shape = tuple(reader.int() for _ in range(4))
    if min(shape) < 0:
        raise reader.error(f"a tensor of shape {shape}")
    return reader.tensor_values(int(np.prod(shape))).reshape(shape)


def _alias(reader: DlibReader) -> tuple[int, int, int, int]:
    """An alias_tensor's dimensions: where in a layer's flat parameters one of its tensors lies."""
    if reader.int() != 1:
        raise reader.error("an alias tensor of unknown version")
    return tuple(reader.int() for _ in range(4))


def _multipliers(reader: DlibReader) -> dict[str, float]:
    names = ("learning_rate_multiplier", "weight_decay_multiplier")
    names += tuple(f"bias_{name}" for name in names)
    return {name: reader.float() for name in names}


def _split(reader: DlibReader, params: np.ndarray, parts: dict[str, tuple[int, ...]]) -> dict:
    """`params` cut into consecutive named parts of the given shapes (none when params is empty)."""
    flat = params.reshape(-1)
    if flat.size == 0:
        return {}
    sizes = [int(np.prod(shape)) for shape in parts.values()]
    if sum(sizes) != flat.size:
        raise reader.error(f"{flat.size} parameters where {sum(sizes)} were expected")
    ends = np.cumsum(sizes)
    return {
        name: flat[end - size : end].reshape(shape)
        for (name, shape), size, end in zip(parts.items(), sizes, ends, strict=True)
    }


def _mode(reader: DlibReader, mode: int) -> str:
    if mode not in (CONV_MODE, FC_MODE):
        raise reader.error(f"layer mode {mode}")
    return "conv" if mode == CONV_MODE else "fc"


def _gamma_shape(mode: str, alias: tuple[int, ...]) -> tuple[int, ...]:
    """Per channel in conv mode, per element (channels, rows, columns) in fc mode."""
    return (alias[1],) if mode == "conv" else alias[1:]


# Layer details (dlib/dnn/layers.h).


def _con(reader: DlibReader, name: str) -> DlibLayer:
    params = _tensor(reader)
    keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    options: dict[str, Any] = {key: reader.int() for key in keys}
    filters, biases = _alias(reader), _alias(reader)
    options.update(_multipliers(reader))
    options["use_bias"] = reader.bool() if name in ("con_5", "con_6") else True
    options["use_relu"] = reader.bool() if name == "con_6" else False
    parts = {"weight": filters}
    if options["use_bias"]:
        parts["bias"] = (biases[1],)
    return DlibLayer("con", options, _split(reader, params, parts))


def _fc(reader: DlibReader, name: str) -> DlibLayer:
    options: dict[str, Any] = {"num_outputs": reader.int(), "num_inputs": reader.int()}
    params = _tensor(reader)
    weights, biases = _alias(reader), _alias(reader)
    bias_mode = reader.int()
    options["bias_mode"] = "has_bias" if bias_mode == FC_HAS_BIAS else "no_bias"
    options.update(_multipliers(reader))
    options["use_bias"] = reader.bool() if name == "fc_3" else True
    parts = {"weight": weights[:2]}
    if bias_mode == FC_HAS_BIAS and options["use_bias"]:
        parts["bias"] = (biases[1],)
    return DlibLayer("fc", options, _split(reader, params, parts))


def _affine(reader: DlibReader, name: str) -> DlibLayer:
    params = _tensor(reader)
    gamma, beta = _alias(reader), _alias(reader)
    mode = _mode(reader, reader.int())
    disabled = reader.bool() if name == "affine_2" else False
    parts = {"gamma": _gamma_shape(mode, gamma), "beta": _gamma_shape(mode, beta)}
    return DlibLayer("affine", {"mode": mode, "disabled": disabled}, _split(reader, params, parts))


def _bn(reader: DlibReader, name: str) -> DlibLayer:
    mode = "conv" if name == "bn_con2" else "fc"
    params = _tensor(reader)
    gamma, beta = _alias(reader), _alias(reader)
    _tensor(reader), _tensor(reader)  # the last batch's means and inverse deviations (training state)
    running_mean, running_var = _tensor(reader), _tensor(reader)
    options: dict[str, Any] = {"mode": mode, "num_updates": reader.int()}
    options["running_stats_window_size"] = reader.int()
    options.update(_multipliers(reader))
    options["eps"] = reader.float()
    tensors = _split(reader, params, {"gamma": _gamma_shape(mode, gamma), "beta": _gamma_shape(mode, beta)})
    if tensors:
        tensors["running_mean"] = running_mean.reshape(tensors["gamma"].shape)
        tensors["running_var"] = running_var.reshape(tensors["gamma"].shape)
    return DlibLayer("bn", options, tensors)


def _relu(reader: DlibReader, name: str) -> DlibLayer:
    return DlibLayer("relu", {"disabled": reader.bool() if name == "relu_2" else False})


def _pool(reader: DlibReader, name: str) -> DlibLayer:
    keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return DlibLayer(name.removesuffix("_2"), {key: reader.int() for key in keys})


def _add_prev(reader: DlibReader, name: str) -> DlibLayer:
    return DlibLayer("add_prev")


LAYERS: dict[str, Callable[[DlibReader, str], DlibLayer]] = {
    **dict.fromkeys(("con_4", "con_5", "con_6"), _con),
    **dict.fromkeys(("fc_2", "fc_3"), _fc),
    **dict.fromkeys(("affine_", "affine_2"), _affine),
    **dict.fromkeys(("bn_con2", "bn_fc2"), _bn),
    **dict.fromkeys(("relu_", "relu_2"), _relu),
    **dict.fromkeys(("max_pool_2", "avg_pool_2"), _pool),
    "add_prev_": _add_prev,
}


# Input layers (dlib/dnn/input.h).


def _average_colour(reader: DlibReader) -> dict[str, float]:
    return {key: reader.float() for key in ("avg_red", "avg_green", "avg_blue")}


def _rgb_image_sized(reader: DlibReader, name: str) -> DlibLayer:
    options: dict[str, Any] = _average_colour(reader)
    options.update(nr=reader.int(), nc=reader.int())
    return DlibLayer(name, options)


def _rgb_image_pyramid(reader: DlibReader, name: str) -> DlibLayer:
    options: dict[str, Any] = _average_colour(reader)
    padding = (reader.int(), reader.int()) if name.endswith("2") else (PYRAMID_PADDING, PYRAMID_OUTER_PADDING)
    options.update(pyramid_padding=padding[0], pyramid_outer_padding=padding[1])
    return DlibLayer("input_rgb_image_pyramid", options)


INPUTS: dict[str, Callable[[DlibReader, str], DlibLayer]] = {
    "input_rgb_image_sized": _rgb_image_sized,
    "input_rgb_image_pyramid": _rgb_image_pyramid,
    "input_rgb_image_pyramid2": _rgb_image_pyramid,
}


# Loss layers (dlib/dnn/loss.h).


def _loss_metric(reader: DlibReader, name: str) -> DlibLayer:
    if name == "loss_metric_":  # these were fixed before loss_metric_2
        return DlibLayer("loss_metric", {"margin": METRIC_MARGIN, "dist_thresh": METRIC_DIST_THRESH})
    return DlibLayer("loss_metric", {"margin": reader.float(), "dist_thresh": reader.float()})


def _overlap_tester(reader: DlibReader) -> dict[str, float]:
    """A test_box_overlap (dlib/image_processing/box_overlap_testing.h)."""
    return {"iou_thresh": reader.float(), "percent_covered_thresh": reader.float()}


def _detector_window(reader: DlibReader) -> dict[str, Any]:
    version = reader.int()
    if version not in (1, 2):
        raise reader.error(f"a detector window of unknown version {version}")
    width, height = reader.int(), reader.int()
    return {"width": width, "height": height, "label": reader.string() if version == 2 else ""}


def _loss_mmod(reader: DlibReader, name: str) -> DlibLayer:
    """loss_mmod_ and its mmod_options (versions 1 to 4; later fields take dlib's defaults)."""
    version = reader.int()
    if not 1 <= version <= 4:
        raise reader.error(f"mmod options of unknown version {version}")
    if version == 1:
        windows = [{"width": reader.int(), "height": reader.int(), "label": ""}]
    else:
        windows = reader.vector(lambda: _detector_window(reader))
    options: dict[str, Any] = {"detector_windows": windows}
    for key in ("loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold"):
        options[key] = reader.float()
    options["overlaps_nms"] = _overlap_tester(reader)
    options["overlaps_ignore"] = _overlap_tester(reader)
    options["assume_image_pyramid"] = bool(reader.take(1)[0]) if version >= 3 else True
    regression = (reader.bool(), reader.float()) if version >= 4 else (False, BBR_LAMBDA)
    options["use_bounding_box_regression"], options["bbr_lambda"] = regression
    return DlibLayer("loss_mmod", options)


LOSSES: dict[str, Callable[[DlibReader, str], DlibLayer]] = {
    "loss_metric_": _loss_metric,
    "loss_metric_2": _loss_metric,
    "loss_mmod_": _loss_mmod,
}
