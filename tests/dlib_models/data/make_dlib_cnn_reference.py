"""Writes dlib_cnn_reference.json beside this file: what dlib's CNN face detector finds in real photos.

dlib's MMOD detector takes seconds per small photo on a CPU, too slow to run over many photos in the
test suite; tests/dlib_models/test_dlib_cnn.py compares facerec's `dlib-cnn` detector with this file instead (and
with dlib itself live on one photo, so the file cannot go stale unnoticed). Each photo of the test
material's faces/ (tests/support: ../shared or its cached copy) is taken as `reference_pixels` makes it: converted to RGB, optionally cropped, resized
to `width` with Pillow's bilinear filter; the SHA-256 of those pixels is recorded so that a test on
different pixels (another Pillow) fails instead of comparing the wrong things. The JSON holds no
pixels: per photo (named by its path), that hash and, per upsample count, dlib's rectangles (left, top,
right, bottom, inclusive) and confidences, in dlib's order.

Run from the repository root: .venv/bin/python tests/dlib_models/data/make_dlib_cnn_reference.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for the material's one door
from support import FACES

OUTPUT = Path(__file__).with_name("dlib_cnn_reference.json")
UPSAMPLES = (0, 1)
# (photo under the material's faces/, width after resizing, crop box before it or None)
PHOTOS = [
    ("photos/obama_small.jpg", 320, None),
    ("photos/two_people.jpg", 400, None),
    ("photos/multiface.jpg", 400, None),
    ("knn/test/obama_and_biden.jpg", 400, None),
    ("knn/test/kit_with_rose.jpg", 300, None),
    ("photos/lin-manuel-miranda.png", 360, None),
    ("photos/obama_partial_face.jpg", 240, None),  # the face runs off the left edge
    ("test_images/paul_rudd/1.jpg", 320, None),
    ("knn/test/kit_with_rose.jpg", 300, (0, 350, 501, 700)),  # below the faces: no face
]


def reference_pixels(photo: str, width: int, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """The (H, W, 3) uint8 pixels both dlib and facerec are given for one reference entry."""
    with Image.open(FACES / photo) as image:
        image = image.convert("RGB")
    if crop is not None:
        image = image.crop(crop)
    height = round(image.height * width / image.width)
    return np.array(image.resize((width, height), Image.Resampling.BILINEAR))


def pixels_sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def main() -> None:
    import dlib

    from facerec.pipeline.weights import fetch
    from facerec_plugins.dlib.models import MMOD_DETECTOR

    detector = dlib.cnn_face_detection_model_v1(str(fetch(MMOD_DETECTOR)[0]))
    entries = []
    for photo, width, crop in PHOTOS:
        pixels = reference_pixels(photo, width, crop)
        found = {}
        for upsample in UPSAMPLES:
            found[str(upsample)] = [
                [d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence]
                for d in detector(pixels, upsample)
            ]
        entries.append(
            {
                "photo": photo,
                "width": width,
                "crop": list(crop) if crop else None,
                "shape": list(pixels.shape),
                "pixels_sha256": pixels_sha256(pixels),
                "detections": found,
            }
        )
        print(photo, pixels.shape, found, flush=True)
    OUTPUT.write_text(json.dumps({"dlib_version": dlib.__version__, "photos": entries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
