"""`--precision int8`, for real: real photos, real dlib weights (face_recognition_models), the real CLI.

Inception-ResNet's pretrained weights cannot be fetched here, so its accuracy is measured with the seeded
weights of tests/support/seeded_weights.py (a network that quantizes well under arbitrary weights; the real ones
are checked by benchmarks/bench_embed.py where they exist). Calibration uses the demo's gallery photos;
the accuracy is measured on other photos, so it is not the calibration set scoring itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from facerec.pipeline.engine import build_pipeline, load_backbone
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
    int8.calibration = lambda: calibration
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
