"""The third-party plugin path, for real: distributions with `facerec` entry points on sys.path.

Each test writes `.dist-info` folders into a fresh site directory and runs the CLI in a subprocess with
that directory on PYTHONPATH, so the plugin manager finds them exactly as it finds installed packages.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from support import ROOT, SHARED

EXAMPLE = ROOT / "examples" / "facerec-example-plugin"
FACE = SHARED / "faces" / "test_images_aligned" / "paul_rudd" / "1.png"


def _distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] = {}) -> None:  # noqa: B006 (read only)
    info = site / f"{name.replace('-', '_')}-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[facerec]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path) -> dict[str, str]:
    """A site directory holding the example plugin and two broken ones; the env that puts it on sys.path."""
    site = tmp_path / "site"
    _distribution(site, "facerec-example-plugin", {"example": "facerec_example"})
    _distribution(
        site,
        "facerec-broken",
        {"broken-import": "broken_import", "broken-hook": "broken_hook"},
        {
            "broken_import": "raise ImportError('needs a library that is not installed')\n",
            "broken_hook": (
                "from facerec.plugin import hookimpl\n\n@hookimpl\ndef register_detectors(register):\n"
                "    raise RuntimeError('detector setup failed')\n"
            ),
        },
    )
    path = os.pathsep.join([str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path}


def test_plugins_lists_builtins_third_party_and_broken_ones(cli, site):
    result = cli("plugins", "--json", env=site)
    assert result.returncode == 0, result.stderr
    plugins = {record["name"]: record for record in map(json.loads, result.stdout.splitlines())}
    assert plugins["example"]["source"] == "facerec-example-plugin 1.0.0"
    assert plugins["example"]["registers"] == {"backbone": ["tiny"]}
    assert plugins["inception-resnet"]["source"] == "built-in"
    assert plugins["inception-resnet"]["registers"] == {"backbone": ["inception-resnet"]}
    assert plugins["mtcnn"]["registers"] == {"detector": ["mtcnn"]}
    assert "needs a library" in plugins["broken-import"]["error"]
    assert "detector setup failed" in plugins["broken-hook"]["error"]
    assert all(plugins[name]["error"] is None for name in ("example", "inception-resnet", "mtcnn"))


def test_third_party_backbone_and_command_work_beside_broken_plugins(cli, site):
    result = cli(
        "embed", FACE, "--backbone", "tiny", "--pretrained", "none", "--detector", "none", "--json", env=site
    )
    assert result.returncode == 0, result.stderr
    (record,) = map(json.loads, result.stdout.splitlines())
    vector = record["faces"][0]["embedding"]
    assert len(vector) == 128
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    info = cli("tiny-info", env=site)
    assert info.returncode == 0 and "parameters" in info.stdout


def test_unknown_part_name_lists_what_is_registered(cli, site):
    result = cli("embed", FACE, "--backbone", "nope", "--detector", "none", env=site)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "Error: unknown backbone 'nope' (available: dlib-resnet, inception-resnet, tiny)"
    )


def test_a_third_party_recipe_decides_crops_and_tensors(cli, site, tmp_path):
    """The example's `tiny` declares 64 px, the box aligner with margin 8, BGR and its own mean/std;
    the core must crop and standardize exactly so (checked by redoing both here by hand)."""
    import sys

    import numpy as np
    import torch
    from PIL import Image

    photo = shrink_to(FACE, tmp_path / "face.png", (120, 150))
    crops = tmp_path / "crops"
    detect = cli("detect", photo, "--detector", "none", "--backbone", "tiny", "--save-crops", crops, env=site)
    assert detect.returncode == 0, detect.stderr
    crop = Image.open(crops / "face_1.png")
    expected = Image.open(photo).convert("RGB").resize((64, 64), Image.BILINEAR)  # box + margin = image
    assert crop.size == (64, 64) and np.array_equal(np.asarray(crop), np.asarray(expected))

    embed = cli(
        "embed", photo, "--backbone", "tiny", "--pretrained", "none", "--detector", "none", "--json", env=site
    )
    assert embed.returncode == 0, embed.stderr
    vector = torch.tensor(json.loads(embed.stdout)["faces"][0]["embedding"])
    sys.path.insert(0, str(EXAMPLE))
    try:
        from facerec_example import TinyBackbone
    finally:
        sys.path.remove(str(EXAMPLE))
    recipe = TinyBackbone.recipe
    pixels = np.asarray(expected, dtype=np.float32)[..., ::-1]  # BGR
    standardized = (pixels - np.float32(recipe.mean)) / np.float32(recipe.std)
    torch.manual_seed(0)  # the engine's seed for untrained weights
    network = TinyBackbone().build().eval()
    with torch.no_grad():
        by_hand = network(torch.from_numpy(standardized.transpose(2, 0, 1).copy())[None])[0]
    assert (vector - by_hand).abs().max().item() < 1e-5


def shrink_to(source: Path, target: Path, size: tuple[int, int]) -> Path:
    """A copy of `source` resized to `size` (not square, so a wrong aspect or crop would show)."""
    from PIL import Image

    Image.open(source).convert("RGB").resize(size, Image.BILINEAR).save(target)
    return target
