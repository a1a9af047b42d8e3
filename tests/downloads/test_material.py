"""The test material machinery: the pinned manifest, fetching through a real mirror, the one-line stop
without material, the project's seeded weights and the remade references, held against ../shared.

The comparisons with ../shared run wherever it is beside the checkout (this team's workspace and CI), so
neither the manifest, nor the seeded-weights recipe, nor the remaking of the references can drift from it
unnoticed; in a clone without it they say so in pytest's summary.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facerec.pipeline.weights import sha256_file
from support import ROOT, SHAPES, SHARED, material
from support.seeded_weights import seeded_state_dict

NEEDS_SHARED = pytest.mark.skipif(
    not material.NEIGHBOUR.is_dir(), reason=f"compares with {material.NEIGHBOUR}, not beside this checkout"
)
# Relative and absolute. A remake on the CPU that made ../shared is bit-identical; another x86-64 CPU
# (AVX-512 or AMX against AVX2) sums in another order, which moved logits by 4e-6 through the 100-odd
# layers of Inception-ResNet-v1. 1e-4 still catches any real departure: one pixel of crop offset moves
# embeddings past 1e-3.
TOLERANCE = 1e-4
# Two photos (two faces in one, one small image) run all of the pipeline reference's code in seconds; the
# full remake (25 photos) takes minutes and runs once, in a clone without ../shared.
SAMPLE_PHOTOS = ["faces/knn/test/kit_with_rose.jpg", "faces/photos/obama_small.jpg"]


def differences(remade, reference, where: str = "") -> list[str]:
    """Every place where `remade` departs from `reference`: structure and strings exactly, numbers to
    within TOLERANCE."""
    if isinstance(reference, dict) and isinstance(remade, dict):
        if list(remade) != list(reference):
            return [f"{where}: keys {list(remade)} != {list(reference)}"]
        return [d for key in reference for d in differences(remade[key], reference[key], f"{where}.{key}")]
    if isinstance(reference, list) and isinstance(remade, list):
        if len(remade) != len(reference):
            return [f"{where}: {len(remade)} items != {len(reference)}"]
        return [
            d
            for i, pair in enumerate(zip(remade, reference, strict=True))
            for d in differences(*pair, f"{where}[{i}]")
        ]
    if isinstance(reference, float) and isinstance(remade, int | float):
        close = math.isclose(remade, reference, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        return [] if close else [f"{where}: {remade} != {reference}"]
    return [] if remade == reference else [f"{where}: {remade!r} != {reference!r}"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache for this test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "facerec" / "test-material"


@NEEDS_SHARED
def test_manifest_pins_every_file_of_shared():
    files = {
        p.relative_to(SHARED).as_posix()
        for folder in ("faces", "weights", "video")
        for p in (SHARED / folder).rglob("*")
        if p.is_file() and p.name != "SHA256SUMS"
    }
    entries = material.manifest()
    assert sorted(e.path for e in entries) == sorted(files)
    assert {e.path: sha256_file(SHARED / e.path) for e in entries} == {e.path: e.sha256 for e in entries}
    # The demo set's own sums (paths on github.com below the repository's branch) agree with the manifest.
    knn_sums = (SHARED / "faces" / "knn" / "SHA256SUMS").read_text().split()
    pinned = {e.home.removeprefix("ageitgey/face_recognition/raw/master/"): e.sha256 for e in entries}
    assert all(pinned[path] == digest for digest, path in zip(knn_sums[::2], knn_sums[1::2], strict=True))


def test_cache_is_under_xdg_cache_home_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert material.cache_root() == tmp_path / "facerec" / "test-material"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert material.cache_root() == tmp_path / "home" / ".cache" / "facerec" / "test-material"


def test_fetch_downloads_every_file_once_verifies_it_and_repairs_damage(mirror, tmp_path):
    mirror.serve_material()
    folder = tmp_path / "material"
    material.fetch(folder, say=lambda line: None)
    entries = material.manifest()
    assert {e.path: sha256_file(folder / e.path) for e in entries} == {e.path: e.sha256 for e in entries}
    assert sorted(mirror.requests) == sorted("/" + e.home for e in entries)

    damaged, deleted = entries[0], entries[-1]
    (folder / damaged.path).write_bytes(b"not the photo")
    (folder / deleted.path).unlink()
    mirror.requests.clear()
    material.fetch(folder, say=lambda line: None)
    assert sorted(mirror.requests) == sorted(["/" + damaged.home, "/" + deleted.home])
    assert sha256_file(folder / damaged.path) == damaged.sha256
    assert sha256_file(folder / deleted.path) == deleted.sha256


def test_fetch_refuses_a_file_that_is_not_the_pinned_one(mirror, tmp_path):
    mirror.serve_material()
    entry = next(e for e in material.manifest() if e.path == "faces/photos/obama_small.jpg")
    mirror.serve("/" + entry.home, SHARED / "faces" / "photos" / "two_people.jpg")
    folder = tmp_path / "material"
    with pytest.raises(material.MaterialError) as error:
        material.fetch(folder, say=lambda line: None)
    (line,) = str(error.value).splitlines()
    assert line.startswith(material.NEEDS)
    assert f"downloaded {mirror.url}/{entry.home} has SHA-256 " in line and f"expected {entry.sha256}" in line
    assert not (folder / entry.path).exists()


def test_prepare_keeps_the_references_it_has(mirror, cache, tmp_path):
    """With the references there, preparing only fetches: nothing is installed, nothing is remade."""
    mirror.serve_material()
    for reference in material.REFERENCES:
        (cache / reference).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / reference, cache / reference)
    said = []
    material.prepare(cache, say=said.append)
    assert said == [f"test material: fetching {len(material.manifest())} files into {cache}"]
    assert all((cache / r).read_bytes() == (SHARED / r).read_bytes() for r in material.REFERENCES)
    assert not (cache / "facenet-pytorch").exists()


def test_without_shared_and_offline_the_session_stops_with_one_line(tmp_path):
    """A clone with no ../shared beside it and no network: pytest stops before collecting, and says why."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FACEREC_MIRROR": "http://127.0.0.1:9",  # nothing listens there: every download fails as offline
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"ERROR: the tests need {tmp_path / 'shared'} beside the checkout, or the network")
    assert line.endswith(": no connection (offline?)") and "cannot download http://127.0.0.1:9/" in line
    assert "passed" not in result.stdout and "failed" not in result.stdout


@NEEDS_SHARED
def test_seeded_weights_are_the_shared_tools_bit_for_bit():
    """Every kind of key (weights, biases, batch-norm statistics and affine, counters) at two salts.

    The whole salt-0 set, 28 million values, is held to the tool's by the references remade with it below.
    """
    spec = importlib.util.spec_from_file_location(
        "shared_seeded_weights", SHARED / "tools" / "seeded_weights.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shapes = {
        key: shape for key, shape in json.loads(SHAPES.read_text()).items() if math.prod(shape) < 100_000
    }
    for salt in (0, 3):
        mine, theirs = seeded_state_dict(shapes, salt), tool.seeded_state_dict(shapes, salt)
        assert list(mine) == list(theirs) == list(shapes)
        assert all(
            mine[k].dtype == theirs[k].dtype and mine[k].numpy().tobytes() == theirs[k].numpy().tobytes()
            for k in shapes
        )


@NEEDS_SHARED
def test_remade_references_match_shared(tmp_path):
    """facenet-pytorch 2.6.0 (from the package registry) run by tests/support/references.py gives ../shared's
    references again: the layout exactly, every number to TOLERANCE on any x86-64 CPU."""
    folder = tmp_path / "material"
    folder.mkdir()
    for part in ("faces", "weights"):
        (folder / part).symlink_to(SHARED / part)
    material.remake(folder, SAMPLE_PHOTOS, say=lambda line: None)

    def read(root: Path, reference: str):
        return json.loads((root / reference).read_text())

    assert list(read(folder, material.SHAPES).items()) == list(read(SHARED, material.SHAPES).items())
    assert differences(read(folder, material.BACKBONE), read(SHARED, material.BACKBONE)) == []
    pipeline, reference = read(folder, material.PIPELINE), read(SHARED, material.PIPELINE)
    reference["photos"] = [photo for photo in reference["photos"] if photo["image"] in SAMPLE_PHOTOS]
    assert [photo["image"] for photo in reference["photos"]] == SAMPLE_PHOTOS
    assert differences(pipeline, reference) == []
