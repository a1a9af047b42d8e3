"""The defaults, in one place: what facerec uses when a user names nothing.

The CLI's options, the Python API, training and the gallery's provenance all read these, so changing a
default is one line here.
"""

from __future__ import annotations

import os
from pathlib import Path

BACKBONE = "inception-resnet"
DETECTOR = "mtcnn"
HEAD = "faiss"
PRECISION = "auto"  # the commands' (not training's); the Python API's build_pipeline/load_backbone: fp32
PRECISION_VARIABLE = "FACEREC_PRECISION"  # replaces PRECISION for every command that embeds or detects
TOP_K = 3  # candidates `identify` lists per face
DETECTION_PIXELS = 4_000_000  # the working size of a detector that declares none (see Detector.max_pixels)
GALLERY = Path(".facerec") / "gallery"  # under the working directory
GALLERY_VARIABLE = "FACEREC_GALLERY"

MEASURED_PHOTOS = 8  # of a command's photos, those `--precision auto` checks bf16 on (not calibrates)


def gallery_location() -> str:
    """`FACEREC_GALLERY`, else `.facerec/gallery` under the working directory."""
    return os.environ.get(GALLERY_VARIABLE) or str(GALLERY)
