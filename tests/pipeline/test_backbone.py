"""The `inception-resnet` backbone against facenet-pytorch: weight layout, embeddings, logits, fused form.

The references in ../shared/reference were made by facenet-pytorch itself under seeded weights; an exact
port lands near 1e-7, the contract allows 1e-4.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from facerec.contract.parts import Backbone
from facerec.contract.registry import registry
from facerec.errors import FacerecError
from facerec.pipeline.engine import load_backbone
from facerec.pipeline.standardize import standardize_pictures
from facerec.pipeline.weights import load_state_dict
from support import SHAPES, SHARED
from support.seeded_weights import make_seeded_weights

TOLERANCE = 1e-4
REFERENCE = json.loads((SHARED / "reference" / "inception_resnet_v1.salt0.json").read_text())
LAYOUT = {key: list(shape) for key, shape in json.loads(SHAPES.read_text()).items()}


def layout_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def max_difference(a: torch.Tensor, b) -> float:
    return (a - torch.as_tensor(b)).abs().max().item()


@pytest.fixture(scope="session")
def backbone():
    return registry().create("backbone", "inception-resnet")


@pytest.fixture(scope="session")
def faces() -> torch.Tensor:
    """The four faces facenet-pytorch's MTCNN aligned, standardized as the reference input was."""
    pictures = [Image.open(SHARED / path) for path in REFERENCE["images"]]
    return standardize_pictures(pictures, registry().create("backbone", "inception-resnet").recipe)


@pytest.fixture(scope="session")
def salt0(backbone, seeded_weights):
    """The trainable network under seeded weights (salt 0, with logits), loaded from a real file."""
    return backbone.build(load_state_dict(seeded_weights)).eval()


@pytest.fixture(scope="session")
def salt3(backbone, tmp_path_factory):
    """The trainable network under other seeded weights (salt 3), from a file without logits."""
    path = make_seeded_weights(tmp_path_factory.mktemp("weights") / "salt3.pt", salt=3, with_logits=False)
    return backbone.build(load_state_dict(path)).eval()


def test_plugin_declares_the_facenet_shapes_and_weight_files(backbone):
    assert isinstance(backbone, Backbone)
    assert (backbone.recipe.size, backbone.embedding_size) == (160, 512)
    assert (backbone.recipe.mean, backbone.recipe.std, backbone.recipe.channels) == (
        (127.5,) * 3,
        (128.0,) * 3,
        "RGB",
    )
    assert (backbone.recipe.aligner, dict(backbone.recipe.aligner_options)) == ("box", {"margin": 0.0})
    assert backbone.default_pretrained == "vggface2"
    assert dict(backbone.thresholds) == {"vggface2": 1.0, "casia-webface": 1.0}
    assert backbone.pretrained["vggface2"].url.endswith("/v2.2.9/20180402-114759-vggface2.pt")
    assert backbone.pretrained["vggface2"].filename == "20180402-114759-vggface2.pt"
    assert backbone.pretrained["casia-webface"].filename == "20180408-102900-casia-webface.pt"


def test_a_weights_file_loads_named_by_its_own_sha256(seeded_weights, tmp_path):
    loaded = load_backbone("inception-resnet", weights=seeded_weights)
    assert loaded.weights_sha256 == hashlib.sha256(Path(seeded_weights).read_bytes()).hexdigest()
    with pytest.raises(FacerecError, match=f"^{tmp_path / 'none.pt'}: no such weights file$"):
        load_backbone("inception-resnet", weights=tmp_path / "none.pt")


def test_weights_of_another_number_type_load_as_float32(backbone, seeded_weights):
    """As dlib-resnet's `build` does: a file of whole numbers (or float64) is cast, not a traceback."""
    state = load_state_dict(seeded_weights)
    whole = {
        key: (value * 100).round().long() if value.is_floating_point() else value
        for key, value in state.items()
    }
    network = backbone.build(whole)
    assert {parameter.dtype for parameter in network.parameters()} == {torch.float32}
    assert torch.equal(network.state_dict()["conv2d_1a.conv.weight"], whole["conv2d_1a.conv.weight"].float())


def test_state_dict_layout_is_facenet_pytorchs_with_and_without_logits(backbone, salt0):
    assert layout_of(salt0) == LAYOUT
    without_logits = {k: v for k, v in LAYOUT.items() if not k.startswith("logits.")}
    assert layout_of(backbone.build()) == without_logits


def test_seeded_embeddings_equal_facenet_pytorchs(salt0, faces):
    with torch.no_grad():
        embeddings = salt0(faces)
    assert max_difference(embeddings, REFERENCE["embeddings"]) < TOLERANCE
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(faces)))


def test_seeded_logits_equal_facenet_pytorchs(salt0, faces):
    with torch.no_grad():
        logits = salt0.classify(faces)
    assert logits.shape == (len(faces), REFERENCE["logits_num_classes"])
    assert max_difference(logits[:, :16], REFERENCE["logits_first16"]) < TOLERANCE * 10  # logits are ~5
    assert logits.argmax(dim=1).tolist() == REFERENCE["logits_argmax"]


def test_inference_network_equals_facenet_pytorchs(backbone, salt0, faces):
    embeddings = backbone.for_inference(salt0)(faces)
    assert max_difference(embeddings, REFERENCE["embeddings"]) < TOLERANCE


def test_inference_network_equals_trainable_one_under_other_weights(backbone, salt3, faces):
    with torch.no_grad():
        expected = salt3(faces)
    fused = backbone.for_inference(salt3)
    assert max_difference(fused(faces), expected) < TOLERANCE
    assert max_difference(fused(faces[:1]), expected[:1]) < TOLERANCE  # batch size does not matter
    assert max_difference(expected, REFERENCE["embeddings"]) > 0.01  # the salt did change the network


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda sd: sd.pop("conv2d_4a.conv.weight"), "missing conv2d_4a.conv.weight"),
        (lambda sd: sd.update({"head.weight": torch.zeros(2)}), "unexpected head.weight"),
        (lambda sd: sd.update({"last_bn.bias": torch.zeros(128)}), "last_bn.bias [128] (expected [512])"),
        (lambda sd: sd.pop("logits.weight"), "unexpected logits.bias"),
    ],
)
def test_weights_that_do_not_fit_raise_a_short_value_error(backbone, salt0, change, named):
    state_dict = dict(salt0.state_dict())
    change(state_dict)
    with pytest.raises(ValueError, match="do not fit Inception-ResNet-v1") as raised:
        backbone.build(state_dict)
    assert named in str(raised.value)
    assert len(str(raised.value)) < 300


def test_weights_without_batch_counters_load(backbone, salt3):
    """Files saved before torch 0.4.1 have no num_batches_tracked; they load, the counters at zero."""
    state_dict = {k: v for k, v in salt3.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = backbone.build(state_dict).state_dict()
    assert loaded.keys() == salt3.state_dict().keys()
    assert loaded["conv2d_1a.bn.num_batches_tracked"] == 0
    assert torch.equal(loaded["last_bn.running_var"], state_dict["last_bn.running_var"])


def test_trainable_network_learns(backbone, faces):
    network = backbone.build().train()
    loss = network(faces[:2]).sum()
    loss.backward()
    assert all(p.grad is not None for p in network.parameters())
