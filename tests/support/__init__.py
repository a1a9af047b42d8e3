"""Helpers for the tests, and the one door to their material.

Every test reads photos, video, weights and references through `SHARED` (or the names below): it is
../shared beside the checkout when that is there, else a cache of the same layout that
`support.material` fills once from the files' public homes. No test names ../shared itself
(tests/contract/test_layout.py checks), so the suite passes the same way in a user's fresh clone.
"""

from __future__ import annotations

from support import material

ROOT = material.ROOT
SHARED = material.root()  # ../shared, or a folder of the same layout in the user cache
SHAPES = SHARED / material.SHAPES
FACES = SHARED / "faces"
PHOTOS = FACES / "photos"
KNN = FACES / "knn"
KNN_TRAIN = KNN / "train"
MTCNN_WEIGHTS = SHARED / "weights" / "mtcnn"
