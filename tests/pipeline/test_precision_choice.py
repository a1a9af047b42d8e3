"""What decides precisions, tested over CPU flag sets this machine does not have, and the network file's
refusals: no models here except a small real network traced by torch.fx."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from torch import fx, nn

from facerec.errors import UsageError
from facerec.gallery.provenance import Provenance
from facerec.pipeline import fxfile
from facerec.pipeline.autoprecision import GAIN, ranking
from facerec.pipeline.int8 import FORESEEN_FACES, foreseen
from facerec.pipeline.precision import (
    COSINE,
    RELEVANT_FLAGS,
    Machine,
    candidates,
    default_precision,
    int8_weight_bits,
    interchangeable,
    networks_in_bf16,
    this_cpu,
)

AVX2 = {"avx2", "fma"}
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
ALDER_LAKE = AVX2 | {"avx_vnni"}


@pytest.mark.parametrize(
    ("flags", "device", "quantizable", "gpu_bf16", "expected"),
    [
        (AVX2, "cpu", True, False, ("fp32", "int8")),
        (ALDER_LAKE, "cpu", True, False, ("fp32", "int8")),
        (ZEN4, "cpu", True, False, ("fp32", "int8", "bf16")),
        (SAPPHIRE_RAPIDS, "cpu", True, False, ("fp32", "int8", "bf16")),
        (SAPPHIRE_RAPIDS, "cpu", False, False, ("fp32", "bf16")),
        (AVX2, "cpu", False, False, ("fp32",)),
        (set(), "cpu", True, False, ("fp32", "int8")),
        (SAPPHIRE_RAPIDS, "cuda", True, True, ("fp32", "bf16")),
        (SAPPHIRE_RAPIDS, "cuda", True, False, ("fp32",)),
    ],
)
def test_the_precisions_measured_follow_from_the_flags(flags, device, quantizable, gpu_bf16, expected):
    """Emulated bf16 is never measured (slower than fp32); int8 never on a GPU."""
    assert candidates(frozenset(flags), device, quantizable, gpu_bf16) == expected


@pytest.mark.parametrize(
    ("flags", "bits"), [(AVX2, 7), (ALDER_LAKE, 7), (ZEN4, 8), (SAPPHIRE_RAPIDS, 8), ({"amx_int8"}, 8)]
)
def test_int8_weights_are_8_bit_only_where_products_sum_in_32_bits(flags, bits):
    assert int8_weight_bits(frozenset(flags)) == bits


def test_this_cpu_is_named_with_its_relevant_flags_only():
    model, flags = this_cpu()
    assert model and flags <= set(RELEVANT_FLAGS)
    line = Machine(model, flags).describe()
    assert line.startswith(model) and all(flag in line for flag in RELEVANT_FLAGS)


@pytest.mark.parametrize(
    ("recorded", "cosine", "other", "expected"),
    [
        ("fp32", 1.0, "bf16", True),
        ("bf16", None, "fp32", True),
        ("fp32", 1.0, "int8", False),
        ("bf16", None, "int8", False),
        ("int8", COSINE, "fp32", True),
        ("int8", 0.9999, "bf16", True),
        ("int8", 0.9990, "fp32", False),
        ("int8", None, "fp32", False),
        ("int8", 0.9990, "int8", True),  # the same network: facerec.gallery.models checks which
    ],
)
def test_which_precisions_stand_in_for_each_other(recorded, cosine, other, expected):
    assert interchangeable(recorded, cosine, other) is expected


def test_a_gallery_accepts_precisions_by_its_int8_networks_measured_agreement():
    int8 = Provenance("dlib-resnet", "dlib-v1", "ab" * 32, None, "mtcnn", precision="int8")
    close = Provenance(
        **{**vars(int8), "int8_network": {"xxh3_128": "1" * 32, "agreement": {"cosine_unseen": 0.9997}}}
    )
    far = Provenance(
        **{**vars(int8), "int8_network": {"xxh3_128": "1" * 32, "agreement": {"cosine_unseen": 0.999}}}
    )
    fp32 = Provenance(**{**vars(int8), "precision": "fp32"})
    assert close.accepts("fp32") and close.accepts("bf16") and close.same_vectors(fp32)
    assert not far.accepts("fp32") and not far.same_vectors(fp32)
    assert not int8.accepts("bf16")  # recorded before agreements were: not known to be close
    assert fp32.accepts("bf16") and not fp32.accepts("int8")
    bf16_detector = Provenance(**{**vars(fp32), "detector_precision": "bf16"})
    assert not fp32.same_vectors(bf16_detector)  # other boxes
    assert "detector mtcnn (bf16)" in bf16_detector.describe()


def test_auto_keeps_the_fastest_precision_within_the_cosine_and_fp32_within_its_gain():
    measured = {
        "fp32": {"faces_per_s": 40.0, "cosine_worst": 1.0},
        "int8": {"faces_per_s": 70.0, "cosine_worst": 0.9991},  # fast but too far from fp32
        "bf16": {"faces_per_s": 41.0, "cosine_worst": 0.99999},  # within timing noise of fp32
    }
    assert ranking(measured) == ["fp32", "bf16"]
    measured["bf16"]["faces_per_s"] = 40.0 * GAIN * 1.01
    measured["int8"]["cosine_worst"] = COSINE
    assert ranking(measured) == ["int8", "bf16", "fp32"]
    measured["int8"]["cosine_worst"] = None  # calibrated on too few faces to foresee others
    assert ranking(measured) == ["bf16", "fp32"]


def test_int8_foresees_unseen_faces_only_from_enough_calibration_faces():
    # A gallery of two people calibrated int8 on two faces: their worst (0.99983) foresaw 0.99966, and
    # auto took int8 where eleven faces foresee 0.99894, under COSINE.
    assert foreseen({"faces": 2, "cosine_min": 0.99983}) is None
    assert foreseen({"faces": FORESEEN_FACES - 1, "cosine_min": 0.99999}) is None
    assert foreseen({"faces": FORESEEN_FACES, "cosine_min": 0.99947}) == pytest.approx(0.99894, abs=1e-6)


def test_the_precision_variable_is_checked(monkeypatch):
    monkeypatch.setenv("FACEREC_PRECISION", "bf16")
    assert default_precision() == "bf16"
    monkeypatch.setenv("FACEREC_PRECISION", "fp16")
    with pytest.raises(UsageError, match="FACEREC_PRECISION=fp16: unknown precision"):
        default_precision()
    monkeypatch.delenv("FACEREC_PRECISION")
    assert default_precision() == "auto"


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inner = torch.relu(self.conv(x))
        return self.linear(inner.mean((2, 3))), inner


def test_networks_in_bf16_run_top_level_modules_under_autocast_and_return_float32():
    network, x = Two(), torch.randn(2, 3, 8, 8)
    seen = []
    network.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with networks_in_bf16():
        vector, grid = network(x)
        assert x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")  # between networks
    assert seen == [torch.bfloat16]  # the conv inside computed in bf16
    assert vector.dtype == grid.dtype == torch.float32
    reference, _ = network(x)  # outside: float32 throughout
    assert seen[-1] == torch.float32 and not torch.equal(vector, reference)
    assert torch.allclose(vector, reference, atol=0.05)


def traced(graph: fx.Graph) -> fx.GraphModule:
    return fx.GraphModule(Two(), graph)


def test_a_network_file_names_only_what_its_tables_allow():
    network = fx.symbolic_trace(Two())
    data = fxfile.write({"format": "x"}, network.state_dict(), fxfile.describe(network))
    _, state, graph = fxfile.read(data)
    x = torch.randn(2, 3, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(fxfile.build(graph, state)(x), network(x), strict=True))

    printing = fx.Graph()
    printing.output(printing.call_function(print, (printing.placeholder("x"),)))
    with pytest.raises(fxfile.NotDescribable, match="function"):
        fxfile.describe(traced(printing))

    for field, value in (("target", "builtins.eval"), ("target", "os.system")):
        edited = json.loads(json.dumps(graph))
        node = next(n for n in edited["nodes"] if n["op"] == "call_function")
        node[field] = value
        with pytest.raises(fxfile.Unreadable, match="unknown function"):
            fxfile.build(edited, state)
    edited = json.loads(json.dumps(graph))
    edited["modules"]["conv"]["type"] = "subprocess.Popen"
    with pytest.raises(fxfile.Unreadable):
        fxfile.build(edited, state)


def test_a_network_file_is_json_and_npy_arrays_only():
    network = fx.symbolic_trace(Two())
    data = fxfile.write({"format": "x"}, network.state_dict(), fxfile.describe(network))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert names[0] == "network.json" and all(
            n.startswith("arrays/") and n.endswith(".npy") for n in names[1:]
        )
        json.loads(archive.read("network.json"))
        for name in names[1:]:
            member = io.BytesIO(archive.read(name))
            major, _ = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(member)
            assert not dtype.hasobject  # no object arrays: nothing that needs pickle
    with pytest.raises(fxfile.Unreadable):
        fxfile.read(b"PK\x03\x04 not a zip")
