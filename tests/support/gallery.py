"""Material for the gallery tests: the demo people at a small size, and a weights cache with MTCNN.

The knn photos are up to 2204 pixels tall; MTCNN on those costs seconds each on two cores. Shrunk to
400 pixels, the same faces enroll and identify in a fraction of that, and the tests stay quick.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from support import KNN, MTCNN_WEIGHTS

SMALL = 400


def shrink(source: Path, target: Path, size: int = SMALL) -> Path:
    """`source` scaled down to fit `size` x `size`, saved as `target` (folders made)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.thumbnail((size, size))
        image.convert("RGB").save(target)
    return target


def small_people(target: Path) -> Path:
    """The demo's train set as `target/<person>/<image>`, shrunk: 9 photos of 5 people."""
    for source in sorted((KNN / "train").rglob("*.*")):
        shrink(source, target / source.parent.name / source.name)
    return target


def weights_cache(target: Path) -> Path:
    """A TORCH_HOME whose checkpoints hold the MTCNN weights, as a first download leaves them."""
    checkpoints = target / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for net in ("pnet", "rnet", "onet"):
        shutil.copyfile(MTCNN_WEIGHTS / f"{net}.pt", checkpoints / f"{net}.pt")
    return target
