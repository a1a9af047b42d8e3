"""`--precision int8`, `bf16` and `auto`, for real: real photos, real dlib weights (face_recognition_models),
the real CLI. (tests/pipeline/test_precision_choice.py tests what decides precisions over CPU flag sets.)

Inception-ResNet's pretrained weights cannot be fetched here, so its accuracy is measured with the seeded
weights of tests/support/seeded_weights.py (a network that quantizes well under arbitrary weights; the real ones
are checked by benchmarks/bench_embed.py where they exist). Calibration uses the demo's gallery photos;
the accuracy is measured on other photos, so it is not the calibration set scoring itself. On a CPU
without native bf16, bf16 runs emulated, slowly, with the numbers native bf16 gives. The test
session runs at FACEREC_PRECISION=fp32 (tests/conftest.py); these tests clear it to test auto.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.gallery.local import folder as store
from facerec.gallery.local.manifest import write_manifest
from facerec.gallery.provenance import Provenance
from facerec.integrity import recorded
from facerec.pipeline import fxfile
from facerec.pipeline.autoprecision import COSINE, GAIN, record_path
from facerec.pipeline.engine import build_pipeline, create_aligner, create_detector, load_backbone
from facerec.pipeline.int8 import Calibration, calibration_faces, quantizable_form, quantize
from facerec.pipeline.precision import bf16_copy, candidates, int8_weight_bits, machine, native_bf16, this_cpu
from facerec.pipeline.standardize import standardize_pictures
from support import ROOT, SHARED
from support.cli import run_cli
from support.gallery import KNN, shrink, small_people, weights_cache

PHOTOS = [  # real photos that are not the calibration set: 17 faces of many people
    *sorted((KNN / "test").glob("*.jpg")),
    *sorted((SHARED / "faces" / "test_images").glob("*/1.jpg")),
    *(SHARED / "faces" / "photos" / name for name in ("two_people.jpg", "obama3.jpg", "multiface.jpg")),
]
# dlib-resnet's worst face (a small one in multiface.jpg) is at 0.99899 with 9 calibration photos.
WORST_COSINE = {"inception-resnet": 0.999, "dlib-resnet": 0.9985}
KNOWN = {  # who is in each of the demo's test photos (as test_dlib_pipeline.py); others are strangers
    "alex_lacamoire1.jpg": {"alex_lacamoire"},
    "johnsnow_test1.jpg": {"kit_harington"},
    "kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
    "obama1.jpg": {"obama"},
    "obama_and_biden.jpg": {"obama", "biden"},
}
AUTO = {"FACEREC_PRECISION": ""}  # the commands' own default, auto


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Path:
    """The demo's people and test photos, shrunk, and a weights cache with MTCNN (no network)."""
    root = tmp_path_factory.mktemp("precision")
    small_people(root / "people")
    for name in KNOWN:
        shrink(KNN / "test" / name, root / "test" / name, 1000)
    weights_cache(root / "torch-home")
    return root


def faces_of(backbone: str, photos: list[Path], folder: Path) -> torch.Tensor:
    """The standardized faces of `photos` (all of them, mtcnn), aligned by `backbone`'s recipe."""
    pipeline = build_pipeline(backbone=backbone, embed=False, device="cpu")
    crops = []
    for photo in photos:
        small = shrink(photo, folder / photo.parent.name / photo.name, 800)
        (result,) = pipeline.run([small])
        crops += result.crops
    return standardize_pictures(crops, pipeline.recipe)


@pytest.fixture(scope="module")
def backbones(material, seeded_weights, tmp_path_factory) -> dict:
    """Per backbone: its weights, the unseen faces, the calibration faces, the FP32 embeddings of the
    unseen ones, and a weights cache of its own (its int8 network is calibrated once, for all tests)."""
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(material / "torch-home"))
        for backbone in ("dlib-resnet", "inception-resnet"):
            folder = tmp_path_factory.mktemp(backbone)
            weights = seeded_weights if backbone == "inception-resnet" else None
            faces = faces_of(backbone, PHOTOS, folder / "photos")
            calibration = faces_of(backbone, sorted((material / "people").glob("*/*")), folder / "people")
            assert len(faces) >= 15 and len(calibration) >= 9
            fp32 = load_backbone(backbone, weights=weights).embed(faces)
            home = weights_cache(folder / "torch-home")
            found[backbone] = {"weights": weights, "faces": faces, "calibration": calibration, "fp32": fp32, "home": home}  # fmt: skip
    return found


def loaded_at(backbone: str, found: dict, precision: str):
    loaded = load_backbone(backbone, weights=found["weights"], precision=precision)
    loaded.calibration = lambda: Calibration(found["calibration"], [])
    return loaded


@pytest.mark.parametrize("backbone", ["dlib-resnet", "inception-resnet"])
def test_int8_embeddings_stay_within_cosine_0_999_of_fp32(backbone, backbones, monkeypatch):
    found = backbones[backbone]
    monkeypatch.setenv("TORCH_HOME", str(found["home"]))
    cosine = (loaded_at(backbone, found, "int8").embed(found["faces"]) * found["fp32"]).sum(1)
    assert cosine.min() >= WORST_COSINE[backbone], cosine.tolist()
    assert cosine.median() >= 0.9995, cosine.tolist()


@pytest.mark.parametrize("backbone", ["dlib-resnet", "inception-resnet"])
def test_bf16_embeddings_are_float32_unit_vectors_within_cosine_0_9995_of_fp32(backbone, backbones):
    found = backbones[backbone]
    vectors = load_backbone(backbone, weights=found["weights"], precision="bf16").embed(found["faces"])
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)), atol=1e-5)
    cosine = (vectors * found["fp32"]).sum(1)
    assert cosine.min() >= COSINE, cosine.tolist()


def test_the_bf16_copy_leaves_the_float32_network_as_it_was_and_keeps_shared_weights_shared():
    shared = torch.nn.Linear(3, 3)
    network = torch.nn.Sequential(shared, torch.nn.BatchNorm1d(3), shared).eval()
    network[1].running_mean.fill_(0.5)
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    cast = bf16_copy(network)
    assert all(torch.equal(tensor, before[name]) for name, tensor in network.state_dict().items())
    assert all(t.dtype == torch.float32 for t in network.state_dict().values() if t.is_floating_point())
    assert cast[0].weight is cast[2].weight and cast[0].weight is not shared.weight
    assert cast[0].weight.dtype == cast[1].running_mean.dtype == torch.bfloat16
    assert cast[1].num_batches_tracked.dtype == torch.long and cast[0].weight.requires_grad
    assert torch.equal(cast[1].running_mean, torch.full((3,), 0.5, dtype=torch.bfloat16))
    faces = torch.randn(4, 3)
    with torch.inference_mode():
        assert torch.equal(cast(faces.bfloat16()), deepcopy(network).to(torch.bfloat16)(faces.bfloat16()))


@pytest.mark.parametrize("backbone", ["dlib-resnet", "inception-resnet"])
def test_auto_chooses_what_it_measured_fastest_and_keeps_cosine_0_9995_on_unseen_faces(
    backbone, backbones, monkeypatch
):
    """The int8 network of the test above is reused (cached), so this measures without calibrating."""
    found = backbones[backbone]
    monkeypatch.setenv("TORCH_HOME", str(found["home"]))
    loaded = loaded_at(backbone, found, "auto")
    chosen = loaded.resolve()
    measured = json.loads(record_path(loaded, machine(loaded.device)).read_text())["measured"]
    assert tuple(measured) == candidates(this_cpu()[1], "cpu", True)  # what this CPU runs natively

    def speed(precision: str) -> float:  # fp32 counts GAIN times: a rival must be really faster
        return measured[precision]["faces_per_s"] * (GAIN if precision == "fp32" else 1.0)

    assert chosen == max((p for p in measured if measured[p]["cosine_worst"] >= COSINE), key=speed)
    cosine = (loaded.embed(found["faces"]) * found["fp32"]).sum(1)
    assert cosine.min() >= COSINE, (chosen, cosine.tolist())


@pytest.fixture(scope="module")
def galleries(material) -> dict:
    """The demo's people indexed with dlib-resnet at fp32, int8, bf16 and auto (the commands' default),
    the test photos identified by each (auto: with no --precision)."""
    env = {"TORCH_HOME": str(material / "torch-home"), "FACEREC_MIRROR": "http://127.0.0.1:9", **AUTO}
    photos = sorted((material / "test").glob("*.jpg"))
    found = {"env": env, "photos": photos}
    for precision in ("fp32", "int8", "bf16", "auto"):
        gallery = material / f"gallery-{precision}"
        asked = ["--precision", precision] if precision != "auto" else []
        indexed = run_cli(
            "index", material / "people", "--gallery", gallery, "--backbone", "dlib-resnet", *asked, env=env
        )
        assert indexed.returncode == 0, indexed.stderr
        cache = list((material / "torch-home" / "checkpoints" / "facerec-int8").glob("*.zip"))
        found[precision] = {"gallery": gallery, "index": indexed, "cache": cache}
        found[precision]["cache_mtime"] = [path.stat().st_mtime_ns for path in cache]
        identified = run_cli("identify", *photos, "--gallery", gallery, "--json", env=env)
        assert identified.returncode == 0, identified.stderr
        found[precision]["identify"] = identified
        found[precision]["results"] = [json.loads(line) for line in identified.stdout.splitlines()]
    return found


def names(results: list[dict]) -> list[list[str | None]]:
    return [[face["identity"] for face in record["faces"]] for record in results]


def provenance(gallery: Path) -> Provenance:
    snapshot = store.read(gallery)
    try:
        return snapshot.provenance
    finally:
        snapshot.close()


@pytest.mark.parametrize("precision", ["int8", "bf16", "auto"])
def test_each_precision_identifies_the_demo_people_as_fp32_does(galleries, precision):
    assert names(galleries[precision]["results"]) == names(galleries["fp32"]["results"])
    for record in galleries[precision]["results"]:
        found = {face["identity"] for face in record["faces"]} - {None}
        assert found == KNOWN[Path(record["image"]).name], record["image"]


def test_a_bf16_gallery_records_bf16_for_its_backbone_and_its_detector(galleries):
    made = provenance(galleries["bf16"]["gallery"])
    assert (made.precision, made.detector_precision, made.int8_network) == ("bf16", "bf16", None)
    emulated = "PyTorch emulates it" in galleries["bf16"]["index"].stderr  # said where bf16 is not native
    assert emulated != native_bf16(this_cpu()[1])
    assert provenance(galleries["fp32"]["gallery"]).detector_precision == "fp32"


def test_auto_measures_once_records_its_choice_in_the_gallery_and_identify_honours_it(galleries):
    auto = galleries["auto"]
    # Measured by the first command that could choose: the auto index, or where this CPU has bf16, the
    # identify of the fp32 gallery before it (bf16 keeps an fp32 gallery's answers: it checks bf16 on
    # the photos it identifies, but cannot calibrate int8 offline without a folder: the int8 gallery's
    # identify, on its own calibration photos, or the auto index measures int8 then). Once every
    # precision is recorded, nothing measures again.
    said = [
        (precision, command, line)
        for precision in ("fp32", "int8", "bf16", "auto")
        for command in ("index", "identify")
        for line in galleries[precision][command].stderr.splitlines()
        if line.startswith("--precision auto for ")
    ]
    assert said and ("auto", "identify") not in [where[:2] for where in said], said
    line = said[-1][2]
    assert line.startswith("--precision auto for dlib-resnet on ") and "fp32 " in line and "int8 " in line
    assert "the rest later" not in line and (" bf16 " in line) == native_bf16(this_cpu()[1])
    (record_file,) = (galleries["env"]["TORCH_HOME"] / Path("checkpoints", "facerec-precision")).glob(
        "*.json"
    )
    record = json.loads(record_file.read_text())
    assert recorded(record_file)[0]["size"] == record_file.stat().st_size  # checksummed
    made = provenance(auto["gallery"])
    assert made.precision == record["ranking"][0] and made.detector_precision == "fp32"
    assert "--precision auto" not in auto["identify"].stderr and "calibrating" not in auto["identify"].stderr

    from facerec.gallery.identify import Identifier  # honoured: identify embeds at the recorded precision

    with pytest.MonkeyPatch.context() as patch:
        for key, value in galleries["env"].items():
            patch.setenv(key, value)
        assert Identifier(auto["gallery"]).pipeline.backbone.precision == made.precision
    embedded = run_cli(
        "embed", galleries["photos"][0], "--backbone", "dlib-resnet", "--json", env=galleries["env"]
    )
    assert embedded.returncode == 0 and "--precision auto" not in embedded.stderr, embedded.stderr


def test_a_damaged_auto_record_is_named_and_measured_again(galleries, tmp_path):
    home = Path(shutil.copytree(galleries["env"]["TORCH_HOME"], tmp_path / "torch-home"))
    (record_file,) = (home / "checkpoints" / "facerec-precision").glob("*.json")
    record_file.write_text(record_file.read_text().replace('"ranking"', '"rankinh"'))
    env = {**galleries["env"], "TORCH_HOME": str(home)}
    result = run_cli("embed", galleries["photos"][0], "--backbone", "dlib-resnet", "--json", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{record_file}: damaged: it ") and lines[0].endswith("; measuring again")
    assert lines[1].startswith("--precision auto for dlib-resnet on ") and "calibrating" not in result.stderr
    assert json.loads(record_file.read_text())["ranking"]


def test_fp32_and_bf16_galleries_are_searched_at_each_others_precision(galleries):
    for gallery, other in (("fp32", "bf16"), ("bf16", "fp32")):
        found = run_cli(
            "identify", *galleries["photos"], "--gallery", galleries[gallery]["gallery"], "--precision", other,
            "--json", env=galleries["env"],
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert names([json.loads(line) for line in found.stdout.splitlines()]) == names(
            galleries[gallery]["results"]
        )


def test_calibration_is_cached_once_and_reused(galleries):
    assert galleries["fp32"]["cache"] == [], "fp32 makes no int8 network"
    int8 = galleries["int8"]
    (cache,) = int8["cache"]
    assert "calibrating int8 dlib-resnet on " in int8["index"].stderr
    assert "calibrating" not in int8["identify"].stderr  # identify loaded the cached network
    assert "calibrating" not in galleries["auto"]["index"].stderr  # auto measured the cached network
    assert [cache.stat().st_mtime_ns] == int8["cache_mtime"]
    embedded = run_cli(
        "embed", *galleries["photos"][:1], "--backbone", "dlib-resnet", "--precision", "int8", "--json",
        env=galleries["env"],
    )  # fmt: skip
    assert embedded.returncode == 0 and "calibrating" not in embedded.stderr, embedded.stderr
    assert [cache.stat().st_mtime_ns] == int8["cache_mtime"]


UNPICKLING = """
import pickle, sys
import numpy as np, torch

def refused(*args, **kwargs):
    raise AssertionError("pickle used")

pickle.load = pickle.loads = torch.load = refused
pickle.Unpickler = type("Refused", (), {"__init__": refused})
from facerec.pipeline.int8 import read_cache

faces = torch.from_numpy(np.load(sys.argv[2]))
network = read_cache(__import__("pathlib").Path(sys.argv[1]), refused, faces.shape[-1], print)
assert network is not None
with torch.inference_mode():
    np.save(sys.argv[3], network(faces).numpy(), allow_pickle=False)
print("dynamo", "torch._dynamo" in sys.modules)
"""


def test_the_cache_loads_without_pickle_or_fx_into_the_network_quantization_made(galleries, tmp_path):
    """Loaded in a process where pickle and torch.load raise, the cached network gives, bit for bit, the
    vectors of the network quantized afresh here from the same calibration photos."""
    (cache,) = galleries["int8"]["cache"]
    with zipfile.ZipFile(cache) as archive:
        names_ = archive.namelist()
        meta = json.loads(archive.read("network.json"))
    assert names_[0] == "network.json" and all(
        n.startswith("arrays/") and n.endswith(".npy") for n in names_[1:]
    )
    assert meta["graph"] is not None and meta["meta"]["format"] == "facerec-int8/2"
    photos = [Path(photo["path"]) for photo in meta["meta"]["calibration"]]
    assert [photo.parent.name for photo in photos][:5] == ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", galleries["env"]["TORCH_HOME"])
        loaded = load_backbone("dlib-resnet")
        recipe = loaded.plugin.recipe
        calibration = calibration_faces(create_detector("mtcnn"), create_aligner(recipe)[0], recipe, photos)
        fresh = quantize(quantizable_form(loaded), calibration.faces, loaded.int8_weight_bits)
    faces = calibration.faces[:6]
    np.save(tmp_path / "faces.npy", faces.numpy(), allow_pickle=False)
    run = subprocess.run(
        [sys.executable, "-c", UNPICKLING, str(cache), str(tmp_path / "faces.npy"), str(tmp_path / "out.npy")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "dynamo False"  # no FX tracing: torch._dynamo never imported
    with torch.inference_mode():
        assert np.array_equal(np.load(tmp_path / "out.npy"), fresh(faces).numpy())


def test_the_gallery_records_the_int8_network_that_made_its_vectors(galleries):
    (cache,) = galleries["int8"]["cache"]
    (checksum,) = [s["xxh3_128"] for s in recorded(cache)]  # one sum: the write finished
    network = provenance(galleries["int8"]["gallery"]).int8_network
    bits = int8_weight_bits(this_cpu()[1])  # 7 on AVX2 without VNNI, as here
    assert network["xxh3_128"] == checksum and network["scheme"].endswith(
        f"/w-s{bits}-symmetric-per-channel/1"
    )
    with zipfile.ZipFile(cache) as archive:
        assert network["calibration"] == json.loads(archive.read("network.json"))["meta"]["calibration"]
    agreement = network["agreement"]
    assert agreement["faces"] >= 9 and 0.99 < agreement["cosine_min"] <= agreement["cosine_median"] <= 1
    assert agreement["cosine_unseen"] == pytest.approx(1 - 2 * (1 - agreement["cosine_min"]), abs=1e-6)
    assert provenance(galleries["fp32"]["gallery"]).int8_network is None


def test_two_int8_networks_make_other_vectors_unless_one_was_not_recorded():
    made = Provenance("dlib-resnet", "dlib-v1", "ab" * 32, None, "mtcnn", precision="int8")
    one, other = ({"xxh3_128": digest * 32, "calibration": []} for digest in "12")
    assert made.same_vectors(made) and not made.same_vectors(
        Provenance(**{**vars(made), "precision": "fp32"})
    )
    with_one = Provenance(**{**vars(made), "int8_network": one})
    assert with_one.same_vectors(made) and made.same_vectors(with_one)  # a gallery written before: unknown
    assert not with_one.same_vectors(Provenance(**{**vars(made), "int8_network": other}))
    assert "precision int8 (int8 network 111111111111)" in with_one.describe()


@pytest.fixture
def private(galleries, tmp_path) -> dict:
    """Copies of the weights cache (MTCNN, the int8 network, the auto record) and of the int8 gallery."""
    home = Path(shutil.copytree(galleries["env"]["TORCH_HOME"], tmp_path / "torch-home"))
    gallery = Path(shutil.copytree(galleries["int8"]["gallery"], tmp_path / "gallery"))
    (cache,) = (home / "checkpoints" / "facerec-int8").glob("*.zip")
    env = {**galleries["env"], "TORCH_HOME": str(home)}
    return {"home": home, "gallery": gallery, "cache": cache, "env": env, "photos": galleries["photos"]}


def identify(private: dict, *options: str):
    return run_cli(
        "identify",
        *private["photos"],
        "--gallery",
        private["gallery"],
        "--json",
        *options,
        env=private["env"],
    )


def identifies_as_before(result, galleries) -> None:
    """The run succeeded, naming every face as the int8 gallery's first identify did."""
    assert result.returncode == 0, result.stderr
    assert names([json.loads(line) for line in result.stdout.splitlines()]) == names(
        galleries["int8"]["results"]
    )


def test_a_tampered_cache_that_still_loads_is_named_and_made_again(galleries, private):
    """It made every face "unknown 0.705" with exit 0."""
    cache = private["cache"]
    meta, state, graph = fxfile.read(cache.read_bytes())
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            state[name] = tensor * 1.5
    cache.write_bytes(fxfile.write(meta, state, graph))

    result = identify(private, "--precision", "int8")
    identifies_as_before(result, galleries)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{cache}: damaged: it ")  # its size, or else its checksum, differs
    assert lines[0].endswith(f" recorded in {cache.name}.xxh128 when it was written; it is made again")
    assert lines[1].startswith("calibrating int8 dlib-resnet on ")  # on the gallery's calibration photos
    network = provenance(private["gallery"]).int8_network
    assert recorded(cache) == [{"size": cache.stat().st_size, "xxh3_128": network["xxh3_128"]}]


def test_random_bytes_in_the_cache_are_named_not_taken_for_a_missing_download(galleries, private):
    """They gave `cannot download ... alex_lacamoire1.jpg`: calibrating again went for the demo photos."""
    cache = private["cache"]
    cache.write_bytes(os.urandom(cache.stat().st_size))
    result = identify(private, "--precision", "int8")
    identifies_as_before(result, galleries)
    assert result.stderr.splitlines()[0] == (
        f"{cache}: damaged: it does not match the checksum recorded in {cache.name}.xxh128 when it was "
        "written; it is made again"
    )
    assert "cannot download" not in result.stderr


def test_a_gallery_is_not_searched_with_an_int8_network_calibrated_on_other_photos(
    galleries, private, tmp_path
):
    """A deleted cache was calibrated again on other photos, and the gallery then searched with that
    network, silently; now that is refused in one line, and a cache that is gone is made again from the
    gallery's own calibration photos."""
    cache = private["cache"]
    cache.unlink()
    other = tmp_path / "other"
    for person in ("biden", "obama"):
        shutil.copytree(galleries["int8"]["gallery"].parent / "people" / person, other / person)
    indexed = run_cli(
        "index", other, "--gallery", tmp_path / "other-gallery", "--backbone", "dlib-resnet", "--precision", "int8",
        env=private["env"],
    )  # fmt: skip
    assert indexed.returncode == 0 and "calibrating int8 dlib-resnet on 4 faces" in indexed.stderr, (
        indexed.stderr
    )
    made = provenance(private["gallery"]).int8_network["xxh3_128"]
    other_network = recorded(cache)[0]["xxh3_128"]
    assert other_network != made

    refused = identify(private, "--precision", "int8")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"Error: {private['gallery']}: its vectors were made by the int8 network {made[:12]}, but {cache} holds "
        f"another ({other_network[:12]}, calibrated on 4 photos); delete {cache} to calibrate it again on the "
        "gallery's 9 calibration photos, or index the photos into a new --gallery"
    ]
    cache.unlink()
    healed = identify(private, "--precision", "int8")
    identifies_as_before(healed, galleries)
    assert "calibrating int8 dlib-resnet on " in healed.stderr
    assert recorded(cache)[0]["xxh3_128"] == made


def edit_provenance(gallery: Path, change) -> None:
    """Rewrite the provenance the gallery's current version records (as an older facerec would have)."""
    (version,) = (p for p in gallery.iterdir() if store.VERSION_NAME.match(p.name))
    with sqlite3.connect(version / store.DB_FILE) as db:
        (text,) = db.execute("SELECT value FROM meta WHERE key = 'provenance'").fetchone()
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'provenance'", (json.dumps(change(json.loads(text))),)
        )
    (version / store.MANIFEST_FILE).unlink()
    write_manifest(version)


def test_an_int8_gallery_written_before_networks_were_recorded_still_identifies(galleries, private):
    edit_provenance(private["gallery"], lambda old: {k: v for k, v in old.items() if k != "int8_network"})
    assert provenance(private["gallery"]).int8_network is None
    identifies_as_before(identify(private), galleries)


@pytest.mark.parametrize(("cosine", "accepted"), [(0.999, False), (0.9999, True)])
def test_an_int8_gallery_takes_fp32_only_when_its_network_was_measured_close_to_it(
    galleries, private, cosine, accepted
):
    def measured(record: dict) -> dict:
        record["int8_network"]["agreement"]["cosine_unseen"] = cosine
        return record

    edit_provenance(private["gallery"], measured)
    result = identify(private, "--precision", "fp32")
    if accepted:
        identifies_as_before(result, galleries)
        assert "calibrating" not in result.stderr
        return
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "precision int8" in line and "cannot be searched or extended with precision fp32" in line


def test_an_fp32_gallery_refuses_int8_in_one_line(galleries):
    again = run_cli(
        "index", galleries["int8"]["gallery"].parent / "people", "--gallery", galleries["fp32"]["gallery"],
        "--precision", "int8", env=galleries["env"],
    )  # fmt: skip
    assert again.returncode == 1
    (line,) = again.stderr.splitlines()
    assert "cannot be searched or extended with precision int8" in line


def test_a_backbone_without_an_int8_form_says_so_in_one_line(tmp_path):
    """The example plugin's backbone declares no for_quantization: refused before anything loads."""
    site = tmp_path / "site"
    info = site / "facerec_example_plugin-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facerec-example-plugin\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[facerec]\nexample = facerec_example\n")
    path = os.pathsep.join([str(site), str(ROOT / "examples" / "facerec-example-plugin")])
    face = SHARED / "faces" / "test_images_aligned" / "paul_rudd" / "1.png"
    result = run_cli(
        "embed", face, "--backbone", "tiny", "--pretrained", "none", "--detector", "none", "--precision", "int8",
        env={"PYTHONPATH": path, "TORCH_HOME": str(tmp_path / "torch-home")},
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "backbone 'tiny' cannot be quantized" in line
    auto = run_cli(
        "embed", face, "--backbone", "tiny", "--pretrained", "none", "--detector", "none", "--json",
        env={"PYTHONPATH": path, "TORCH_HOME": str(tmp_path / "torch-home"), **AUTO},
    )  # fmt: skip
    assert auto.returncode == 0, auto.stderr
    if native_bf16(this_cpu()[1]):  # bf16 is measured (on the command's own face), int8 is not tried
        (line,) = auto.stderr.splitlines()
        assert line.startswith("--precision auto for tiny on ") and " bf16 " in line and "int8" not in line
    else:
        assert auto.stderr == ""  # fp32 is all there is: nothing to measure
