"""The `landmarks` aligner: each face warped so its five landmarks land on a frontal-face template.

An alternative to the box crop for detectors that give the five points (eyes, nose, mouth corners):
rotation, scale and position are normalized, so a tilted head comes out upright. The template is
ArcFace's (112 px), scaled to the backbone's input size. A face without landmarks (the `none`
detector's) is cropped as its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from facerec.plugin import Face, Register, hookimpl
from facerec_plugins.aligners.box import crop_face

# Where the five landmarks of a frontal face sit in ArcFace's 112x112 crop.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation-scale-translation best mapping `source` points (N, 2) onto `target` (Umeyama 1991)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_centred.T @ source_centred / len(source))
    reflect = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflect @ vt
    scale = np.trace(np.diag(singular) @ reflect) / source_centred.var(0).sum()
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_by_landmarks(image: Image.Image, landmarks, size: int) -> Image.Image:
    """The face warped so its five landmarks land on the template scaled to `size` x `size`."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    to_image = similarity_transform(template, np.asarray(landmarks, dtype=np.float64))
    return image.transform((size, size), Image.AFFINE, tuple(to_image.flatten()), Image.BILINEAR)


class LandmarkAlignment:
    """Similarity alignment of the detector's five landmarks onto the frontal template."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {"name": "landmarks"}

    def align(self, image: Image.Image, faces: Sequence[Face], size: int) -> list[Image.Image]:
        return [
            align_by_landmarks(image, face.landmarks, size)
            if face.landmarks is not None
            else crop_face(image, face, size)
            for face in faces
        ]


@hookimpl
def register_aligners(register: Register) -> None:
    register("landmarks", LandmarkAlignment)
