"""`--precision int8`, for real: real photos, real dlib weights (face_recognition_models), the real CLI.

Inception-ResNet's pretrained weights cannot be fetched here, so its accuracy is measured with the seeded
weights of tests/support/seeded_weights.py (a network that quantizes well under arbitrary weights; the real ones
are checked by benchmarks/bench_embed.py where they exist). Calibration uses the demo's gallery photos;
the accuracy is measured on other photos, so it is not the calibration set scoring itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from facerec.gallery.local import folder as store
from facerec.gallery.local.manifest import write_manifest
from facerec.gallery.provenance import Provenance
from facerec.integrity import recorded
from facerec.pipeline.engine import build_pipeline, load_backbone
from facerec.pipeline.precision import Calibration
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


@pytest.mark.parametrize("backbone", ["dlib-resnet", "inception-resnet"])
def test_int8_embeddings_stay_within_cosine_0_999_of_fp32(
    backbone, material, seeded_weights, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(weights_cache(tmp_path / "torch-home")))
    weights = seeded_weights if backbone == "inception-resnet" else None
    faces = faces_of(backbone, PHOTOS, tmp_path / "photos")
    calibration = faces_of(backbone, sorted((material / "people").glob("*/*")), tmp_path / "people")
    assert len(faces) >= 15 and len(calibration) >= 9
    fp32 = load_backbone(backbone, weights=weights).embed(faces)
    int8 = load_backbone(backbone, weights=weights, precision="int8")
    int8.calibration = lambda: Calibration(calibration, [])
    cosine = (int8.embed(faces) * fp32).sum(1)
    assert cosine.min() >= WORST_COSINE[backbone], cosine.tolist()
    assert cosine.median() >= 0.9995, cosine.tolist()


@pytest.fixture(scope="module")
def galleries(material) -> dict:
    """The demo's people indexed with dlib-resnet in fp32 and in int8, the test photos identified by each."""
    env = {"TORCH_HOME": str(material / "torch-home"), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    photos = sorted((material / "test").glob("*.jpg"))
    found = {"env": env, "photos": photos}
    for precision in ("fp32", "int8"):
        gallery = material / f"gallery-{precision}"
        indexed = run_cli(
            "index",
            material / "people",
            "--gallery",
            gallery,
            "--backbone",
            "dlib-resnet",
            "--precision",
            precision,
            env=env,
        )
        assert indexed.returncode == 0, indexed.stderr
        cache = list((material / "torch-home" / "checkpoints" / "facerec-int8").glob("*.pt"))
        found[precision] = {"gallery": gallery, "index": indexed, "cache": cache}
        found[precision]["cache_mtime"] = [path.stat().st_mtime_ns for path in cache]
        identified = run_cli("identify", *photos, "--gallery", gallery, "--json", env=env)
        assert identified.returncode == 0, identified.stderr
        found[precision]["identify"] = identified
        found[precision]["results"] = [json.loads(line) for line in identified.stdout.splitlines()]
    return found


def names(results: list[dict]) -> list[list[str | None]]:
    return [[face["identity"] for face in record["faces"]] for record in results]


def test_int8_gallery_identifies_the_demo_people_as_fp32_does(galleries):
    assert names(galleries["int8"]["results"]) == names(galleries["fp32"]["results"])
    for record in galleries["int8"]["results"]:
        found = {face["identity"] for face in record["faces"]} - {None}
        assert found == KNOWN[Path(record["image"]).name], record["image"]


def test_calibration_is_cached_once_and_reused(galleries):
    assert galleries["fp32"]["cache"] == [], "fp32 makes no int8 network"
    int8 = galleries["int8"]
    (cache,) = int8["cache"]
    assert "calibrating int8 dlib-resnet on " in int8["index"].stderr
    assert "calibrating" not in int8["identify"].stderr  # identify loaded the cached network
    assert [cache.stat().st_mtime_ns] == int8["cache_mtime"]
    embedded = run_cli(
        "embed",
        *galleries["photos"][:1],
        "--backbone",
        "dlib-resnet",
        "--precision",
        "int8",
        "--json",
        env=galleries["env"],
    )
    assert embedded.returncode == 0 and "calibrating" not in embedded.stderr, embedded.stderr
    assert [cache.stat().st_mtime_ns] == int8["cache_mtime"]


def test_the_cache_is_tensors_that_load_without_pickle(galleries):
    (cache,) = galleries["int8"]["cache"]
    record = torch.load(cache, weights_only=True)  # refuses anything but tensors and plain containers
    assert record["format"] == "facerec-int8/1" and record["calibration_faces"] >= 9
    assert any(tensor.is_quantized for tensor in record["state_dict"].values())
    assert [Path(photo["path"]).parent.name for photo in record["calibration"]][:5] == [
        "alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"
    ]  # fmt: skip


def test_the_gallery_records_the_int8_network_that_made_its_vectors(galleries):
    (cache,) = galleries["int8"]["cache"]
    (checksum,) = [s["xxh3_128"] for s in recorded(cache)]  # one sum: the write finished
    snapshot = store.read(galleries["int8"]["gallery"])
    network = snapshot.provenance.int8_network
    snapshot.close()
    assert network["xxh3_128"] == checksum
    assert network["calibration"] == torch.load(cache, weights_only=True)["calibration"]
    fp32 = store.read(galleries["fp32"]["gallery"])
    assert fp32.provenance.int8_network is None
    fp32.close()


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
    """Copies of the weights cache (MTCNN and the int8 network) and of the int8 gallery, to damage."""
    home = Path(shutil.copytree(galleries["env"]["TORCH_HOME"], tmp_path / "torch-home"))
    gallery = Path(shutil.copytree(galleries["int8"]["gallery"], tmp_path / "gallery"))
    (cache,) = (home / "checkpoints" / "facerec-int8").glob("*.pt")
    env = {**galleries["env"], "TORCH_HOME": str(home)}
    return {"home": home, "gallery": gallery, "cache": cache, "env": env, "photos": galleries["photos"]}


def identify(private: dict):
    return run_cli(
        "identify", *private["photos"], "--gallery", private["gallery"], "--json", env=private["env"]
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
    record = torch.load(cache, weights_only=True)
    for name, tensor in record["state_dict"].items():
        if tensor.is_floating_point():
            record["state_dict"][name] = tensor * 1.5
    torch.save(record, cache)

    result = identify(private)
    identifies_as_before(result, galleries)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{cache}: damaged: it ")  # its size, or else its checksum, differs
    assert lines[0].endswith(f" recorded in {cache.name}.xxh128 when it was written; it is made again")
    assert lines[1].startswith("calibrating int8 dlib-resnet on ")  # on the gallery's calibration photos
    network = store.read(private["gallery"]).provenance.int8_network
    assert recorded(cache) == [{"size": cache.stat().st_size, "xxh3_128": network["xxh3_128"]}]


def test_random_bytes_in_the_cache_are_named_not_taken_for_a_missing_download(galleries, private):
    """They gave `cannot download ... alex_lacamoire1.jpg`: calibrating again went for the demo photos."""
    cache = private["cache"]
    cache.write_bytes(os.urandom(cache.stat().st_size))
    result = identify(private)
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
    made = store.read(private["gallery"]).provenance.int8_network["xxh3_128"]
    other_network = recorded(cache)[0]["xxh3_128"]
    assert other_network != made

    refused = identify(private)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"Error: {private['gallery']}: its vectors were made by the int8 network {made[:12]}, but {cache} holds "
        f"another ({other_network[:12]}, calibrated on 4 photos); delete {cache} to calibrate it again on the "
        "gallery's 9 calibration photos, or index the photos into a new --gallery"
    ]
    cache.unlink()
    healed = identify(private)
    identifies_as_before(healed, galleries)
    assert "calibrating int8 dlib-resnet on " in healed.stderr
    assert recorded(cache)[0]["xxh3_128"] == made


def test_an_int8_gallery_written_before_networks_were_recorded_still_identifies(galleries, private):
    (version,) = (p for p in private["gallery"].iterdir() if store.VERSION_NAME.match(p.name))
    with sqlite3.connect(version / store.DB_FILE) as db:
        (text,) = db.execute("SELECT value FROM meta WHERE key = 'provenance'").fetchone()
        old = {key: value for key, value in json.loads(text).items() if key != "int8_network"}
        db.execute("UPDATE meta SET value = ? WHERE key = 'provenance'", (json.dumps(old),))
    (version / store.MANIFEST_FILE).unlink()
    write_manifest(version)
    assert store.read(private["gallery"]).provenance.int8_network is None
    identifies_as_before(identify(private), galleries)


def test_gallery_records_its_precision_and_refuses_another(galleries):
    int8 = galleries["int8"]
    refused = run_cli(
        "identify",
        *galleries["photos"][:1],
        "--gallery",
        int8["gallery"],
        "--precision",
        "fp32",
        env=galleries["env"],
    )
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert "precision int8" in line and "cannot be searched or extended with precision fp32" in line
    again = run_cli(
        "index",
        int8["gallery"].parent / "people",
        "--gallery",
        galleries["fp32"]["gallery"],
        "--precision",
        "int8",
        env=galleries["env"],
    )
    assert again.returncode == 1 and len(again.stderr.splitlines()) == 1, again.stderr


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
        env={"PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "backbone 'tiny' cannot be quantized" in line
